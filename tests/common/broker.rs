//! A real broker for tests: pulsar-lite on a free loopback port, behind the
//! fix-up proxy (see testkit/pulsar-proxy), plus helpers to publish and to run
//! the ingester binary as a child process.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lookout_ingester::config::{PulsarConfig, SubscriptionKind};
use tokio::process::{Child, Command};

// Starting pulsar-lite is the same for the proxy's own tests.
#[path = "../../testkit/pulsar-proxy/tests/common/lite.rs"]
mod lite;

/// A free loopback port.
pub fn free_port() -> u16 {
    lite::free_addr().port()
}

pub struct Broker {
    pub dir: tempfile::TempDir,
    pub broker_addr: SocketAddr,
    child: Option<Child>,
    pub proxy: pulsar_proxy::ProxyHandle,
    config: String,
}

/// pulsar-lite on `addr` with its data and config in `dir`, its output
/// appended to `dir/broker.log` (kept across restarts).
async fn spawn_broker(addr: SocketAddr, dir: &Path, extra_config: &str) -> Child {
    lite::spawn_lite(dir, addr, extra_config, &dir.join("broker.log")).await
}

impl Broker {
    pub async fn start() -> Broker {
        Broker::start_with_config("").await
    }

    /// A broker with `extra_config`'s top-level pulsar-lite keys (e.g.
    /// `default_partitions = 4`: every topic it creates gets 4 partitions).
    pub async fn start_with_config(extra_config: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker_addr = lite::free_addr();
        let child = spawn_broker(broker_addr, dir.path(), extra_config).await;
        let proxy = pulsar_proxy::start("127.0.0.1:0".parse().expect("addr"), broker_addr)
            .await
            .expect("proxy");
        Broker {
            dir,
            broker_addr,
            child: Some(child),
            proxy,
            config: extra_config.to_string(),
        }
    }

    /// The URL clients use (through the proxy).
    pub fn url(&self) -> String {
        self.proxy.url()
    }

    pub fn pulsar(&self, topic: &str) -> PulsarConfig {
        PulsarConfig {
            url: self.url(),
            topic: topic.to_string(),
            subscription: "lookout-ingester-v2".into(),
            subscription_kind: SubscriptionKind::Failover,
            receiver_queue_size: 100,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            skip_redelivered: true,
            ..PulsarConfig::default()
        }
    }

    /// Kills the broker process (data stays on disk).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts the broker again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.kill().await;
        let child = spawn_broker(self.broker_addr, self.dir.path(), &self.config).await;
        self.child = Some(child);
    }

    pub async fn publish(&self, topic: &str, payloads: Vec<Vec<u8>>) {
        let n = payloads.len() as u64;
        let sent = tokio::time::timeout(
            Duration::from_secs(120),
            lookout_ingester::record::publish_payloads(&self.pulsar(topic), payloads),
        )
        .await
        .expect("publishing timed out")
        .expect("publish");
        assert_eq!(sent, n);
    }

    /// Publishes as Armada's producers do (`publish --batch`'s options):
    /// batched and zlib-compressed, but with entries cut by count only
    /// (`per_batch` messages), not by the 10 ms delay, so that their
    /// boundaries do not depend on the machine's speed.
    pub async fn publish_batched(&self, topic: &str, payloads: Vec<Vec<u8>>, per_batch: u32) {
        let client = lookout_ingester::source::pulsar::client(&self.pulsar(topic))
            .await
            .expect("client");
        let mut producer = client
            .producer()
            .with_topic(topic)
            .with_options(pulsar::producer::ProducerOptions {
                batch_timeout: Some(Duration::from_secs(5)),
                ..lookout_ingester::record::Entries::of(per_batch).producer_options()
            })
            .build()
            .await
            .expect("producer");
        let mut receipts = Vec::new();
        for p in payloads {
            receipts.push(producer.send_non_blocking(p).await.expect("send"));
        }
        producer.send_batch().await.expect("flush the last batch");
        for r in receipts {
            r.await.expect("receipt");
        }
    }

    pub async fn stop(mut self) {
        self.kill().await;
        self.proxy.shutdown().await;
    }
}

/// The ingester binary running `run` as a child process.
pub struct Ingester {
    pub child: Child,
    pub log: PathBuf,
}

impl Ingester {
    /// `run` against `db_url` and the broker at `pulsar_url`, metrics off.
    pub fn spawn(
        db_url: &str,
        pulsar_url: &str,
        topic: &str,
        log: PathBuf,
        extra: &[&str],
    ) -> Ingester {
        let mut args = vec![
            "run",
            "--database-url",
            db_url,
            "--pulsar-url",
            pulsar_url,
            "--topic",
            topic,
            "--metrics-port",
            "0",
        ];
        args.extend_from_slice(extra);
        Ingester::spawn_args(&args, log)
    }

    /// The binary with exactly `args`, output appended to `log`.
    pub fn spawn_args(args: &[&str], log: PathBuf) -> Ingester {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let err = out.try_clone().expect("log");
        // Run from the log's (temporary) directory, so a dead-letter spool
        // at its default relative path stays out of the source tree.
        let dir = log
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let child = Command::new(env!("CARGO_BIN_EXE_lookout-ingester"))
            .current_dir(dir)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("LOOKOUT_DATABASE_URL")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ingester");
        Ingester { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().map(|p| p as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.pid();
        if pid > 0 {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    pub async fn sigkill(mut self) {
        let _ = self.child.kill().await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        super::tail(&self.log_text(), n)
    }

    /// Its exit code, once it exits; fails with its log if not within `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => panic!(
                "the ingester did not exit within {limit:?}\n{}",
                self.log_tail(40)
            ),
        }
    }

    /// SIGTERM: it must exit with status 0 within `limit`.
    pub async fn terminate(&mut self, limit: Duration) {
        self.signal(libc::SIGTERM);
        let code = self.wait_exit(limit).await;
        assert_eq!(
            code,
            Some(0),
            "exit status after SIGTERM\n{}",
            self.log_tail(40)
        );
    }
}

impl Broker {
    /// A second proxy in front of the same pulsar-lite, terminating TLS
    /// and/or checking tokens (see [`pulsar_proxy::Options`]). The plain
    /// proxy ([`Self::url`]) stays usable, e.g. for publishing.
    pub async fn secure_proxy(&self, options: pulsar_proxy::Options) -> pulsar_proxy::ProxyHandle {
        pulsar_proxy::start_with(
            "127.0.0.1:0".parse().expect("addr"),
            self.broker_addr,
            options,
        )
        .await
        .expect("secure proxy")
    }
}

/// Test certificates made with the `openssl` command in a directory.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    fn openssl(&self, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .expect("run openssl (is it installed?)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed CA `name`: writes `name.pem` and `name.key`; returns
    /// the certificate's path.
    pub fn ca(&self, name: &str) -> PathBuf {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
        self.dir.join(format!("{name}.pem"))
    }

    /// A server certificate `name` for `san` (e.g. `DNS:localhost,IP:127.0.0.1`)
    /// signed by the CA `ca`: (certificate PEM, PKCS#8 key PEM).
    pub fn server(&self, ca: &str, name: &str, san: &str) -> (Vec<u8>, Vec<u8>) {
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .expect("write ext");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.pem"),
        ]);
        let read = |f: String| std::fs::read(self.dir.join(f)).expect("read pem");
        (read(format!("{name}.pem")), read(format!("{name}.key")))
    }
}

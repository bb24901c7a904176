//! Shared helpers for the tests that need a real pulsar-lite.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pulsar::{Pulsar, TokioExecutor};
use tokio::process::{Child, Command};

/// A pulsar-lite child process on a free loopback port with its own storage.
/// Killed on drop (`kill_on_drop`), so a failing test cannot leak it.
pub struct Lite {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Lite {
    /// Starts pulsar-lite (`$PULSAR_LITE_BIN`, else `pulsar-lite` on PATH).
    /// `extra_config` holds top-level TOML keys for its config file.
    pub async fn start(extra_config: &str) -> Lite {
        let bin = std::env::var_os("PULSAR_LITE_BIN").unwrap_or_else(|| "pulsar-lite".into());
        let dir = tempfile::tempdir().expect("tempdir");
        // The metrics endpoint would otherwise bind 0.0.0.0:8080, clashing
        // between parallel tests and leaving loopback.
        let config = dir.path().join("pulsar-lite.toml");
        std::fs::write(
            &config,
            format!("{extra_config}\n[metrics]\nenabled = false\n"),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("pulsar-lite.log")).expect("log file");
        let addr = free_port();
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--db-path")
            .arg(dir.path().join("db"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin:?} (set PULSAR_LITE_BIN): {e}"));
        let mut lite = Lite { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return lite;
            }
            if let Ok(Some(status)) = lite.child.try_wait() {
                panic!("pulsar-lite exited with {status}:\n{}", lite.log());
            }
            assert!(
                Instant::now() < deadline,
                "pulsar-lite did not start:\n{}",
                lite.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("pulsar-lite.log")
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local_addr")
}

pub fn loopback0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn client(url: &str) -> Pulsar<TokioExecutor> {
    Pulsar::builder(url, TokioExecutor)
        .build()
        .await
        .expect("pulsar client")
}

pub fn unique_topic(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "persistent://public/default/{prefix}-{}-{nanos}",
        std::process::id()
    )
}

/// Routes pulsar-rs (`log`) and proxy (`tracing`) output to the test's
/// stderr when RUST_LOG is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

//! A private PostgreSQL cluster for one test, so that restarting it or
//! exhausting its connections cannot disturb any other test (the shared
//! server on 127.0.0.1:5432 is never touched). Debian's binaries
//! (`/usr/lib/postgresql/<highest>/bin`, or `$PG_BIN_DIR`), a data directory
//! in a temporary directory, loopback only, trust authentication, no fsync.
//! Stopped with `pg_ctl stop -m immediate` when dropped; the temporary
//! directory is removed with it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// The directory holding initdb and pg_ctl: `$PG_BIN_DIR`, else the highest
/// version under /usr/lib/postgresql.
pub fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let bin = e.path().join("bin");
            if !bin.join("initdb").exists() || !bin.join("pg_ctl").exists() {
                continue;
            }
            let version: Vec<u32> = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .map(|p| p.parse().unwrap_or(0))
                .collect();
            if best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, bin));
            }
        }
    }
    best.map(|(_, b)| b).unwrap_or_else(|| {
        panic!("no PostgreSQL binaries under /usr/lib/postgresql/*/bin (run scripts/setup.sh or set PG_BIN_DIR)")
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// initdb and the server refuse to run as root: as root, commands run as the
/// `postgres` OS user.
fn pg_command(program: &Path) -> std::process::Command {
    if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    }
}

/// Runs a PostgreSQL tool to completion (off the async threads), failing
/// with its output.
async fn run_pg(program: PathBuf, args: Vec<String>, what: &'static str) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let out = pg_command(&program)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{what}: cannot run {}: {e}", program.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("{what}: {e}")))
}

/// Server settings written to postgresql.conf (so a restart keeps them).
pub struct Settings {
    pub max_connections: u32,
    /// Extra `key = value` lines.
    pub extra: Vec<(String, String)>,
    /// TLS: the server certificate and key (and a CA for client
    /// certificates), copied into the data directory; turns `ssl = on`.
    pub ssl: Option<Ssl>,
    /// pg_hba.conf lines replacing initdb's (after a `local all all trust`
    /// line the helper keeps for itself).
    pub hba: Option<Vec<String>>,
}

pub struct Ssl {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_connections: 40,
            extra: Vec::new(),
            ssl: None,
            hba: None,
        }
    }
}

pub struct PgCluster {
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    pub port: u16,
    running: bool,
    /// Stop the server when dropped (default true).
    pub kill_on_drop: bool,
    /// How long initdb and the first start took.
    pub startup: Duration,
}

impl PgCluster {
    /// A new cluster with default settings, started and accepting connections.
    pub async fn start() -> PgCluster {
        PgCluster::start_with(Settings::default()).await
    }

    pub async fn start_with(settings: Settings) -> PgCluster {
        let started = Instant::now();
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("lookout-pg-")
            .tempdir()
            .expect("tempdir");
        if is_root() {
            let out = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .output()
                .expect("chown");
            assert!(
                out.status.success(),
                "chown {}: {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let data = dir.path().join("data");
        run_pg(
            bin.join("initdb"),
            vec![
                "-D".into(),
                data.display().to_string(),
                "--auth=trust".into(),
                "-U".into(),
                "postgres".into(),
                "-E".into(),
                "UTF8".into(),
                "--locale=C".into(),
                "--no-sync".into(),
            ],
            "initdb",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        // fsync = off is safe against what the tests do (the server process
        // stopped with -m immediate; the OS keeps what was written). Not
        // synchronous_commit = off: a commit acknowledged before its WAL is
        // written would be lost by an immediate stop, and the tests would
        // blame the ingester.
        let mut conf = format!(
            "\n# lookout-ingester test cluster\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             shared_buffers = 16MB\n\
             max_connections = {}\n\
             superuser_reserved_connections = 0\n\
             max_wal_senders = 0\n\
             wal_level = minimal\n\
             timezone = 'UTC'\n\
             log_timezone = 'UTC'\n\
             logging_collector = off\n",
            dir.path().display(),
            settings.max_connections
        );
        for (k, v) in &settings.extra {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        if let Some(ssl) = &settings.ssl {
            // The server wants its key owned by it and private.
            let mut files = vec![("server.crt", &ssl.cert), ("server.key", &ssl.key)];
            if let Some(ca) = &ssl.ca {
                files.push(("client_ca.crt", ca));
            }
            for (name, src) in files {
                let dst = data.join(name);
                std::fs::copy(src, &dst).expect("copy TLS file");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod TLS file");
                if is_root() {
                    let out = std::process::Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(&dst)
                        .output()
                        .expect("chown");
                    assert!(out.status.success(), "chown {}", dst.display());
                }
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            if ssl.ca.is_some() {
                conf.push_str("ssl_ca_file = 'client_ca.crt'\n");
            }
        }
        if let Some(hba) = &settings.hba {
            let mut text = String::from("local all all trust\n");
            for l in hba {
                text.push_str(l);
                text.push('\n');
            }
            std::fs::write(data.join("pg_hba.conf"), text).expect("pg_hba.conf");
        }
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .expect("postgresql.conf");
            f.write_all(conf.as_bytes()).expect("postgresql.conf");
        }
        let mut cluster = PgCluster {
            dir: Some(dir),
            bin,
            port: 0,
            running: false,
            kill_on_drop: true,
            startup: Duration::ZERO,
        };
        // A free port can be taken by someone else before the server binds
        // it; try a few.
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = super::broker::free_port();
            match cluster.pg_ctl(&["start"], "pg_ctl start").await {
                Ok(()) => {
                    cluster.running = true;
                    cluster.wait_accepting(Duration::from_secs(30)).await;
                    cluster.startup = started.elapsed();
                    return cluster;
                }
                Err(e) => last = e,
            }
        }
        panic!(
            "the private PostgreSQL cluster did not start: {last}\n{}",
            cluster.log()
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("cluster directory").path()
    }

    fn data(&self) -> PathBuf {
        self.dir().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("server.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `pg_ctl <action>` on this cluster's data directory, log and port,
    /// waiting up to 30 s for it to take effect.
    async fn pg_ctl(&self, action: &[&str], what: &'static str) -> Result<(), String> {
        let mut args: Vec<String> = action.iter().map(|a| a.to_string()).collect();
        args.extend([
            "-w".into(),
            "-t".into(),
            "30".into(),
            "-D".into(),
            self.data().display().to_string(),
            "-l".into(),
            self.log_path().display().to_string(),
            "-o".into(),
            format!("-p {}", self.port),
        ]);
        run_pg(self.bin.join("pg_ctl"), args, what).await
    }

    /// A URL for database `db` of this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// The admin connection through the Unix socket, which hba always
    /// trusts (TCP may be TLS-only or password-only).
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir().display(),
            self.port
        )
    }

    pub async fn connect(&self, db: &str) -> Client {
        super::connect(&self.url(db)).await
    }

    /// Waits until a connection succeeds and answers a query.
    pub async fn wait_accepting(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(Ok((client, conn))) = tokio::time::timeout(
                Duration::from_secs(2),
                tokio_postgres::connect(&self.socket_url("postgres"), NoTls),
            )
            .await
            {
                let task = tokio::spawn(conn);
                let ok = client.simple_query("SELECT 1").await.is_ok();
                drop(client);
                let _ = task.await;
                if ok {
                    return;
                }
            }
            if start.elapsed() > limit {
                panic!(
                    "the private PostgreSQL cluster is not accepting connections after {limit:?}\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `pg_ctl restart -m fast`, then waits until the server accepts
    /// connections again.
    pub async fn restart(&mut self) {
        self.pg_ctl(&["restart", "-m", "fast"], "pg_ctl restart")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        self.running = true;
        self.wait_accepting(Duration::from_secs(30)).await;
    }

    /// Stops the server (`-m immediate`, as a crash would); `start_again`
    /// brings it back on the same port and data.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let out = pg_command(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"])
            .arg(self.data())
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "pg_ctl stop: {}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("pg_ctl stop: {e}"),
        }
        self.running = false;
    }

    pub async fn start_again(&mut self) {
        assert!(!self.running, "the cluster is running");
        self.pg_ctl(&["start"], "pg_ctl start")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        self.running = true;
        self.wait_accepting(Duration::from_secs(30)).await;
    }

    /// Creates database `name` and migrates it to the latest schema; returns
    /// its URL.
    pub async fn create_migrated_db(&self, name: &str) -> String {
        let admin = self.connect("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        let mut client = self.connect(name).await;
        lookout_ingester::migrate::migrate(&mut client)
            .await
            .unwrap_or_else(|e| panic!("migrate {name}: {e:#}"));
        self.url(name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.kill_on_drop {
            self.stop();
        }
        // The directory belongs to postgres; removing it as root works, and
        // as another user it was never chowned.
        if let Some(dir) = self.dir.take() {
            if self.running {
                // Still running (kill_on_drop off): leave the files to it.
                let _ = dir.keep();
            } else {
                let _ = dir.close();
            }
        }
    }
}

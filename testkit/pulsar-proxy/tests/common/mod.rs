//! Shared helpers for the tests that need a real pulsar-lite.
#![allow(dead_code)]

pub mod lite;

use std::net::SocketAddr;
use std::path::PathBuf;

use pulsar::{Pulsar, TokioExecutor};
use tokio::process::Child;

/// A pulsar-lite child process on a free loopback port with its own storage.
/// Killed on drop (`kill_on_drop`), so a failing test cannot leak it.
pub struct Lite {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Lite {
    /// Starts pulsar-lite in a temporary directory (see
    /// [`lite::spawn_lite`]). `extra_config` holds top-level TOML keys for
    /// its config file.
    pub async fn start(extra_config: &str) -> Lite {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = lite::free_addr();
        let log = dir.path().join("pulsar-lite.log");
        let child = lite::spawn_lite(dir.path(), addr, extra_config, &log).await;
        Lite { child, addr, dir }
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

//! Starting pulsar-lite for tests. Shared by this crate's tests (through
//! `common/mod.rs`) and the ingester's (`tests/common/broker.rs` includes
//! this file by path), so it uses only std and tokio.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// A free loopback address (port) to listen on.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// Runs pulsar-lite (`$PULSAR_LITE_BIN`, else `pulsar-lite` on PATH) on
/// `addr` from `dir`, its data in `dir/db`, its config in
/// `dir/pulsar-lite.toml` (`extra_config`'s top-level keys, metrics off),
/// its output appended to `log`. Returns once it accepts connections; killed
/// when the child is dropped, so a failing test cannot leak it.
pub async fn spawn_lite(dir: &Path, addr: SocketAddr, extra_config: &str, log: &Path) -> Child {
    let bin = std::env::var_os("PULSAR_LITE_BIN").unwrap_or_else(|| "pulsar-lite".into());
    // The metrics endpoint would otherwise bind 0.0.0.0:8080, clashing
    // between parallel tests and leaving loopback; left without --config it
    // would read ./pulsar-lite.toml.
    let config = dir.join("pulsar-lite.toml");
    std::fs::write(
        &config,
        format!("{extra_config}\n[metrics]\nenabled = false\n"),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
    let err = out
        .try_clone()
        .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
    let mut child = Command::new(&bin)
        .current_dir(dir)
        .arg("--config")
        .arg(&config)
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--db-path")
        .arg(dir.join("db"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {bin:?} (run scripts/setup.sh or set PULSAR_LITE_BIN): {e}")
        });
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("pulsar-lite exited with {status}:\n{}", log_text());
        }
        assert!(
            Instant::now() < deadline,
            "pulsar-lite did not start listening on {addr}:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

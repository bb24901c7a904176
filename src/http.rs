//! The operator's HTTP endpoint on `metricsPort`: `/metrics` (Prometheus
//! text format), `/healthz` (the process is alive) and `/readyz` (connected to
//! the broker, Postgres answering its probe, and a schema this binary can
//! write).
//!
//! Deliberately tiny: GET only, one request per connection, no keep-alive.
//! Scrapers and probes need nothing more, and it keeps an HTTP framework out
//! of the dependency tree.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Readiness, set by the running ingester.
#[derive(Debug, Default)]
pub struct Health {
    pub broker_connected: AtomicBool,
    /// Postgres answered the last probe (or a batch was just committed).
    pub database_ok: AtomicBool,
    /// The schema is one this binary can write (checked before consuming).
    pub schema_ok: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
            && self.database_ok.load(Ordering::Relaxed)
            && self.schema_ok.load(Ordering::Relaxed)
    }
}

/// Binds `addr` and serves until the task is dropped or aborted.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(
        "serving /metrics, /healthz and /readyz on http://{}",
        listener.local_addr()?
    );
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let health = health.clone();
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(10), respond(stream, &health))
                                .await;
                    });
                }
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn respond(mut stream: TcpStream, health: &Health) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // Read until the end of the request head (or the buffer is full).
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let (status, ctype, body) = route(head.lines().next().unwrap_or(""), health);
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Maps a request line to a response; pure, so it is unit-tested.
fn route(request_line: &str, health: &Health) -> (&'static str, &'static str, String) {
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return ("405 Method Not Allowed", "text/plain", "GET only\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            crate::metrics::render(),
        ),
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        "/readyz" if health.ready() => ("200 OK", "text/plain", "ready\n".into()),
        "/readyz" => {
            let b = health.broker_connected.load(Ordering::Relaxed);
            let d = health.database_ok.load(Ordering::Relaxed);
            let s = health.schema_ok.load(Ordering::Relaxed);
            (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: broker_connected={b} database_ok={d} schema_ok={s}\n"),
            )
        }
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let h = Health::default();
        assert_eq!(route("GET /healthz HTTP/1.1", &h).0, "200 OK");
        assert_eq!(
            route("GET /readyz HTTP/1.1", &h).0,
            "503 Service Unavailable"
        );
        h.broker_connected.store(true, Ordering::Relaxed);
        h.database_ok.store(true, Ordering::Relaxed);
        assert_eq!(
            route("GET /readyz HTTP/1.1", &h).0,
            "503 Service Unavailable",
            "not ready before the schema is checked"
        );
        h.schema_ok.store(true, Ordering::Relaxed);
        assert_eq!(route("GET /readyz HTTP/1.1", &h).0, "200 OK");
        h.database_ok.store(false, Ordering::Relaxed);
        assert_eq!(
            route("GET /readyz HTTP/1.1", &h).0,
            "503 Service Unavailable"
        );
        h.database_ok.store(true, Ordering::Relaxed);
        crate::metrics::BATCHES.inc();
        let (s, _, body) = route("GET /metrics HTTP/1.1", &h);
        assert_eq!(s, "200 OK");
        assert!(body.contains("lookout_ingester_batches_total"), "{body}");
        assert_eq!(
            route("POST /metrics HTTP/1.1", &h).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route("GET /nope HTTP/1.1", &h).0, "404 Not Found");
        assert_eq!(route("", &h).0, "405 Method Not Allowed");
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let task = serve(addr, Arc::new(Health::default()))
            .await
            .expect("serve");
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("ok\n"),
            "{out}"
        );
        task.abort();
    }
}

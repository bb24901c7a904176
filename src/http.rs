//! The operator's HTTP endpoint on `metricsPort`: `/metrics` (Prometheus
//! text format), `/healthz` (the pipeline makes progress) and `/readyz`
//! (subscribed, Postgres answering, a schema this binary can write). What
//! they say is decided in [`crate::health`]; this module only serves it,
//! with axum's router on hyper's HTTP/1.1 server (keep-alive, methods other
//! than GET refused), each connection bounded in time and in number.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

pub use crate::health::Health;

/// The content type of Prometheus' text exposition format 0.0.4.
const METRICS_TYPE: &str = "text/plain; version=0.0.4";

/// The routes, for serving and for tests.
fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_TYPE)],
        crate::metrics::render(),
    )
        .into_response()
}

/// 200 `ok`, or 503 with why the pipeline is stuck.
async fn healthz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    match health.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
    }
}

/// 200 `ready`, or 503 with every failing check and why.
async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;

/// How long one connection may stay open: a client that sends nothing (or
/// trickles) cannot hold a socket for ever. Scrapers reconnect.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds `addr` and serves until the task is dropped or aborted.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(
        "serving /metrics, /healthz and /readyz on http://{}",
        listener.local_addr()?
    );
    let app = router(health);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                drop(slot);
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request over TCP: the status code, the head and the body.
    async fn request(addr: SocketAddr, line: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("{line}\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, head.to_string(), body.to_string())
    }

    #[tokio::test]
    async fn serves_the_three_endpoints() {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let health = Arc::new(Health::default());
        let task = serve(addr, health.clone()).await.expect("serve");

        assert_eq!(request(addr, "GET /healthz HTTP/1.1").await.0, 200);
        let (code, _, body) = request(addr, "GET /readyz HTTP/1.1").await;
        assert_eq!(code, 503);
        assert!(body.starts_with("not ready: broker"), "{body}");
        health.broker_connected.store(true, Ordering::Relaxed);
        health.set_database(None);
        let (code, _, body) = request(addr, "GET /readyz HTTP/1.1").await;
        assert_eq!(
            (code, body.as_str()),
            (503, "not ready: schema: not checked yet\n")
        );
        health.set_schema(None);
        assert_eq!(request(addr, "GET /readyz HTTP/1.1").await.0, 200);

        crate::metrics::BATCHES.inc();
        let (code, head, body) = request(addr, "GET /metrics HTTP/1.1").await;
        assert_eq!(code, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(body.contains("lookout_ingester_batches_total"), "{body}");
        assert_eq!(request(addr, "POST /metrics HTTP/1.1").await.0, 405);
        assert_eq!(request(addr, "GET /nope HTTP/1.1").await.0, 404);
        task.abort();
    }
}

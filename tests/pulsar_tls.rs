//! Pulsar over TLS and with authentication, for real: pulsar-lite behind
//! the test proxy, which terminates TLS with certificates made here and
//! checks the CONNECT frame's token as a broker does; the real binary
//! ingests into the real Postgres. All on loopback, each wait bounded.
//!
//! A broker the ingester cannot trust or that rejects its credentials is
//! not fatal: `run` logs the cause on one line and retries with backoff
//! (re-reading trust and token files), so fixing the broker, the CA file or
//! the token file is picked up without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::broker::{Broker, Ingester, Pki};
use common::{baseline, payloads, wait_equal, TestDb};
use lookout_ingester::config::PulsarConfig;
use lookout_ingester::sample;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INGEST_LIMIT: Duration = Duration::from_secs(60);

/// A broker with `n` generated sequences on `events` (published through
/// the plain proxy), the tables a clean run leaves, and a certificate
/// directory.
async fn published(seed: u64, n: usize) -> (Broker, String, Pki) {
    let broker = Broker::start().await;
    let seqs = sample::generate(seed, n);
    let expected = baseline(&seqs, broker.dir.path()).await;
    broker.publish("events", payloads(&seqs)).await;
    let pki = Pki {
        dir: broker.dir.path().to_path_buf(),
    };
    (broker, expected, pki)
}

/// Writes an upstream-style config file with `pulsar_yaml` under `pulsar:`.
fn config(dir: &Path, name: &str, pulsar_yaml: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let body = format!(
        "maxBackoff: 2\npulsar:\n  backoffTime: 200ms\n{}",
        pulsar_yaml
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    std::fs::write(&path, body).expect("write config");
    path
}

/// `run` against `url` with config file `cfg` and its own subscription, so
/// several ingesters can each read the whole topic.
fn spawn(db: &TestDb, broker: &Broker, url: &str, cfg: &Path, name: &str) -> Ingester {
    let log = broker.dir.path().join(format!("{name}.log"));
    let cfg = cfg.to_str().expect("utf-8 path");
    Ingester::spawn(
        &db.url,
        url,
        "events",
        log,
        &[
            "--config",
            cfg,
            "--subscription",
            name,
            "--batch-duration",
            "100ms",
        ],
    )
}

/// Waits until the log contains `needle`; fails with the log if not.
async fn wait_log(ing: &Ingester, needle: &str, limit: Duration) {
    let start = Instant::now();
    while !ing.log_text().contains(needle) {
        assert!(
            start.elapsed() < limit,
            "{needle:?} not logged within {limit:?}\n{}",
            ing.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The refusal contract: the cause is logged, nothing is written, the
/// process keeps running and retrying.
async fn assert_refused(db: &TestDb, ing: &mut Ingester, cause: &str) {
    wait_log(ing, cause, Duration::from_secs(30)).await;
    // A second attempt shows it retries rather than giving up.
    let start = Instant::now();
    while ing.log_text().matches("cannot subscribe to events").count() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no retry\n{}",
            ing.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ing.child.try_wait().expect("try_wait").is_none(),
        "it must keep retrying, not exit\n{}",
        ing.log_tail(30)
    );
    let jobs = common::count(&db.client().await, "job").await;
    assert_eq!(jobs, 0, "nothing may be ingested from a refused broker");
    // pulsar-rs logs its own line too; ours must carry the cause whole.
    let log = ing.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("cannot subscribe to events on pulsar") && l.contains(cause)),
        "the cause is not on the ingester's error line\n{}",
        ing.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_trust_insecure_and_host_names() {
    let (broker, expected, pki) = published(91, 20).await;
    let ca = pki.ca("ca");
    let other_ca = pki.ca("other-ca");
    let good = pki.server("ca", "good", "DNS:localhost,IP:127.0.0.1");
    let misnamed = pki.server("ca", "misnamed", "DNS:pulsar.example");
    let tls = |cert: (Vec<u8>, Vec<u8>)| pulsar_proxy::Options {
        tls: Some(cert),
        advertise_host: Some("localhost".into()),
        token: None,
    };
    let proxy = broker.secure_proxy(tls(good)).await;
    let wrong_host = broker.secure_proxy(tls(misnamed)).await;
    assert!(proxy.url().starts_with("pulsar+ssl://localhost:"));

    // The library's publish path (what `publish` and `record` use) over TLS
    // with the right CA and host-name checks.
    let extra = payloads(&sample::generate(92, 1));
    let n = extra.len() as u64;
    let cfg = PulsarConfig {
        url: proxy.url(),
        topic: "tls-publish".into(),
        tls_trust_certs_file_path: Some(ca.clone()),
        tls_validate_hostname: true,
        ..PulsarConfig::default()
    };
    let sent = tokio::time::timeout(
        Duration::from_secs(60),
        lookout_ingester::record::publish_payloads(&cfg, extra),
    )
    .await
    .expect("publish over TLS timed out")
    .expect("publish over TLS");
    assert_eq!(sent, n);

    let dir = broker.dir.path();
    let ca_s = ca.display();
    let other_s = other_ca.display();

    // Right CA, host names checked: ingests everything.
    let db = TestDb::migrated().await;
    let c = config(
        dir,
        "right",
        &format!("TLSTrustCertsFilePath: {ca_s}\nTLSValidateHostname: true"),
    );
    let mut ing = spawn(&db, &broker, &proxy.url(), &c, "right");
    wait_equal(&db.url, &expected, INGEST_LIMIT, Some(&ing)).await;
    ing.terminate(Duration::from_secs(10)).await;
    db.drop_db().await;

    // Another CA: refused with the TLS library's reason, nothing written.
    let db = TestDb::migrated().await;
    let c = config(dir, "other", &format!("TLSTrustCertsFilePath: {other_s}"));
    let mut ing = spawn(&db, &broker, &proxy.url(), &c, "other");
    assert_refused(&db, &mut ing, "certificate verify failed").await;
    ing.terminate(Duration::from_secs(10)).await;

    // The same CA file with TLSAllowInsecureConnection: accepted.
    let c = config(
        dir,
        "insecure",
        &format!("TLSTrustCertsFilePath: {other_s}\nTLSAllowInsecureConnection: true"),
    );
    let mut ing = spawn(&db, &broker, &proxy.url(), &c, "insecure");
    wait_equal(&db.url, &expected, INGEST_LIMIT, Some(&ing)).await;
    ing.terminate(Duration::from_secs(10)).await;
    db.drop_db().await;

    // A certificate from the right CA for another host: refused with
    // TLSValidateHostname, accepted without (the chain is still checked).
    let db = TestDb::migrated().await;
    let c = config(
        dir,
        "hostcheck",
        &format!("TLSTrustCertsFilePath: {ca_s}\nTLSValidateHostname: true"),
    );
    let mut ing = spawn(&db, &broker, &wrong_host.url(), &c, "hostcheck");
    assert_refused(&db, &mut ing, "certificate verify failed").await;
    assert!(
        ing.log_text().to_lowercase().contains("hostname mismatch"),
        "{}",
        ing.log_tail(10)
    );
    ing.terminate(Duration::from_secs(10)).await;
    let c = config(
        dir,
        "nohostcheck",
        &format!("TLSTrustCertsFilePath: {ca_s}\nTLSValidateHostname: false"),
    );
    let mut ing = spawn(&db, &broker, &wrong_host.url(), &c, "nohostcheck");
    wait_equal(&db.url, &expected, INGEST_LIMIT, Some(&ing)).await;
    ing.terminate(Duration::from_secs(10)).await;
    db.drop_db().await;

    proxy.shutdown().await;
    wrong_host.shutdown().await;
    broker.stop().await;
}

/// A fresh, recognisable secret for one test.
fn secret(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{label}-{}-{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rejected_then_rotated_token_file_is_used_without_restart() {
    let (broker, expected, pki) = published(93, 20).await;
    let ca = pki.ca("ca");
    let cert = pki.server("ca", "srv", "DNS:localhost,IP:127.0.0.1");
    let right = secret("right-token");
    let wrong = secret("wrong-token");
    let proxy = broker
        .secure_proxy(pulsar_proxy::Options {
            tls: Some(cert),
            advertise_host: Some("localhost".into()),
            token: Some(right.clone().into_bytes()),
        })
        .await;
    let dir = broker.dir.path();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{wrong}\n")).expect("write token");
    let c = config(
        dir,
        "jwt",
        &format!(
            "TLSTrustCertsFilePath: {}\nTLSValidateHostname: true\nauthenticationEnabled: true\n\
             authenticationType: JWT\njwtTokenPath: {}",
            ca.display(),
            token_file.display()
        ),
    );
    let db = TestDb::migrated().await;
    let mut ing = spawn(&db, &broker, &proxy.url(), &c, "jwt");
    assert_refused(&db, &mut ing, "AuthenticationError").await;
    assert!(proxy.auth_rejected() >= 2, "each retry presents the token");
    // Backing off, not spinning: with 200ms doubling to 2s, a few attempts
    // in three seconds.
    let before = proxy.auth_rejected();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = proxy.auth_rejected() - before;
    assert!(during <= 8, "{during} attempts in 3s: not backing off");

    // Rotate the token as a secret mount does (new file, renamed over).
    let tmp = dir.join("token.new");
    std::fs::write(&tmp, &right).expect("write token");
    std::fs::rename(&tmp, &token_file).expect("rotate token");
    wait_equal(&db.url, &expected, INGEST_LIMIT, Some(&ing)).await;
    ing.terminate(Duration::from_secs(10)).await;

    let log = ing.log_text();
    assert!(
        !log.contains(&right) && !log.contains(&wrong),
        "a token reached the log"
    );
    db.drop_db().await;
    proxy.shutdown().await;
    broker.stop().await;
}

/// What the test issuer saw.
#[derive(Default)]
struct Issued {
    discovery: AtomicUsize,
    granted: AtomicUsize,
    refused: AtomicUsize,
}

/// A tiny OAuth2 issuer on loopback: the discovery document under
/// `/realm/.well-known/openid-configuration` and a token endpoint that
/// grants `token` to exactly this client, secret and audience.
async fn issuer(
    client_id: String,
    client_secret: String,
    audience: String,
    token: String,
) -> (String, Arc<Issued>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Issued::default());
    let (b, s) = (base.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then as much body as Content-Length says.
            let (head, body) = loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break (String::new(), String::new()),
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
                let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&raw[..end]).to_string();
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if raw.len() >= end + 4 + len {
                    break (
                        head,
                        String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).to_string(),
                    );
                }
            };
            let line = head.lines().next().unwrap_or("").to_string();
            let (status, json) = if line.starts_with("GET /realm/.well-known/openid-configuration ")
            {
                s.discovery.fetch_add(1, Ordering::SeqCst);
                (
                    "200 OK",
                    format!(
                        r#"{{"issuer":"{b}/realm","token_endpoint":"{b}/realm/token","jwks_uri":"{b}/realm/jwks"}}"#
                    ),
                )
            } else if line.starts_with("POST /realm/token ") {
                let form: std::collections::HashMap<String, String> =
                    url::form_urlencoded::parse(body.as_bytes())
                        .into_owned()
                        .collect();
                let ok = form.get("grant_type").map(String::as_str) == Some("client_credentials")
                    && form.get("client_id") == Some(&client_id)
                    && form.get("client_secret") == Some(&client_secret)
                    && form.get("audience") == Some(&audience);
                if ok {
                    s.granted.fetch_add(1, Ordering::SeqCst);
                    (
                        "200 OK",
                        format!(
                            r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3600}}"#
                        ),
                    )
                } else {
                    s.refused.fetch_add(1, Ordering::SeqCst);
                    (
                        "401 Unauthorized",
                        r#"{"error":"invalid_client","error_description":"bad client credentials"}"#
                            .to_string(),
                    )
                }
            } else {
                ("404 Not Found", "{}".to_string())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                json.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    });
    (format!("{base}/realm"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_client_credentials_token_is_obtained_and_accepted() {
    let (broker, expected, _pki) = published(95, 20).await;
    let client_secret = secret("client-secret");
    let access = secret("access-token");
    let (issuer_url, seen) = issuer(
        "lookout".into(),
        client_secret.clone(),
        "urn:pulsar:test".into(),
        access.clone(),
    )
    .await;
    let proxy = broker
        .secure_proxy(pulsar_proxy::Options {
            token: Some(access.clone().into_bytes()),
            ..Default::default()
        })
        .await;
    let dir = broker.dir.path();
    let creds = dir.join("credentials.json");
    let bad = dir.join("bad-credentials.json");
    let write_creds = |path: &Path, secret: &str| {
        let body = serde_json::json!({
            "type": "client_credentials",
            "client_id": "lookout",
            "client_secret": secret,
            "issuer_url": issuer_url,
        });
        std::fs::write(path, body.to_string()).expect("write credentials");
    };
    write_creds(&creds, &client_secret);
    write_creds(&bad, "not-the-secret");
    let yaml = |path: &Path| {
        format!(
            "authenticationEnabled: true\nauthenticationType: OAuth2\n\
             oauth2IssuerUrl: {issuer_url}\noauth2Audience: urn:pulsar:test\n\
             oauth2PrivateKey: file://{}",
            path.display()
        )
    };

    // Wrong client secret: the issuer's refusal is the logged cause.
    let db = TestDb::migrated().await;
    let c = config(dir, "oauth-bad", &yaml(&bad));
    let mut ing = spawn(&db, &broker, &proxy.url(), &c, "oauth-bad");
    assert_refused(&db, &mut ing, "invalid_client").await;
    ing.terminate(Duration::from_secs(10)).await;
    assert!(seen.refused.load(Ordering::SeqCst) >= 1);
    assert_eq!(seen.granted.load(Ordering::SeqCst), 0);

    // Right credentials: token obtained, presented, accepted, ingested.
    let c = config(dir, "oauth", &yaml(&creds));
    let mut ing = spawn(&db, &broker, &proxy.url(), &c, "oauth");
    wait_equal(&db.url, &expected, INGEST_LIMIT, Some(&ing)).await;
    ing.terminate(Duration::from_secs(10)).await;
    assert!(seen.discovery.load(Ordering::SeqCst) >= 1);
    assert!(seen.granted.load(Ordering::SeqCst) >= 1);
    assert_eq!(proxy.auth_rejected(), 0, "the issued token was accepted");

    for name in ["oauth-bad", "oauth"] {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        assert!(
            !log.contains(&client_secret)
                && !log.contains(&access)
                && !log.contains("not-the-secret"),
            "a secret reached the {name} log"
        );
    }
    db.drop_db().await;
    proxy.shutdown().await;
    broker.stop().await;
}

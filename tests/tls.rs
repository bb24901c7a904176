//! Postgres over real TLS: a private cluster with `ssl = on`, a CA, server
//! and client certificates made by the test with the `openssl` CLI, hba
//! lines that refuse plain TCP, and each sslmode, client certificate and
//! password source checked against it, through the library and the binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::pgcluster::{PgCluster, Settings, Ssl};
use lookout_ingester::pg::{self, PgSettings};

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (scripts/setup.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Certificates in a temp dir: `ca.crt` (signs everything), `other-ca.crt`
/// (signs nothing here), `server.crt/key` for DNS name `localhost` only,
/// `client.crt/key` for user `certuser` (key in the traditional EC form).
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn make() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [("ca", "test-ca"), ("other-ca", "other-ca")] {
            let (key, crt, subj) = (
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("/CN={cn}"),
            );
            let mut a = vec!["req", "-x509"];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
            openssl(&a, d);
        }
        std::fs::write(d.join("server.ext"), "subjectAltName=DNS:localhost\n").expect("ext");
        let mut a = vec!["req", "-new"];
        a.extend(ec);
        a.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&a, d);
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
            d,
        );
        openssl(
            &[
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-noout",
                "-out",
                "client.key",
            ],
            d,
        );
        openssl(
            &[
                "req",
                "-new",
                "-key",
                "client.key",
                "-out",
                "client.csr",
                "-subj",
                "/CN=certuser",
            ],
            d,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "client.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "client.crt",
                "-days",
                "2",
            ],
            d,
        );
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

const APP_PASSWORD: &str = "app-Secret-7f3";

/// A TLS-only cluster: `postgres` trusted over TLS, `certuser` by client
/// certificate, `app` by SCRAM password; no plain TCP line at all.
async fn tls_cluster(certs: &Certs) -> PgCluster {
    let pg = PgCluster::start_with(Settings {
        ssl: Some(Ssl {
            cert: certs.path("server.crt"),
            key: certs.path("server.key"),
            ca: Some(certs.path("ca.crt")),
        }),
        hba: Some(vec![
            "hostssl all certuser 127.0.0.1/32 cert".into(),
            "hostssl all app 127.0.0.1/32 scram-sha-256".into(),
            "hostssl all postgres 127.0.0.1/32 trust".into(),
        ]),
        extra: vec![("password_encryption".into(), "'scram-sha-256'".into())],
        ..Settings::default()
    })
    .await;
    let admin = common::connect(&pg.socket_url("postgres")).await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE certuser LOGIN; CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"
        ))
        .await
        .expect("roles");
    pg
}

/// Connects with the library and says whether the session is encrypted.
async fn try_lib(conninfo: &str) -> Result<bool, String> {
    let s = PgSettings::parse_with(conninfo, None, &|_| None).map_err(|e| format!("{e:#}"))?;
    let c = pg::connect(&s).await.map_err(|e| format!("{e:#}"))?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

fn base(pg: &PgCluster, host: &str, user: &str) -> String {
    format!("host={host} port={} user={user} dbname=postgres", pg.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_migrates_and_replays_through_the_binary() {
    let certs = Certs::make();
    let pg = tls_cluster(&certs).await;
    let admin = common::connect(&pg.socket_url("postgres")).await;
    admin
        .batch_execute("CREATE DATABASE lookout")
        .await
        .expect("db");
    let url = format!(
        "postgres://postgres@localhost:{}/lookout?sslmode=verify-full&sslrootcert={}&application_name=tls-test",
        pg.port,
        certs.p("ca.crt")
    );
    let out = common::cli(["migrate", "--database-url", &url]).await;
    assert_eq!(out.code, Some(0), "migrate: {}{}", out.stdout, out.stderr);
    let sample = certs.path("sample.rec");
    let out = common::cli([
        "sample",
        "--out",
        sample.to_str().expect("path"),
        "--jobs",
        "30",
    ])
    .await;
    assert_eq!(out.code, Some(0), "sample: {}", out.stderr);
    let spool = certs.path("spool.jsonl");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookout-ingester"))
        .args(["replay", "--database-url", &url])
        .arg(&sample)
        .env_remove("LOOKOUT_DATABASE_URL")
        .env("ARMADA_DEADLETTERSPOOL", &spool)
        .output()
        .await
        .expect("replay");
    assert_eq!(
        out.status.code(),
        Some(0),
        "replay: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let db = common::connect(&pg.socket_url("lookout")).await;
    assert_eq!(common::count(&db, "job").await, 30);
    // The same through upstream's YAML map, key by key over the defaults.
    let config = certs.path("config.yaml");
    std::fs::write(
        &config,
        format!(
            "postgres:\n  connection:\n    host: localhost\n    port: {}\n    sslmode: verify-full\n    sslrootcert: {}\n",
            pg.port,
            certs.p("ca.crt")
        ),
    )
    .expect("config");
    let out = common::cli([
        "migrate",
        "--status",
        "--config",
        config.to_str().expect("path"),
    ])
    .await;
    assert_eq!(
        out.code,
        Some(0),
        "migrate --status: {}{}",
        out.stdout,
        out.stderr
    );
    // The plain connection the hba has no line for is refused.
    let err = try_lib(&format!(
        "{} sslmode=disable",
        base(&pg, "127.0.0.1", "postgres")
    ))
    .await
    .unwrap_err();
    assert!(err.contains("no pg_hba.conf entry"), "{err}");
    assert!(err.contains("127.0.0.1:"), "target named: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_host_name_checks() {
    let certs = Certs::make();
    let pg = tls_cluster(&certs).await;
    let ca = certs.p("ca.crt");
    let other = certs.p("other-ca.crt");
    let local = base(&pg, "localhost", "postgres");
    let ip = base(&pg, "127.0.0.1", "postgres");

    assert_eq!(
        try_lib(&format!("{local} sslmode=verify-full sslrootcert={ca}")).await,
        Ok(true)
    );
    // Signed by a CA the client does not trust: refused under both modes,
    // and under require once a root CA is given (libpq: then verify-ca).
    for mode in ["verify-ca", "verify-full", "require"] {
        let err = try_lib(&format!("{local} sslmode={mode} sslrootcert={other}"))
            .await
            .unwrap_err();
        assert!(err.contains("certificate verify failed"), "{mode}: {err}");
        assert!(
            err.contains(&format!("localhost:{}/postgres as postgres", pg.port)),
            "{err}"
        );
    }
    // The certificate is for "localhost", not "127.0.0.1".
    let err = try_lib(&format!("{ip} sslmode=verify-full sslrootcert={ca}"))
        .await
        .unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
    assert_eq!(
        try_lib(&format!("{ip} sslmode=verify-ca sslrootcert={ca}")).await,
        Ok(true)
    );
    // require and prefer do not verify.
    assert_eq!(try_lib(&format!("{ip} sslmode=require")).await, Ok(true));
    assert_eq!(try_lib(&format!("{ip} sslmode=prefer")).await, Ok(true));
    // allow: the plain attempt is refused by hba, TLS follows.
    assert_eq!(try_lib(&format!("{ip} sslmode=allow")).await, Ok(true));
    // A Unix socket is never TLS (as libpq), whatever the sslmode.
    assert_eq!(
        try_lib(&format!(
            "{} sslmode=verify-full",
            pg.socket_url("postgres")
        ))
        .await,
        Ok(false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_against_a_plain_server() {
    let pg = PgCluster::start().await;
    let b = base(&pg, "127.0.0.1", "postgres");
    assert_eq!(try_lib(&format!("{b} sslmode=prefer")).await, Ok(false));
    assert_eq!(try_lib(&format!("{b} sslmode=disable")).await, Ok(false));
    let err = try_lib(&format!("{b} sslmode=require")).await.unwrap_err();
    assert!(err.contains("TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate() {
    let certs = Certs::make();
    let pg = tls_cluster(&certs).await;
    let b = format!(
        "{} sslmode=verify-full sslrootcert={}",
        base(&pg, "localhost", "certuser"),
        certs.p("ca.crt")
    );
    assert_eq!(
        try_lib(&format!(
            "{b} sslcert={} sslkey={}",
            certs.p("client.crt"),
            certs.p("client.key")
        ))
        .await,
        Ok(true)
    );
    let err = try_lib(&b).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("as certuser"), "{err}");
}

/// Runs `migrate --status` for user `app` with extra environment and args.
async fn status_as_app(
    pg: &PgCluster,
    certs: &Certs,
    env: &[(&str, String)],
    config: Option<&Path>,
) -> (bool, String) {
    let url = format!(
        "host=localhost port={} user=app dbname=postgres sslmode=verify-full sslrootcert={}",
        pg.port,
        certs.p("ca.crt")
    );
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookout-ingester"));
    c.arg("migrate")
        .arg("--status")
        .args(["--database-url", &url]);
    if let Some(f) = config {
        c.arg("--config").arg(f);
    }
    c.env_remove("LOOKOUT_DATABASE_URL")
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        // No ~/.pgpass of the machine's user interferes.
        .env("HOME", certs.dir.path())
        // A refused connection ends the command at once.
        .env("ARMADA_RETRYFOR", "0s");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().await.expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_from_env_passfile_and_password_file() {
    let certs = Certs::make();
    let pg = tls_cluster(&certs).await;
    let denied = "password authentication failed for user \"app\"";
    let wrong = "wrong-Guess-91";

    for (pw, ok) in [(APP_PASSWORD, true), (wrong, false)] {
        let (success, text) = status_as_app(&pg, &certs, &[("PGPASSWORD", pw.into())], None).await;
        assert_eq!(success, ok, "PGPASSWORD {pw}: {text}");
        if !ok {
            assert!(text.contains(denied), "{text}");
            assert!(!text.contains(wrong), "{text}");
        }

        let passfile = certs.path("pgpass");
        std::fs::write(
            &passfile,
            format!("other:*:*:*:nope\nlocalhost:{}:*:app:{pw}\n", pg.port),
        )
        .expect("pgpass");
        let (success, text) = status_as_app(
            &pg,
            &certs,
            &[("PGPASSFILE", passfile.display().to_string())],
            None,
        )
        .await;
        assert_eq!(success, ok, "passfile {pw}: {text}");
        if !ok {
            assert!(text.contains(denied), "{text}");
            assert!(!text.contains(wrong), "{text}");
        }

        let secret = certs.path("pg-password");
        std::fs::write(&secret, format!("{pw}\n")).expect("secret");
        let config = certs.path("config.yaml");
        std::fs::write(
            &config,
            format!("postgres:\n  passwordFile: {}\n", secret.display()),
        )
        .expect("config");
        // The file wins over PGPASSWORD.
        let (success, text) = status_as_app(
            &pg,
            &certs,
            &[("PGPASSWORD", "not-this-one".into())],
            Some(&config),
        )
        .await;
        assert_eq!(success, ok, "passwordFile {pw}: {text}");
        if !ok {
            assert!(text.contains(denied), "{text}");
            assert!(!text.contains(wrong), "{text}");
        }
    }

    // A password file that cannot be read is named, and nothing connects.
    let config = certs.path("missing.yaml");
    std::fs::write(
        &config,
        "postgres:\n  passwordFile: /nonexistent/pg-secret\n",
    )
    .expect("config");
    let (success, text) = status_as_app(&pg, &certs, &[], Some(&config)).await;
    assert!(!success);
    assert!(text.contains("/nonexistent/pg-secret"), "{text}");
}

/// A rotated password file is read again for each new pool connection: no
/// restart after the secret changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_password_file_is_used_by_new_connections() {
    let certs = Certs::make();
    let pg = tls_cluster(&certs).await;
    let secret = certs.path("pg-password");
    std::fs::write(&secret, format!("{APP_PASSWORD}\n")).expect("secret");
    let s = PgSettings::parse_with(
        &format!("{} sslmode=require", base(&pg, "127.0.0.1", "app")),
        Some(&secret),
        &|_| None,
    )
    .expect("settings");
    let pool = pg::pool(&s, 1).expect("pool");
    let conn = pool.get().await.expect("first connection");
    conn.batch_execute("SELECT 1").await.expect("query");
    // Rotate: the server's password first, then the mounted file.
    let admin = common::connect(&pg.socket_url("postgres")).await;
    admin
        .batch_execute("ALTER ROLE app PASSWORD 'rotated-Secret-2'")
        .await
        .expect("alter role");
    std::fs::write(&secret, "rotated-Secret-2\n").expect("secret");
    // Detach the pooled connection so that the next get() opens a new one.
    let _ = deadpool_postgres::Object::take(conn);
    let conn = pool
        .get()
        .await
        .expect("connection with the rotated password");
    conn.batch_execute("SELECT 1").await.expect("query");
    let _ = deadpool_postgres::Object::take(conn);
    // And the old password no longer works, so the file really was re-read.
    std::fs::write(&secret, format!("{APP_PASSWORD}\n")).expect("secret");
    let err = pool.get().await.expect_err("old password refused");
    let text = lookout_ingester::pg::error_chain(&err);
    assert!(text.contains("password authentication failed"), "{text}");
}

//! No secret is ever printed: every subcommand runs with a known password or
//! token placed in turn in the YAML, a `--database-url` URL, a key=value
//! string, `PGPASSWORD` and a Pulsar token file, against reachable servers
//! (the local Postgres, trust auth, so any password is accepted; pulsar-lite)
//! and unreachable ones (closed ports), with debug logging; stdout and stderr
//! must not contain the secret, plain or URL-encoded.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::broker::{free_port, Broker};
use common::TestDb;

/// `/` makes the URL-encoded form differ from the plain one.
const SECRET: &str = "Zq7/secretPW-9x";
const SECRET_ENCODED: &str = "Zq7%2FsecretPW-9x";

/// Where the secret sits for one round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    Yaml,
    Url,
    KeyValue,
    PgPassword,
    TokenFile,
}

struct Target {
    pg_host: String,
    pg_port: u16,
    db: String,
    pulsar: String,
}

/// The settings arguments and environment for one placement.
fn settings(place: Place, t: &Target, dir: &Path) -> (Vec<String>, Vec<(String, String)>) {
    let (host, port, db) = (&t.pg_host, t.pg_port, &t.db);
    let url_no_pw = format!("postgres://postgres@{host}:{port}/{db}");
    let mut env = Vec::new();
    let args = match place {
        Place::Yaml => {
            let yaml = format!(
                "postgres:\n  connection:\n    host: {host}\n    port: {port}\n    user: postgres\n    password: \"{SECRET}\"\n    dbname: {db}\n"
            );
            let file = dir.join("secret.yaml");
            std::fs::write(&file, yaml).expect("write yaml");
            vec!["--config".into(), file.display().to_string()]
        }
        Place::Url => vec![
            "--database-url".into(),
            format!("postgres://postgres:{SECRET_ENCODED}@{host}:{port}/{db}"),
        ],
        Place::KeyValue => vec![
            "--database-url".into(),
            format!("host={host} port={port} user=postgres password='{SECRET}' dbname={db}"),
        ],
        Place::PgPassword => {
            env.push(("PGPASSWORD".into(), SECRET.into()));
            vec!["--database-url".into(), url_no_pw]
        }
        Place::TokenFile => {
            let token = dir.join("token");
            std::fs::write(&token, SECRET).expect("write token");
            let yaml = format!(
                "pulsar:\n  authenticationEnabled: true\n  authenticationType: JWT\n  jwtTokenPath: {}\n",
                token.display()
            );
            let file = dir.join("auth.yaml");
            std::fs::write(&file, yaml).expect("write yaml");
            vec![
                "--config".into(),
                file.display().to_string(),
                "--database-url".into(),
                url_no_pw,
            ]
        }
    };
    (args, env)
}

/// Every subcommand, as `(name, args)`; `S` stands for the settings
/// arguments, `P` for `--pulsar-url`.
fn commands(recording: &Path, out: &Path) -> Vec<(&'static str, Vec<String>)> {
    let rec = recording.display().to_string();
    let out = out.display().to_string();
    let c = |name: &'static str, a: &[&str]| (name, a.iter().map(|s| s.to_string()).collect());
    vec![
        c("run", &["run", "S", "P", "--metrics-port", "0"]),
        c(
            "run json",
            &[
                "run",
                "S",
                "P",
                "--metrics-port",
                "0",
                "--log-format",
                "json",
            ],
        ),
        c(
            "record",
            &["record", "S", "P", "--out", &out, "--idle", "1s"],
        ),
        c("publish", &["publish", "S", "P", &rec]),
        c("migrate --status", &["migrate", "S", "--status"]),
        c("migrate", &["migrate", "S"]),
        c("replay", &["replay", "S", &rec]),
        c("dead-letters list", &["dead-letters", "S", "list"]),
        c("dead-letters show", &["dead-letters", "S", "show", "1"]),
        c(
            "dead-letters retry",
            &["dead-letters", "S", "retry", "--all"],
        ),
        c(
            "dead-letters purge",
            &["dead-letters", "S", "purge", "--older-than", "1h"],
        ),
        c("dead-letters flush", &["dead-letters", "S", "flush"]),
        c("status", &["status", "S", "--json"]),
        c(
            "report failures",
            &["report", "S", "failures", "--json", "--html", &out],
        ),
        c("config --show", &["config", "S", "P", "--show"]),
        c("run --help", &["run", "S", "--help"]),
        c("--help", &["--help", "S"]),
        // A mistyped flag: clap quotes what it cannot parse.
        c("typo", &["migrate", "TYPO"]),
        // A value where a number belongs, after the connection string.
        c("bad value", &["replay", "S", "--batch-size", "many", &rec]),
        c("sample", &["sample", "--out", &out, "--jobs", "2", "S"]),
    ]
}

struct Outcome {
    code: Option<i32>,
    output: String,
}

/// Runs the binary, killed after `limit` (run and the retrying commands
/// against an unreachable server never end by themselves).
async fn run_bounded(args: &[String], env: &[(String, String)], dir: &Path) -> Outcome {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookout-ingester"));
    cmd.args(args)
        .current_dir(dir)
        .env("RUST_LOG", "debug")
        // One-shot commands give up on the unreachable server within the limit.
        .env("ARMADA_RETRYFOR", "1s")
        .env_remove("LOOKOUT_DATABASE_URL")
        .env_remove("PGPASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let read = async move {
        use tokio::io::AsyncReadExt;
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let _ = tokio::join!(stdout.read_to_end(&mut o), stderr.read_to_end(&mut e));
        (o, e)
    };
    let reader = tokio::spawn(read);
    let code = match tokio::time::timeout(Duration::from_secs(4), child.wait()).await {
        Ok(status) => status.ok().and_then(|s| s.code()),
        Err(_) => {
            // SIGTERM first, so that shutdown paths get to log too.
            if let Some(pid) = child.id() {
                // SAFETY: signalling our own child by its pid.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            if tokio::time::timeout(Duration::from_secs(3), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            None
        }
    };
    let (o, e) = reader.await.expect("reader");
    Outcome {
        code,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&o),
            String::from_utf8_lossy(&e)
        ),
    }
}

/// The arguments of one command with `S`, `P` and `TYPO` filled in.
fn fill(args: &[String], settings: &[String], pulsar: &str) -> Vec<String> {
    let mut out = Vec::new();
    for a in args {
        match a.as_str() {
            "S" => out.extend(settings.iter().cloned()),
            "P" => out.extend(["--pulsar-url".to_string(), pulsar.to_string()]),
            "TYPO" => {
                // `--databse-url=VALUE` for a connection string argument,
                // the settings as they are otherwise.
                let mut i = 0;
                while i < settings.len() {
                    if settings[i] == "--database-url" && i + 1 < settings.len() {
                        out.push(format!("--databse-url={}", settings[i + 1]));
                        i += 2;
                    } else {
                        out.push(settings[i].clone());
                        i += 1;
                    }
                }
                out.push("--databse-url".into());
            }
            _ => out.push(a.clone()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_subcommand_prints_a_secret() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let recording = dir.path().join("rec.bin");
    let made = run_bounded(
        &[
            "sample".into(),
            "--out".into(),
            recording.display().to_string(),
            "--jobs".into(),
            "3".into(),
        ],
        &[],
        dir.path(),
    )
    .await;
    assert_eq!(made.code, Some(0), "{}", made.output);

    let reachable = Target {
        pg_host: "127.0.0.1".into(),
        pg_port: 5432,
        db: db.name.clone(),
        pulsar: broker.url(),
    };
    let unreachable = Target {
        pg_host: "127.0.0.1".into(),
        pg_port: free_port(),
        db: "lookout".into(),
        pulsar: format!("pulsar://127.0.0.1:{}", free_port()),
    };
    let mut leaks = Vec::new();
    let mut ran = 0;
    for place in [
        Place::Yaml,
        Place::Url,
        Place::KeyValue,
        Place::PgPassword,
        Place::TokenFile,
    ] {
        for (server, t) in [("reachable", &reachable), ("unreachable", &unreachable)] {
            let round = tempfile::tempdir().expect("tempdir");
            let (set, env) = settings(place, t, round.path());
            let out = round.path().join("out.bin");
            let runs = commands(&recording, &out).into_iter().map(|(name, args)| {
                let args = fill(&args, &set, &t.pulsar);
                let env = env.clone();
                let dir = round.path().to_path_buf();
                async move { (name, args.clone(), run_bounded(&args, &env, &dir).await) }
            });
            for (name, args, outcome) in futures::future::join_all(runs).await {
                ran += 1;
                if outcome.output.contains(SECRET) || outcome.output.contains(SECRET_ENCODED) {
                    leaks.push(format!(
                        "{place:?}/{server} {name} {args:?}:\n{}",
                        outcome.output
                    ));
                }
                // The reachable rounds really reach the database, so the
                // paths that print what they found are exercised.
                if server == "reachable" && name == "migrate --status" {
                    assert_eq!(outcome.code, Some(0), "{place:?}: {}", outcome.output);
                }
                if server == "unreachable" && name == "migrate --status" {
                    assert_eq!(outcome.code, Some(1), "{place:?}: {}", outcome.output);
                }
                if name == "config --show" && place == Place::Yaml {
                    assert!(
                        outcome.output.contains("password: <redacted>"),
                        "{}",
                        outcome.output
                    );
                }
                if name == "config --show" && place == Place::TokenFile {
                    let token: PathBuf = round.path().join("token");
                    assert!(
                        outcome
                            .output
                            .contains(&format!("jwtTokenPath: {}", token.display())),
                        "{}",
                        outcome.output
                    );
                }
            }
        }
    }
    broker.stop().await;
    db.drop_db().await;
    assert!(ran >= 150, "only {ran} runs");
    assert!(leaks.is_empty(), "secret printed:\n{}", leaks.join("\n\n"));
}

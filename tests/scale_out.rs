//! Scale-out (issue 12, item 4): `run` replicas share a partitioned topic in
//! one Failover subscription, each partition consumed by one of them, all
//! writing to one database. pulsar-lite makes every topic it creates
//! partitioned with `default_partitions`; `publish` keys each message by its
//! job set, as Armada does, so a job's events stay on one partition.

mod common;

use std::time::{Duration, Instant};

use common::broker::{free_port, Broker, Ingester};
use common::*;
use lookout_ingester::sample;

/// `GET /metrics` on the local port: the value of counter `name`, 0 if the
/// server does not answer.
async fn counter(port: u16, name: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            key.ends_with(name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Polls `cond` until it holds (true) or `limit` passes (false).
async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !cond().await {
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// 4 partitions, 2 replicas in one Failover subscription; the busier one is
/// SIGKILLed mid-stream, the other takes over its partitions, and the tables
/// end equal to a replay of the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_four_partitions_and_one_takes_over_after_sigkill() {
    let broker = Broker::start_with_config("default_partitions = 4").await;
    let seqs = sample::generate(12, 1500);
    let expected = baseline(&seqs, broker.dir.path()).await;
    let all = payloads(&seqs);
    let (first, second) = all.split_at(all.len() / 3);
    let db = TestDb::migrated().await;
    let url = broker.url();
    let ports = [free_port(), free_port()];
    let spawn = |name: &str, port: u16| {
        let port = port.to_string();
        Ingester::spawn_args(
            &[
                "run",
                "--database-url",
                &db.url,
                "--pulsar-url",
                &url,
                "--topic",
                "events",
                "--metrics-port",
                &port,
                "--bind",
                "127.0.0.1",
                // Small batches keep a replica busy for a while: the kill
                // lands mid-stream.
                "--batch-size",
                "100",
            ],
            broker.dir.path().join(format!("{name}.log")),
        )
    };
    let a = spawn("a", ports[0]);
    let b = spawn("b", ports[1]);
    for ing in [&a, &b] {
        let subscribed = wait_until(Duration::from_secs(30), || async {
            ing.log_text().contains("subscribed to events")
        });
        assert!(subscribed.await, "not subscribed:\n{}", ing.log_tail(20));
    }

    // The first third. A broker that splits the partitions between the two
    // (Pulsar: partition index modulo the sorted consumers) gives both some
    // of it; pulsar-lite makes one consumer active on every partition and
    // keeps the other as a standby. Either way, the busier one is killed.
    broker.publish("events", first.to_vec()).await;
    let received = |port| counter(port, "messages_received_total");
    let any = wait_until(Duration::from_secs(60), || async {
        received(ports[0]).await + received(ports[1]).await > 0
    });
    assert!(
        any.await,
        "nothing consumed\n{}\n{}",
        a.log_tail(10),
        b.log_tail(10)
    );
    let before = [received(ports[0]).await, received(ports[1]).await];
    eprintln!("before the kill: received {before:?}");
    let (victim, survivor, survivor_port) = if before[0] >= before[1] {
        (a, b, ports[1])
    } else {
        (b, a, ports[0])
    };
    let (victim_port, survivor_before) = if survivor_port == ports[1] {
        (ports[0], before[1])
    } else {
        (ports[1], before[0])
    };
    let victim_before = before[0].max(before[1]);

    // The rest, and SIGKILL the busier replica while it is consuming it.
    let publish = {
        let cfg = broker.pulsar("events");
        let rest = second.to_vec();
        tokio::spawn(async move { lookout_ingester::record::publish_payloads(&cfg, rest).await })
    };
    let more = wait_until(Duration::from_secs(60), || async {
        received(victim_port).await > victim_before
    });
    assert!(more.await, "no more consumed:\n{}", victim.log_tail(20));
    victim.sigkill().await;
    let sent = publish.await.expect("join").expect("publish");
    assert_eq!(sent as usize, second.len());

    // The survivor alone finishes everything, the killed one's partitions
    // included.
    wait_equal(
        &db.url,
        &expected,
        Duration::from_secs(180),
        Some(&survivor),
    )
    .await;
    let after = received(survivor_port).await;
    eprintln!(
        "the survivor received {after} in all ({} messages published)",
        all.len()
    );
    assert!(
        after > survivor_before,
        "the survivor received nothing after the kill\n{}",
        survivor.log_tail(20)
    );
    let client = db.client().await;
    assert_eq!(count(&client, "ingester_dead_letter").await, 0);
    drop(survivor);
    db.drop_db().await;
    broker.stop().await;
}

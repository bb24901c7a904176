//! Exploratory checks of pulsar-rs against pulsar-lite, run by hand:
//! `cargo test -p pulsar-proxy --test explore -- --ignored --nocapture --test-threads 1`.
//! They print what they observe rather than assert much.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use pulsar::{consumer::InitialPosition, Consumer, ConsumerOptions, SubType, TokioExecutor};
use tokio::time::timeout;

async fn produce(pulsar: &pulsar::Pulsar<TokioExecutor>, topic: &str, n: usize) {
    let mut producer = pulsar
        .producer()
        .with_topic(topic)
        .with_options(pulsar::ProducerOptions {
            // Without this, send_non_blocking fails with SlowDown once the
            // client's outbound queue is full.
            block_queue_if_full: true,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let mut receipts = Vec::new();
    for i in 0..n {
        receipts.push(producer.send_non_blocking(format!("m-{i}")).await.unwrap());
    }
    for r in receipts {
        r.await.unwrap();
    }
}

#[tokio::test]
#[ignore]
async fn direct_without_proxy() {
    let lite = Lite::start("").await;
    let url = format!("pulsar://{}", lite.addr);
    let pulsar = client(&url).await;
    let topic = unique_topic("direct");
    produce(&pulsar, &topic, 5).await;
    println!("produced 5 directly");
    let mut consumer: Consumer<String, _> = pulsar
        .consumer()
        .with_topic(&topic)
        .with_subscription("s")
        .with_subscription_type(SubType::Failover)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await
        .unwrap();
    for _ in 0..6 {
        match timeout(Duration::from_secs(5), consumer.next()).await {
            Ok(Some(Ok(m))) => println!("got {:?}", m.deserialize()),
            Ok(Some(Err(e))) => println!("stream error: {e}"),
            Ok(None) => {
                println!("stream ended");
                break;
            }
            Err(_) => println!("nothing in 5s"),
        }
    }
    lite.stop().await;
}

#[tokio::test]
#[ignore]
async fn basic_via_proxy() {
    let lite = Lite::start("").await;
    let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
    let pulsar = client(&proxy.url()).await;
    let topic = unique_topic("basic");
    println!("lookup: {:?}", pulsar.lookup_topic(&topic).await);
    println!(
        "partitions: {:?}",
        pulsar.lookup_partitioned_topic_number(&topic).await
    );
    produce(&pulsar, &topic, 10).await;
    let mut consumer: Consumer<String, _> = pulsar
        .consumer()
        .with_topic(&topic)
        .with_subscription("s")
        .with_subscription_type(SubType::Failover)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await
        .unwrap();
    for _ in 0..10 {
        match timeout(Duration::from_secs(5), consumer.next()).await {
            Ok(Some(Ok(m))) => {
                println!(
                    "got {:?} id={:?} publish_time={} redelivery? ",
                    m.deserialize(),
                    m.message_id(),
                    m.metadata().publish_time
                );
                consumer.ack(&m).await.unwrap();
            }
            other => println!("{:?}", other.map(|o| o.map(|r| r.map(|_| ())))),
        }
    }
    println!("stats {:?}", proxy.stats());
    println!(
        "{}",
        lite.log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    proxy.shutdown().await;
    lite.stop().await;
}

type C = Consumer<String, TokioExecutor>;

async fn failover(pulsar: &pulsar::Pulsar<TokioExecutor>, topic: &str, sub: &str) -> C {
    pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription(sub)
        .with_subscription_type(SubType::Failover)
        .with_consumer_name("explore")
        .with_options(
            ConsumerOptions::default()
                .with_initial_position(InitialPosition::Earliest)
                .with_receiver_queue_size(1000),
        )
        .build()
        .await
        .unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ack {
    None,
    Individual,
    Cumulative,
    CumulativeEvery100,
    /// Individual acks held back and sent 500 at a time, as a batching
    /// ingester that acks after its database commit would.
    IndividualEvery500,
}

/// Receives until `quiet` passes with nothing new; returns payload indices in
/// arrival order.
async fn drain(c: &mut C, ack: Ack, quiet: Duration, stop_after: usize) -> Vec<usize> {
    let mut got = Vec::new();
    let mut held = Vec::new();
    loop {
        match timeout(quiet, c.next()).await {
            Ok(Some(Ok(m))) => {
                let s = m.deserialize().unwrap();
                got.push(s[2..].parse::<usize>().unwrap());
                match ack {
                    Ack::None => {}
                    Ack::Individual => c.ack(&m).await.unwrap(),
                    Ack::Cumulative => c.cumulative_ack(&m).await.unwrap(),
                    Ack::CumulativeEvery100 => {
                        if got.len() % 100 == 0 {
                            c.cumulative_ack(&m).await.unwrap()
                        }
                    }
                    Ack::IndividualEvery500 => {
                        held.push(m);
                        if held.len() == 500 {
                            for m in held.drain(..) {
                                c.ack(&m).await.unwrap();
                            }
                        }
                    }
                }
                if got.len() >= stop_after {
                    return got;
                }
            }
            Ok(Some(Err(e))) => println!("  stream error: {e}"),
            Ok(None) => {
                println!("  stream ended");
                return got;
            }
            Err(_) if !held.is_empty() => {
                for m in held.drain(..) {
                    c.ack(&m).await.unwrap();
                }
            }
            Err(_) => return got,
        }
    }
}

fn summarize(label: &str, got: &[usize], n: usize) {
    let mut seen = std::collections::HashSet::new();
    let mut dups = 0;
    for i in got {
        if !seen.insert(*i) {
            dups += 1;
        }
    }
    let missing = (0..n).filter(|i| !seen.contains(i)).count();
    let mut out_of_order = 0;
    for w in got.windows(2) {
        if w[1] < w[0] {
            out_of_order += 1;
        }
    }
    println!(
        "{label}: received={} unique={} duplicates={} ({:.2}%) missing={missing} order_breaks={out_of_order}",
        got.len(),
        seen.len(),
        dups,
        100.0 * dups as f64 / n as f64
    );
}

#[tokio::test]
#[ignore]
async fn duplicate_rate_20k() {
    const N: usize = 20_000;
    let lite = Lite::start("").await;
    let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
    let pulsar = client(&proxy.url()).await;
    for ack in [
        Ack::Individual,
        Ack::Cumulative,
        Ack::CumulativeEvery100,
        Ack::IndividualEvery500,
    ] {
        // Pre-produced backlog.
        let topic = unique_topic("dup");
        produce(&pulsar, &topic, N).await;
        let mut c = failover(&pulsar, &topic, "dup").await;
        let t = std::time::Instant::now();
        let got = drain(&mut c, ack, Duration::from_secs(5), usize::MAX).await;
        summarize(&format!("backlog {ack:?} ({:?})", t.elapsed()), &got, N);
        c.close().await.ok();

        // Produced while consuming.
        let topic = unique_topic("duplive");
        let mut c = failover(&pulsar, &topic, "dup").await;
        let p2 = pulsar.clone();
        let t2 = topic.clone();
        let prod = tokio::spawn(async move { produce(&p2, &t2, N).await });
        let got = drain(&mut c, ack, Duration::from_secs(5), usize::MAX).await;
        prod.await.unwrap();
        summarize(&format!("live    {ack:?}"), &got, N);
        c.close().await.ok();
    }
    proxy.shutdown().await;
    lite.stop().await;
}

#[tokio::test]
#[ignore]
async fn duplicate_log_probe() {
    const N: usize = 2_000;
    let lite = Lite::start("").await;
    let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
    let pulsar = client(&proxy.url()).await;
    let topic = unique_topic("duplive");
    let mut c = failover(&pulsar, &topic, "dup").await;
    let p2 = pulsar.clone();
    let t2 = topic.clone();
    let prod = tokio::spawn(async move { produce(&p2, &t2, N).await });
    let got = drain(&mut c, Ack::Individual, Duration::from_secs(3), usize::MAX).await;
    prod.await.unwrap();
    summarize("live Individual", &got, N);
    println!("first dup positions: {:?}", {
        let mut seen = std::collections::HashSet::new();
        got.iter()
            .enumerate()
            .filter(|(_, i)| !seen.insert(**i))
            .take(10)
            .map(|(p, i)| (p, *i))
            .collect::<Vec<_>>()
    });
    println!(
        "sequence[60..200]: {:?}",
        &got[60.min(got.len())..200.min(got.len())]
    );
    println!("stats {:?}", proxy.stats());
    let dispatched: usize = lite
        .log()
        .lines()
        .filter_map(|l| l.split("Failover dispatched ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    println!("pulsar-lite says it dispatched {dispatched} messages");
    proxy.shutdown().await;
    lite.stop().await;
}

/// Consume part of a topic, ack some, close, resubscribe: where does it resume?
#[tokio::test]
#[ignore]
async fn resume_after_resubscribe() {
    const N: usize = 100;
    let lite = Lite::start("").await;
    let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
    let pulsar = client(&proxy.url()).await;
    for (label, ack) in [
        ("no ack", Ack::None),
        ("individual ack of first 50", Ack::Individual),
        ("cumulative ack of #49", Ack::Cumulative),
    ] {
        let topic = unique_topic("resume");
        produce(&pulsar, &topic, N).await;
        let mut c = failover(&pulsar, &topic, "s").await;
        let got = drain(&mut c, ack, Duration::from_secs(2), 50).await;
        c.close().await.ok();
        drop(c);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut c = failover(&pulsar, &topic, "s").await;
        let again = drain(&mut c, Ack::Individual, Duration::from_secs(2), usize::MAX).await;
        println!(
            "{label}: first session got {} (last {:?}); after resubscribe first={:?} count={} unique={}",
            got.len(),
            got.last(),
            again.first(),
            again.len(),
            again.iter().collect::<std::collections::HashSet<_>>().len()
        );
        c.close().await.ok();
    }
    proxy.shutdown().await;
    lite.stop().await;
}

/// Two Failover consumers on one subscription: who gets what, and what
/// happens when the active one goes away.
#[tokio::test]
#[ignore]
async fn failover_two_consumers() {
    const N: usize = 200;
    let lite = Lite::start("").await;
    let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
    let pulsar = client(&proxy.url()).await;
    let topic = unique_topic("fo");
    produce(&pulsar, &topic, N).await;
    let mut a = failover(&pulsar, &topic, "s").await;
    let mut b = failover(&pulsar, &topic, "s").await;
    let ga = drain(&mut a, Ack::Individual, Duration::from_secs(2), 100).await;
    let gb = drain(
        &mut b,
        Ack::Individual,
        Duration::from_millis(500),
        usize::MAX,
    )
    .await;
    println!("a got {} b got {} while both alive", ga.len(), gb.len());
    a.close().await.ok();
    drop(a);
    let gb2 = drain(&mut b, Ack::Individual, Duration::from_secs(3), usize::MAX).await;
    println!(
        "after a closed, b got {} first={:?} last={:?}",
        gb2.len(),
        gb2.first(),
        gb2.last()
    );
    proxy.shutdown().await;
    lite.stop().await;
}

/// What the consumer stream yields when the connection is cut, and whether
/// it recovers (same consumer object), for: a plain cut; a cut while the
/// proxy refuses (ECONNREFUSED) for 3 s; a cut while it hangs up on new
/// connections for 3 s.
#[tokio::test]
#[ignore]
async fn connection_loss() {
    const N: usize = 300;
    init_logging();
    let lite = Lite::start("").await;
    for mode in ["cut", "cut+refuse", "cut+hangup"] {
        let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
        let pulsar = client(&proxy.url()).await;
        let topic = unique_topic("cut");
        produce(&pulsar, &topic, N).await;
        let mut c = failover(&pulsar, &topic, "s").await;
        let mut got = drain(&mut c, Ack::Individual, Duration::from_secs(2), 100).await;

        // Let the acks reach the broker before cutting.
        tokio::time::sleep(Duration::from_secs(1)).await;
        match mode {
            "cut+refuse" => proxy.refuse(true).await.unwrap(),
            "cut+hangup" => proxy.hangup(true),
            _ => {}
        }
        proxy.cut_all();
        let t = std::time::Instant::now();
        let mut events = Vec::new();
        let mut healed = false;
        let mut after_cut_first = None;
        let mut extra: Option<tokio::task::JoinHandle<()>> = None;
        while t.elapsed() < Duration::from_secs(60) {
            if !healed && t.elapsed() > Duration::from_secs(3) {
                proxy.refuse(false).await.unwrap();
                proxy.hangup(false);
                healed = true;
                events.push(format!("{:?} healed", t.elapsed()));
                // More messages after healing show whether the consumer
                // object recovers by itself.
                let (p2, t2) = (client(&proxy.url()).await, topic.clone());
                extra = Some(tokio::spawn(async move {
                    let mut producer = p2.producer().with_topic(&t2).build().await.unwrap();
                    for i in N..N + 100 {
                        producer
                            .send_non_blocking(format!("m-{i}"))
                            .await
                            .unwrap()
                            .await
                            .unwrap();
                    }
                }));
            }
            match timeout(Duration::from_millis(500), c.next()).await {
                Ok(Some(Ok(m))) => {
                    let s = m.deserialize().unwrap();
                    let i: usize = s[2..].parse().unwrap();
                    if i >= N && !events.iter().any(|e| e.contains("first new")) {
                        events.push(format!("{:?} first new message", t.elapsed()));
                    }
                    if got.len() == 100 + 200 && after_cut_first.is_none() {
                        after_cut_first = Some(i);
                    }
                    got.push(i);
                    c.ack(&m).await.ok();
                }
                Ok(Some(Err(e))) => events.push(format!("{:?} Err({e})", t.elapsed())),
                Ok(None) => {
                    events.push(format!("{:?} None (stream ended)", t.elapsed()));
                    break;
                }
                Err(_)
                    if healed
                        && got.iter().collect::<std::collections::HashSet<_>>().len()
                            == N + 100 =>
                {
                    break
                }
                Err(_) => {}
            }
        }
        if let Some(x) = extra {
            x.abort();
        }
        summarize(&format!("{mode}: events={events:?}\n   "), &got, N + 100);
        println!("   message #301 received was m-{after_cut_first:?} (prefetch before cut was m-100..m-299)");
        println!("   proxy: {}", proxy.control("status").await);
        proxy.shutdown().await;
    }
    for l in lite
        .log()
        .lines()
        .filter(|l| l.contains("already exists") || l.contains("WARN") || l.contains("ERROR"))
        .take(10)
    {
        println!("  lite: {l}");
    }
    lite.stop().await;
}

#[tokio::test]
#[ignore]
async fn readers() {
    const N: usize = 100;
    let lite = Lite::start("").await;
    let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
    let pulsar = client(&proxy.url()).await;
    let topic = unique_topic("rd");
    produce(&pulsar, &topic, N).await;

    async fn read_all(
        r: &mut pulsar::reader::Reader<String, TokioExecutor>,
    ) -> Vec<(String, pulsar::proto::MessageIdData, u64)> {
        let mut v = Vec::new();
        while let Ok(Some(Ok(m))) = timeout(Duration::from_secs(2), r.next()).await {
            v.push((
                m.deserialize().unwrap(),
                m.message_id().clone(),
                m.metadata().publish_time,
            ));
        }
        v
    }

    let mut r: pulsar::reader::Reader<String, _> = pulsar
        .reader()
        .with_topic(&topic)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .into_reader()
        .await
        .unwrap();
    let all = read_all(&mut r).await;
    println!(
        "reader Earliest: {} first={:?} last={:?}",
        all.len(),
        all.first().map(|x| &x.0),
        all.last().map(|x| &x.0)
    );
    drop(r);

    let mut r: pulsar::reader::Reader<String, _> = pulsar
        .reader()
        .with_topic(&topic)
        .into_reader()
        .await
        .unwrap();
    let latest = read_all(&mut r).await;
    println!("reader default (Latest): {}", latest.len());
    drop(r);

    let mid = all[50].1.clone();
    let mut r: pulsar::reader::Reader<String, _> = pulsar
        .reader()
        .with_topic(&topic)
        .with_options(ConsumerOptions::default().starting_on_message(mid.clone()))
        .into_reader()
        .await
        .unwrap();
    let from_id = read_all(&mut r).await;
    println!(
        "reader starting_on_message({}:{}): {} first={:?}",
        mid.ledger_id,
        mid.entry_id,
        from_id.len(),
        from_id.first().map(|x| &x.0)
    );

    // seek by publish time on the same reader
    let ts = all[70].2;
    let same_ts = all.iter().filter(|x| x.2 == ts).count();
    let res = r.seek(None, Some(ts)).await;
    let after_seek = read_all(&mut r).await;
    println!(
        "reader.seek(None, Some({ts})) -> {res:?}: {} first={:?} (messages with that exact ts: {same_ts}, first of them {:?})",
        after_seek.len(),
        after_seek.first().map(|x| &x.0),
        all.iter().find(|x| x.2 == ts).map(|x| &x.0)
    );
    let res = r.seek(Some(all[10].1.clone()), None).await;
    let after_seek = read_all(&mut r).await;
    println!(
        "reader.seek(Some(id of m-10), None) -> {res:?}: {} first={:?}",
        after_seek.len(),
        after_seek.first().map(|x| &x.0)
    );

    // consumer seek by time
    let mut c = failover(&pulsar, &topic, "seeker").await;
    let res = c.seek(None, None, Some(ts), pulsar.clone()).await;
    let got = drain(&mut c, Ack::Individual, Duration::from_secs(2), usize::MAX).await;
    println!(
        "consumer.seek(time) -> {res:?}: {} first={:?}",
        got.len(),
        got.first()
    );
    proxy.shutdown().await;
    lite.stop().await;
}

#[tokio::test]
#[ignore]
async fn partitioned_topics() {
    let lite = Lite::start("default_partitions = 3\n").await;
    let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
    let pulsar = client(&proxy.url()).await;
    let topic = unique_topic("part");
    println!(
        "partitions (default_partitions=3): {:?}",
        pulsar.lookup_partitioned_topic_number(&topic).await
    );
    println!(
        "partitioned lookup: {:?}",
        pulsar
            .lookup_partitioned_topic(&topic)
            .await
            .map(|v| v.into_iter().map(|x| x.0).collect::<Vec<_>>())
    );
    produce(&pulsar, &topic, 300).await;
    let mut c = failover(&pulsar, &topic, "s").await;
    let mut got = Vec::new();
    let mut parts = std::collections::BTreeMap::new();
    while let Ok(Some(Ok(m))) = timeout(Duration::from_secs(2), c.next()).await {
        *parts
            .entry((m.topic.clone(), m.message_id().partition))
            .or_insert(0) += 1;
        got.push(m.deserialize().unwrap());
        c.ack(&m).await.unwrap();
    }
    println!("consumed {} by (topic, partition): {parts:?}", got.len());
    proxy.shutdown().await;
    lite.stop().await;
}

/// Stall longer than pulsar-lite's keep-alive + liveness timeouts (set to
/// 2 s + 2 s here), then resume.
#[tokio::test]
#[ignore]
async fn long_stall() {
    const N: usize = 300;
    init_logging();
    let lite =
        Lite::start("keep_alive_interval_secs = 2\nconnection_liveness_check_timeout_secs = 2\n")
            .await;
    let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
    let pulsar = client(&proxy.url()).await;
    let topic = unique_topic("stall");
    produce(&pulsar, &topic, N).await;
    let mut c = failover(&pulsar, &topic, "s").await;
    let mut got = drain(&mut c, Ack::Individual, Duration::from_secs(2), 100).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.stall(true);
    let t = std::time::Instant::now();
    let mut events = Vec::new();
    let mut resumed = false;
    while t.elapsed() < Duration::from_secs(40) {
        if !resumed && t.elapsed() > Duration::from_secs(8) {
            proxy.stall(false);
            resumed = true;
            events.push(format!(
                "{:?} resumed, {}",
                t.elapsed(),
                proxy.control("status").await
            ));
        }
        match timeout(Duration::from_millis(500), c.next()).await {
            Ok(Some(Ok(m))) => {
                let s = m.deserialize().unwrap();
                got.push(s[2..].parse().unwrap());
                c.ack(&m).await.ok();
            }
            Ok(Some(Err(e))) => events.push(format!("{:?} Err({e})", t.elapsed())),
            Ok(None) => {
                events.push(format!("{:?} None", t.elapsed()));
                break;
            }
            Err(_) if resumed && t.elapsed() > Duration::from_secs(20) => break,
            Err(_) => {}
        }
    }
    summarize(&format!("long stall: events={events:?}\n   "), &got, N);
    println!("   proxy: {}", proxy.control("status").await);
    for l in lite
        .log()
        .lines()
        .filter(|l| {
            l.contains("already exists")
                || l.contains("WARN")
                || l.contains("ERROR")
                || l.contains("liveness")
                || l.contains("Closing")
        })
        .take(12)
    {
        println!("  lite: {l}");
    }
    proxy.shutdown().await;
    lite.stop().await;
}

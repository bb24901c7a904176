//! pulsar-rs ↔ proxy ↔ pulsar-lite, end to end. Needs pulsar-lite
//! (`$PULSAR_LITE_BIN` or on PATH); everything stays on loopback.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use pulsar::{
    consumer::InitialPosition, reader::Reader, Consumer, ConsumerOptions, ProducerOptions, SubType,
    TokioExecutor,
};
use tokio::time::timeout;

async fn produce(
    pulsar: &pulsar::Pulsar<TokioExecutor>,
    topic: &str,
    range: std::ops::Range<usize>,
) {
    produce_with(pulsar, topic, range, ProducerOptions::default()).await
}

/// [`produce`] with these producer options (batching, say).
async fn produce_with(
    pulsar: &pulsar::Pulsar<TokioExecutor>,
    topic: &str,
    range: std::ops::Range<usize>,
    options: ProducerOptions,
) {
    let mut producer = pulsar
        .producer()
        .with_topic(topic)
        .with_options(ProducerOptions {
            // Otherwise send_non_blocking fails with SlowDown when the
            // client's outbound queue fills up.
            block_queue_if_full: true,
            ..options
        })
        .build()
        .await
        .expect("producer");
    let mut receipts = Vec::new();
    for i in range {
        receipts.push(
            producer
                .send_non_blocking(format!("m-{i}"))
                .await
                .expect("send"),
        );
    }
    for r in receipts {
        r.await.expect("receipt");
    }
    producer.close().await.ok();
}

async fn failover_consumer(
    pulsar: &pulsar::Pulsar<TokioExecutor>,
    topic: &str,
) -> Consumer<String, TokioExecutor> {
    pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription("e2e")
        .with_subscription_type(SubType::Failover)
        .with_consumer_name("e2e")
        .with_options(
            ConsumerOptions::default()
                .with_initial_position(InitialPosition::Earliest)
                .with_receiver_queue_size(500),
        )
        .build()
        .await
        .expect("consumer")
}

fn index(payload: &str) -> usize {
    payload
        .strip_prefix("m-")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected payload {payload:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_2000_with_failover() {
    const N: usize = 2_000;
    init_logging();
    let lite = Lite::start("").await;
    let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
    timeout(Duration::from_secs(120), async {
        let pulsar = client(&proxy.url()).await;
        let topic = unique_topic("e2e-failover");
        produce(&pulsar, &topic, 0..N).await;

        let mut consumer = failover_consumer(&pulsar, &topic).await;
        let mut seen = HashSet::new();
        let mut received = 0;
        while seen.len() < N {
            let msg = timeout(Duration::from_secs(20), consumer.next())
                .await
                .expect("no message for 20 s")
                .expect("consumer stream ended")
                .expect("consumer error");
            let id = msg.message_id();
            assert_eq!(id.partition, Some(-1), "non-partitioned topic");
            assert!(msg.metadata().publish_time > 0);
            seen.insert(index(&msg.deserialize().unwrap()));
            received += 1;
            consumer.ack(&msg).await.expect("ack");
        }
        assert_eq!(seen, (0..N).collect::<HashSet<_>>());
        println!(
            "received {received} for {N} distinct ({} duplicates)",
            received - N
        );
        consumer.close().await.ok();
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; pulsar-lite log:\n{}", lite.log()));

    let stats = proxy.stats();
    assert!(stats.checksums_added >= N as u64, "{stats:?}");
    assert!(stats.urls_rewritten >= 1, "{stats:?}");
    assert_eq!(stats.malformed, 0);
    proxy.shutdown().await;
    lite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_from_earliest_and_from_message_id() {
    const N: usize = 200;
    init_logging();
    let lite = Lite::start("").await;
    let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
    timeout(Duration::from_secs(60), async {
        let pulsar = client(&proxy.url()).await;
        let topic = unique_topic("e2e-reader");
        produce(&pulsar, &topic, 0..N).await;

        let mut reader: Reader<String, _> = pulsar
            .reader()
            .with_topic(&topic)
            .with_options(
                ConsumerOptions::default().with_initial_position(InitialPosition::Earliest),
            )
            .into_reader()
            .await
            .expect("reader");
        let mut order = Vec::new();
        let mut ids = Vec::new();
        while order.len() < N {
            let msg = timeout(Duration::from_secs(20), reader.next())
                .await
                .expect("no message for 20 s")
                .expect("reader stream ended")
                .expect("reader error");
            order.push(index(&msg.deserialize().unwrap()));
            ids.push(msg.message_id().clone());
        }
        assert_eq!(
            order,
            (0..N).collect::<Vec<_>>(),
            "reader sees the topic in order"
        );
        drop(reader);

        // pulsar-lite treats the start id as inclusive.
        let mut reader: Reader<String, _> = pulsar
            .reader()
            .with_topic(&topic)
            .with_options(ConsumerOptions::default().starting_on_message(ids[150].clone()))
            .into_reader()
            .await
            .expect("reader");
        let first = timeout(Duration::from_secs(20), reader.next())
            .await
            .expect("no message for 20 s")
            .expect("reader stream ended")
            .expect("reader error");
        assert_eq!(index(&first.deserialize().unwrap()), 150);
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; pulsar-lite log:\n{}", lite.log()));
    proxy.shutdown().await;
    lite.stop().await;
}

/// A cut while the proxy refuses connections: pulsar-rs retries the
/// ECONNREFUSED, and the same consumer object carries on once the proxy
/// accepts again, with unacked messages redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_survives_cut_and_refused_reconnects() {
    const N: usize = 300;
    init_logging();
    let lite = Lite::start("").await;
    let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
    timeout(Duration::from_secs(90), async {
        let pulsar = client(&proxy.url()).await;
        let topic = unique_topic("e2e-cut");
        produce(&pulsar, &topic, 0..N).await;
        let mut consumer = failover_consumer(&pulsar, &topic).await;
        let mut seen = HashSet::new();
        while seen.len() < 50 {
            let msg = consumer.next().await.expect("ended").expect("error");
            seen.insert(index(&msg.deserialize().unwrap()));
            consumer.ack(&msg).await.expect("ack");
        }

        proxy.refuse(true).await.expect("refuse");
        proxy.cut_all();
        proxy.wait_connections(|n| n == 0).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.refuse(false).await.expect("accept");

        // New messages after the outage, produced through the proxy too.
        produce(&pulsar, &topic, N..N + 50).await;
        while seen.len() < N + 50 {
            let msg = timeout(Duration::from_secs(30), consumer.next())
                .await
                .expect("no message for 30 s after the outage")
                .expect("consumer stream ended")
                .expect("consumer error");
            seen.insert(index(&msg.deserialize().unwrap()));
            // Acks sent while disconnected are lost; that only causes
            // redelivery.
            let _ = consumer.ack(&msg).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; pulsar-lite log:\n{}", lite.log()));
    assert_eq!(proxy.stats().cut, 1);
    proxy.shutdown().await;
    lite.stop().await;
}

/// pulsar-lite counts a batched entry as one permit; through the proxy a
/// consumer gets what Pulsar's dispatcher would send: with 10 permits and
/// entries of 50, pulsar-lite pushes ten entries or more (20 seen), the
/// proxy lets one read of ten entries go and holds the rest, and reading
/// on releases them in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_entries_wait_in_the_proxy_for_permits() {
    const ENTRIES: usize = 40;
    const PER_ENTRY: usize = 50;
    init_logging();
    let lite = Lite::start("").await;
    let proxy = pulsar_proxy::start(loopback0(), lite.addr).await.unwrap();
    timeout(Duration::from_secs(120), async {
        let pulsar = client(&proxy.url()).await;
        let topic = unique_topic("e2e-permits");
        produce_with(
            &pulsar,
            &topic,
            0..ENTRIES * PER_ENTRY,
            ProducerOptions {
                batch_size: Some(PER_ENTRY as u32),
                batch_timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .await;
        let mut consumer: Consumer<String, TokioExecutor> = pulsar
            .consumer()
            .with_topic(&topic)
            .with_subscription("permits")
            .with_subscription_type(SubType::Failover)
            .with_batch_size(10)
            .with_options(
                ConsumerOptions::default().with_initial_position(InitialPosition::Earliest),
            )
            .build()
            .await
            .expect("consumer");
        // One message read: pulsar-rs asked for 10 messages, the proxy let
        // one read (10 entries, 500 messages) go and holds the rest; the
        // client's queue is full, so it asks for no more.
        let first = next_within_20s(&mut consumer).await;
        assert_eq!(first.deserialize().unwrap(), "m-0");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while proxy.stats().held == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the proxy holds {} entries",
                proxy.stats().held
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        consumer.ack(&first).await.expect("ack");
        let mut next = 1;
        while next < ENTRIES * PER_ENTRY {
            let msg = next_within_20s(&mut consumer).await;
            let i = index(&msg.deserialize().unwrap());
            // pulsar-lite may deliver again; never skip ahead.
            assert!(i <= next, "m-{i} before m-{next}");
            if i == next {
                next += 1;
            }
            consumer.ack(&msg).await.expect("ack");
        }
        assert_eq!(proxy.stats().held, 0);
        consumer.close().await.ok();
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; pulsar-lite log:\n{}", lite.log()));
    proxy.shutdown().await;
    lite.stop().await;
}

/// The consumer's next message; fails the test after 20 s without one.
async fn next_within_20s(
    consumer: &mut Consumer<String, TokioExecutor>,
) -> pulsar::consumer::Message<String> {
    timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("no message for 20 s")
        .expect("stream ended")
        .expect("consumer error")
}

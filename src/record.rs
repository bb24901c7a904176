//! `record` and `publish`: move event messages between a topic and the
//! recorded-file format, without touching any subscription.
//!
//! `record` reads with a non-durable Pulsar reader from the earliest message
//! (optionally skipping those published before a given time) until the topic
//! has been idle for a while or enough messages were read. Events without a
//! `created` time get the message's publish time, as live ingestion would
//! give them, so replaying the file writes what live mode writes.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use prost::Message as _;
use prost_types::Timestamp;
use pulsar::consumer::{ConsumerOptions, InitialPosition};
use pulsar::producer::SendFuture;

use crate::config::PulsarConfig;
use crate::proto::armadaevents::EventSequence;
use crate::source::file::{self, RecordWriter};
use crate::source::pulsar::{client, publish_timestamp, qualify_topic, target, topic_exists};

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// Skip messages published before this time (milliseconds since the epoch).
    pub since_ms: Option<u64>,
    /// Stop after the topic has been quiet this long.
    pub idle: Duration,
    /// Stop after this many messages.
    pub max_messages: Option<u64>,
    pub gzip: bool,
    /// Replace an existing output file (otherwise it is refused).
    pub force: bool,
}

/// Counts of a recording.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    pub messages: u64,
    pub skipped_before_since: u64,
    pub created_filled: u64,
    pub undecodable_kept_raw: u64,
}

impl Recorded {
    /// The line `record` prints at the end.
    pub fn summary(&self, topic: &str, out: &Path) -> String {
        format!(
            "recorded {} messages from {} to {} ({} events given their publish time as created, {} undecodable kept raw, {} before --since skipped)",
            self.messages,
            topic,
            out.display(),
            self.created_filled,
            self.undecodable_kept_raw,
            self.skipped_before_since
        )
    }
}

/// Fills missing `created` times with `publish` and re-encodes. A payload
/// that does not decode is returned unchanged (replay reports it).
pub fn fill_created(payload: Vec<u8>, publish: Timestamp) -> (Vec<u8>, u64, bool) {
    let Ok(mut seq) = EventSequence::decode(payload.as_slice()) else {
        return (payload, 0, false);
    };
    let mut filled = 0;
    for e in &mut seq.events {
        if e.created.is_none() {
            e.created = Some(publish);
            filled += 1;
        }
    }
    if filled == 0 {
        return (payload, 0, true);
    }
    (seq.encode_to_vec(), filled, true)
}

/// The temporary file `record` writes before renaming it to `out`: in
/// `out`'s directory, so the rename stays on one file system.
fn temporary_path(out: &Path) -> std::path::PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "recording".into());
    out.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// Removes the temporary file unless the recording was completed.
struct Partial {
    path: std::path::PathBuf,
    done: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Records the topic into `out`. The messages go to a temporary file next to
/// `out`, renamed to `out` once complete, so a failed or interrupted
/// recording never leaves a truncated file, and an existing `out` is kept
/// unless `opts.force`. A topic that does not exist is an error, found out
/// before reading where the broker lists its namespace's topics (a reader
/// would create it); a recording of no messages is an error too, and writes
/// nothing.
pub async fn record(
    cfg: &PulsarConfig,
    out: &Path,
    opts: &RecordOptions,
) -> anyhow::Result<Recorded> {
    if !opts.force && out.exists() {
        anyhow::bail!(
            "{} exists; choose another --out or pass --force to replace it",
            out.display()
        );
    }
    let pulsar = client(cfg).await?;
    let exists = topic_exists(&pulsar, &cfg.topic).await;
    if exists == Some(false) {
        anyhow::bail!(
            "topic {} does not exist on {} (not created; check the name)",
            qualify_topic(&cfg.topic).0,
            target(&cfg.url)
        );
    }
    let mut reader = pulsar
        .reader()
        .with_topic(cfg.topic.clone())
        .with_consumer_name(format!("lookout-ingester-record-{}", std::process::id()))
        .with_options(
            ConsumerOptions::default()
                .with_initial_position(InitialPosition::Earliest)
                .durable(false),
        )
        .into_reader::<Vec<u8>>()
        .await?;
    let mut partial = Partial {
        path: temporary_path(out),
        done: false,
    };
    let mut w = RecordWriter::create(&partial.path, opts.gzip)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", partial.path.display()))?;
    let mut r = Recorded::default();
    loop {
        if opts.max_messages.is_some_and(|m| r.messages >= m) {
            break;
        }
        let next = match tokio::time::timeout(opts.idle, reader.next()).await {
            Err(_) => break, // idle
            Ok(None) => break,
            Ok(Some(Err(e))) => anyhow::bail!(
                "reading {} failed after {} messages: {e}",
                cfg.topic,
                r.messages
            ),
            Ok(Some(Ok(m))) => m,
        };
        let ms = next.metadata().publish_time;
        if opts.since_ms.is_some_and(|s| ms < s) {
            r.skipped_before_since += 1;
            continue;
        }
        let publish = publish_timestamp(ms);
        let (payload, filled, decoded) = fill_created(next.payload.data, publish);
        r.created_filled += filled;
        if !decoded {
            r.undecodable_kept_raw += 1;
        }
        w.write_record(&payload)?;
        r.messages += 1;
    }
    w.finish()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", partial.path.display()))?;
    if r.messages == 0 {
        let topic = qualify_topic(&cfg.topic).0;
        let since = if r.skipped_before_since > 0 {
            " after --since"
        } else {
            ""
        };
        let why = if exists.is_some() {
            format!(
                "topic {topic} exists but had no messages{since} within --idle {:?}",
                opts.idle
            )
        } else {
            // The Pulsar protocol has no other way to ask without creating
            // (a lookup or partition-metadata request answers alike for a
            // topic that does not exist); a misspelled name is the likely cause.
            format!(
                "no messages on topic {topic}{since} within --idle {:?}; {} did not list the \
                 topics of its namespace, so whether {topic} existed could not be checked: \
                 it is empty, or it did not exist and the broker created it when it was \
                 read (check the name)",
                opts.idle,
                target(&cfg.url)
            )
        };
        anyhow::bail!("{why}; {} not written", out.display());
    }
    if !opts.force && out.exists() {
        anyhow::bail!(
            "{} appeared while recording; kept it (pass --force to replace it)",
            out.display()
        );
    }
    std::fs::rename(&partial.path, out).map_err(|e| {
        anyhow::anyhow!(
            "cannot rename {} to {}: {e}",
            partial.path.display(),
            out.display()
        )
    })?;
    partial.done = true;
    Ok(r)
}

/// How many messages `publish` puts in one broker entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    /// One message per entry (no producer batching).
    Single,
    /// As Armada's server and scheduler publish (upstream 207cc9e04): the
    /// Pulsar client's batching with up to this many messages, 4 MiB
    /// (their `maxAllowedMessageSize`) or 10 ms (the Go client's default
    /// delay) per entry, zlib at its fastest level. The Go client's default
    /// count is 1,000.
    Batched(u32),
}

impl Entries {
    /// `n` messages per entry: 0 and 1 mean one.
    pub fn of(n: u32) -> Entries {
        if n > 1 {
            Entries::Batched(n)
        } else {
            Entries::Single
        }
    }

    /// Messages per entry at most (1 unbatched).
    pub fn per_entry(self) -> u32 {
        match self {
            Entries::Single => 1,
            Entries::Batched(n) => n,
        }
    }

    /// The producer's options for this (and keyed routing).
    pub fn producer_options(self) -> pulsar::producer::ProducerOptions {
        use pulsar::compression::{Compression, CompressionZlib};
        let routing_policy = Some(pulsar::routing_policy::RoutingPolicy::RoundRobin);
        match self {
            Entries::Single => pulsar::producer::ProducerOptions {
                routing_policy,
                ..Default::default()
            },
            Entries::Batched(n) => pulsar::producer::ProducerOptions {
                batch_size: Some(n),
                batch_byte_size: Some(ARMADA_BATCH_BYTES),
                batch_timeout: Some(ARMADA_BATCH_DELAY),
                compression: Some(Compression::Zlib(CompressionZlib {
                    level: flate2::Compression::fast(),
                })),
                routing_policy,
                ..Default::default()
            },
        }
    }

    /// Sends awaiting receipts at most: a batch's receipts arrive together
    /// once the whole entry is stored, so the window holds many batches'
    /// worth, or the producer would wait for the delay of every entry.
    pub fn window(self) -> usize {
        match self {
            Entries::Single => MAX_PENDING_SENDS,
            Entries::Batched(n) => MAX_PENDING_SENDS.saturating_mul(n as usize),
        }
    }

    /// Payload bytes awaiting receipts at most: two full entries when
    /// batched.
    fn window_bytes(self) -> usize {
        match self {
            Entries::Single => MAX_PENDING_BYTES,
            Entries::Batched(_) => 2 * ARMADA_BATCH_BYTES,
        }
    }
}

const ARMADA_BATCH_BYTES: usize = 4 * 1024 * 1024;
const ARMADA_BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// Publishes every record of `files` as one message each, in order. The
/// files are read as they are sent (one record and the producer's queue in
/// memory, not whole files); a file that cannot be read stops it with the
/// records before it sent.
pub async fn publish(
    cfg: &PulsarConfig,
    files: &[std::path::PathBuf],
    entries: Entries,
) -> anyhow::Result<u64> {
    // Every file is opened first: a missing one sends nothing.
    let mut readers = Vec::with_capacity(files.len());
    for path in files {
        let reader = file::open(path, Default::default())
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        readers.push((path, reader));
    }
    let records = readers.into_iter().flat_map(|(path, mut reader)| {
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed {
                return None;
            }
            match reader.next_record() {
                Ok(Some(rec)) => Some(Ok(rec)),
                Ok(None) => None,
                Err(e) => {
                    failed = true;
                    Some(Err(anyhow::anyhow!("{}: {e}", path.display())))
                }
            }
        })
    });
    publish_stream(cfg, records, entries).await
}

/// Publishes payloads as one message each, in order, waiting for every receipt.
pub async fn publish_payloads(
    cfg: &PulsarConfig,
    payloads: impl IntoIterator<Item = Vec<u8>>,
) -> anyhow::Result<u64> {
    publish_stream(cfg, payloads.into_iter().map(Ok), Entries::Single).await
}

/// Sends awaiting the broker's receipt at most: pulsar-rs refuses
/// (SlowDown) past its 100-message outbound queue.
const MAX_PENDING_SENDS: usize = 64;
/// Payload bytes awaiting receipts at most. Each one is held by the client
/// (and copied into its frame buffer) until its receipt arrives, so this,
/// not the file's size, bounds publish's memory.
const MAX_PENDING_BYTES: usize = 2 * 1024 * 1024;

/// Whether a send of `len` bytes must wait while `pending` sends of `bytes`
/// bytes await receipts, at most `max` sends and `max_bytes` bytes. An
/// empty window always takes one, however large.
fn must_wait(pending: usize, bytes: usize, len: usize, (max, max_bytes): (usize, usize)) -> bool {
    pending > 0 && (pending >= max || bytes.saturating_add(len) > max_bytes)
}

/// Sends in flight, oldest first, and their payload bytes.
struct Window {
    sends: std::collections::VecDeque<(SendFuture, usize)>,
    bytes: usize,
    limits: (usize, usize),
}

impl Window {
    fn new(entries: Entries) -> Window {
        Window {
            sends: Default::default(),
            bytes: 0,
            limits: (entries.window(), entries.window_bytes()),
        }
    }

    /// Whether a send of `len` bytes must wait for the oldest receipt.
    fn full_for(&self, len: usize) -> bool {
        must_wait(self.sends.len(), self.bytes, len, self.limits)
    }

    /// Awaits the oldest receipt.
    async fn settle_oldest(&mut self) -> anyhow::Result<()> {
        if let Some((f, len)) = self.sends.pop_front() {
            self.bytes -= len;
            f.await?;
        }
        Ok(())
    }
}

/// The part of an EventSequence that names its job set (other fields are
/// skipped undecoded).
#[derive(Clone, PartialEq, prost::Message)]
struct JobSetOnly {
    #[prost(bytes = "vec", tag = "2")]
    job_set_name: Vec<u8>,
}

/// A message as Armada's publisher makes it: keyed by its job set, so on a
/// partitioned topic all of a job set's events (and so each job's) land on
/// one partition, in order. A payload that does not decode goes unkeyed.
fn keyed(payload: Vec<u8>) -> pulsar::producer::Message {
    let key = JobSetOnly::decode(payload.as_slice())
        .ok()
        .map(|k| String::from_utf8_lossy(&k.job_set_name).into_owned());
    pulsar::producer::Message {
        payload,
        partition_key: key,
        ..Default::default()
    }
}

/// Publishes payloads as they come; the first error stops it once what was
/// sent before it is confirmed.
async fn publish_stream(
    cfg: &PulsarConfig,
    payloads: impl Iterator<Item = anyhow::Result<Vec<u8>>>,
    entries: Entries,
) -> anyhow::Result<u64> {
    let pulsar = client(cfg).await?;
    let mut producer = pulsar
        .producer()
        .with_topic(cfg.topic.clone())
        // Routes a keyed message by its key's hash (round robin otherwise).
        .with_options(entries.producer_options())
        .build()
        .await?;
    let mut sent = 0u64;
    let mut window = Window::new(entries);
    let mut failure = None;
    for rec in payloads {
        let rec = match rec {
            Ok(rec) => rec,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let len = rec.len();
        while window.full_for(len) {
            window.settle_oldest().await?;
        }
        window
            .sends
            .push_back((producer.send_non_blocking(keyed(rec)).await?, len));
        window.bytes += len;
        sent += 1;
    }
    while !window.sends.is_empty() {
        window.settle_oldest().await?;
    }
    let _ = producer.close().await;
    match failure {
        Some(e) => Err(e.context(format!("after {sent} messages published"))),
        None => Ok(sent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample;

    #[test]
    fn the_send_window_is_bounded_by_count_and_bytes() {
        let mib = 1024 * 1024;
        let single = (Entries::Single.window(), Entries::Single.window_bytes());
        assert!(
            !must_wait(0, 0, 100 * mib, single),
            "an empty window takes any record"
        );
        assert!(!must_wait(1, mib, mib, single));
        assert!(must_wait(1, mib, mib + 1, single));
        assert!(!must_wait(MAX_PENDING_SENDS - 1, 0, 10, single));
        assert!(must_wait(MAX_PENDING_SENDS, 0, 10, single));
        // Batched, the window holds many entries' messages, still bounded
        // by bytes.
        let batched = Entries::of(1000);
        let limits = (batched.window(), batched.window_bytes());
        assert!(!must_wait(1000, 0, 10, limits));
        assert!(must_wait(64_000, 0, 10, limits));
        assert!(must_wait(1, 8 * mib, 1, limits));
        assert_eq!(Entries::of(1), Entries::Single);
        assert_eq!(Entries::of(0), Entries::Single);
    }

    #[test]
    fn messages_are_keyed_by_their_job_set() {
        let seq = sample::sequence("q", "set-7", "u", vec![]);
        let m = keyed(seq.encode_to_vec());
        assert_eq!(m.partition_key.as_deref(), Some("set-7"));
        assert_eq!(m.payload, seq.encode_to_vec());
        assert_eq!(keyed(vec![0xff, 0xff]).partition_key, None);
    }

    #[test]
    fn fills_only_missing_created() {
        let seq = sample::sequence(
            "q",
            "js",
            "u",
            vec![
                sample::event(None, sample::job_succeeded("a")),
                sample::event(Some(sample::ts(5)), sample::job_succeeded("b")),
            ],
        );
        let (bytes, filled, ok) = fill_created(seq.encode_to_vec(), sample::ts(9));
        assert!(ok);
        assert_eq!(filled, 1);
        let back = EventSequence::decode(bytes.as_slice()).expect("decode");
        assert_eq!(back.events[0].created, Some(sample::ts(9)));
        assert_eq!(back.events[1].created, Some(sample::ts(5)));
        let garbage = vec![0xff, 0xff];
        assert_eq!(
            fill_created(garbage.clone(), sample::ts(1)),
            (garbage, 0, false)
        );
    }
}

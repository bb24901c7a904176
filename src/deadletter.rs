//! Dead letters: every input the ingester could not apply, kept byte for
//! byte with its source and the reason, in `ingester_dead_letter` (created
//! by the ingester's own migration). When Postgres refuses even that, the
//! dead letter goes to a local append-only spool file first, which is
//! flushed into the table later. Only after one of the two holds it is the
//! message acknowledged.
//!
//! One row per failed message: all of its problems are kept as one typed
//! list of [`Reason`]s, joined with commas only in the table's `reason`
//! column (and the spool's `reason` field), and one error text. A
//! fingerprint of source and payload keeps a redelivered message from being
//! stored twice.
//!
//! Sending dead letters through the pipeline again is the *redrive*
//! (`pipeline::redrive`; the CLI verb is `dead-letters retry`, and the
//! `retries` column counts redrives). It lives in the pipeline because it
//! judges by the pipeline's rules; this module does not import the pipeline.

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;

use crate::{convert, metrics};

/// Why a message is a dead letter (the `reason` metric label and, joined, the
/// `reason` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A problem that kept (part of) the message from being applied.
    Input(convert::Reason),
    /// A row it asked for failed even when written on its own.
    RowFailed,
    /// It updates a job that does not exist (yet).
    UnknownJob,
    /// It updates a run that does not exist (yet).
    UnknownRun,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Input(r) => r.as_str(),
            Reason::RowFailed => "row_failed",
            Reason::UnknownJob => "unknown_job",
            Reason::UnknownRun => "unknown_run",
        }
    }

    /// Every reason, for pre-creating the `reason` label values.
    pub fn all() -> impl Iterator<Item = Reason> {
        convert::Reason::ALL.into_iter().map(Reason::Input).chain([
            Reason::RowFailed,
            Reason::UnknownJob,
            Reason::UnknownRun,
        ])
    }

    fn parse(s: &str) -> Option<Reason> {
        Reason::all().find(|r| r.as_str() == s)
    }
}

/// The reasons of one dead letter: each once, in the order of their text,
/// so the joined column text does not depend on the order they were found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reasons(Vec<Reason>);

impl Reasons {
    pub fn iter(&self) -> impl Iterator<Item = Reason> + '_ {
        self.0.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads the column's text back; `None` if any part is not a reason.
    pub fn parse(text: &str) -> Option<Reasons> {
        text.split(',')
            .map(Reason::parse)
            .collect::<Option<Vec<_>>>()
            .map(Reasons::from_iter)
    }
}

impl FromIterator<Reason> for Reasons {
    fn from_iter<I: IntoIterator<Item = Reason>>(iter: I) -> Self {
        let mut v: Vec<Reason> = iter.into_iter().collect();
        v.sort_by_key(|r| r.as_str());
        v.dedup();
        Reasons(v)
    }
}

/// The `reason` column's text: the reasons joined with commas.
impl std::fmt::Display for Reasons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(r.as_str())?;
        }
        Ok(())
    }
}

/// In the spool, reasons are the column's text, so old spool files read.
impl Serialize for Reasons {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reasons {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Reasons::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown reason in {text:?}")))
    }
}

/// An input that could not be applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where it came from, e.g. `events message 12:7:-1:-1` or `f.bin record 3`.
    pub source: String,
    /// Failure classes (decode, empty_queue, row_failed, ...); stored
    /// comma-separated under `reason`.
    #[serde(rename = "reason")]
    pub reasons: Reasons,
    /// What went wrong, for a person.
    pub error: String,
    /// The message exactly as received.
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
    /// The broker's publish time (stands in for a missing event time).
    pub publish_time: Option<DateTime<Utc>>,
    /// The indexes of the events that were not applied, ascending: the
    /// ones `dead-letters retry` applies, in this order. `None` means every
    /// event (a payload that is not a sequence, a sequence whose header is
    /// refused, and spool lines and rows written before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unapplied_events: Option<Vec<usize>>,
}

/// Event indexes as the `unapplied_events` column (`integer[]`) holds them.
fn to_column(events: &Option<Vec<usize>>) -> Option<Vec<i32>> {
    events.as_ref().map(|v| {
        v.iter()
            .map(|&i| i32::try_from(i).unwrap_or(i32::MAX))
            .collect()
    })
}

/// The column's indexes back; a negative one (not written by the
/// ingester) is left out.
pub fn from_column(events: Option<Vec<i32>>) -> Option<Vec<usize>> {
    events.map(|v| {
        v.into_iter()
            .filter_map(|i| usize::try_from(i).ok())
            .collect()
    })
}

/// A dead letter as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stored {
    pub id: i64,
    pub source: String,
    pub reason: String,
    pub error: String,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub payload_bytes: usize,
    pub publish_time: Option<DateTime<Utc>>,
    pub created: DateTime<Utc>,
    pub retries: i32,
    pub last_retry: Option<DateTime<Utc>>,
    /// See [`DeadLetter::unapplied_events`]; `None` is every event.
    pub unapplied_events: Option<Vec<usize>>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(b.len() * 2);
        for byte in b {
            out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::unhex(&s).ok_or_else(|| serde::de::Error::custom("payload is not hex"))
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

const INSERT: &str = "
    INSERT INTO ingester_dead_letter (source, reason, error, payload, publish_time, unapplied_events, fingerprint)
    VALUES ($1, $2, $3, $4, $5, $6, md5($1::text || ':' || md5($4::bytea)))
    ON CONFLICT (fingerprint) DO UPDATE
        SET reason = EXCLUDED.reason, error = EXCLUDED.error,
            unapplied_events = EXCLUDED.unapplied_events";

/// Inserts sent ahead of their replies, by count and by bytes: bounds the
/// encoded statements held at once (a payload may be megabytes) while
/// hiding the round trips.
const PIPELINE_INSERTS: usize = 64;
const PIPELINE_BYTES: usize = 4 << 20;

/// Splits `items` into runs to pipeline: at most [`PIPELINE_INSERTS`], and
/// no more than [`PIPELINE_BYTES`] of payload and text unless one alone is.
fn pipeline_chunks(items: &[DeadLetter]) -> impl Iterator<Item = &[DeadLetter]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        for d in rest.iter().take(PIPELINE_INSERTS) {
            bytes += d.payload.len() + d.error.len() + d.source.len();
            if n > 0 && bytes > PIPELINE_BYTES {
                break;
            }
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// Where dead letters go.
pub struct DeadLetters {
    pool: Pool,
    spool: PathBuf,
    /// Serialises spool appends and flushes.
    lock: Mutex<()>,
    /// The spool may hold dead letters not yet in the table.
    pending: AtomicBool,
}

impl DeadLetters {
    pub fn new(pool: Pool, spool: PathBuf) -> Arc<DeadLetters> {
        // Something left by an earlier process is flushed at the first chance.
        let pending = std::fs::metadata(&spool)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        Arc::new(DeadLetters {
            pool,
            spool,
            lock: Mutex::new(()),
            pending: AtomicBool::new(pending),
        })
    }

    /// Flushes the spool if it may hold anything; cheap otherwise. Called
    /// after every batch and periodically by `run`, so dead letters spooled
    /// during an outage reach the table once Postgres is back.
    pub async fn flush_if_pending(&self) {
        if !self.pending.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.flush_spool().await {
            tracing::warn!(
                "dead-letter spool {} not flushed yet: {e:#}",
                self.spool.display()
            );
        }
    }

    pub fn spool_path(&self) -> &std::path::Path {
        &self.spool
    }

    /// Stores `items` in the table, or, if Postgres refuses, in the spool.
    /// An error means neither worked: the caller must not acknowledge.
    /// (The caller counts and logs them, see `telemetry::dead_letter_kept`.)
    pub async fn record(&self, items: &[DeadLetter]) -> anyhow::Result<()> {
        if items.is_empty() {
            self.flush_if_pending().await;
            return Ok(());
        }
        match self.insert(items).await {
            Ok(()) => {
                // The table works again: move anything spooled earlier into it.
                self.flush_if_pending().await;
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    "cannot store {} dead letter(s) in ingester_dead_letter ({e:#}); appending them to {}",
                    items.len(),
                    self.spool.display()
                );
                self.append_spool(items).await
            }
        }
    }

    async fn insert(&self, items: &[DeadLetter]) -> anyhow::Result<()> {
        let mut client = self.pool.get().await.context("connecting")?;
        let tx = client.transaction().await?;
        let stmt = tx.prepare(INSERT).await?;
        // Pipelined: a chunk's statements are sent before their replies are
        // read. One at a time, a batch of poison messages was written at the
        // pace of one round trip each (100,000 took 25 s).
        for chunk in pipeline_chunks(items) {
            let columns: Vec<(String, Option<Vec<i32>>)> = chunk
                .iter()
                .map(|d| (d.reasons.to_string(), to_column(&d.unapplied_events)))
                .collect();
            let params: Vec<[&(dyn ToSql + Sync); 6]> = chunk
                .iter()
                .zip(&columns)
                .map(|(d, (reason, unapplied))| {
                    [
                        &d.source as &(dyn ToSql + Sync),
                        reason,
                        &d.error,
                        &d.payload,
                        &d.publish_time,
                        unapplied,
                    ]
                })
                .collect();
            let inserts = params.iter().map(|p| tx.execute(&stmt, p));
            futures::future::try_join_all(inserts).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn append_spool(&self, items: &[DeadLetter]) -> anyhow::Result<()> {
        let _guard = self.lock.lock().await;
        let mut lines = Vec::new();
        for d in items {
            serde_json::to_writer(&mut lines, d)?;
            lines.push(b'\n');
        }
        let path = self.spool.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&lines)?;
            f.sync_data()
        })
        .await
        .context("spool writer")?
        .with_context(|| {
            format!(
                "appending to the dead-letter spool {}",
                self.spool.display()
            )
        })?;
        self.pending.store(true, Ordering::Release);
        metrics::DEAD_LETTERS_SPOOLED.inc_by(items.len() as u64);
        Ok(())
    }

    /// Moves spooled dead letters into the table; returns how many. The file
    /// is truncated only after every line is committed (the fingerprint makes
    /// a repeated flush harmless).
    pub async fn flush_spool(&self) -> anyhow::Result<usize> {
        let _guard = self.lock.lock().await;
        let path = self.spool.clone();
        let items = tokio::task::spawn_blocking(move || read_spool(&path))
            .await
            .context("spool reader")??;
        if items.is_empty() {
            self.pending.store(false, Ordering::Release);
            return Ok(0);
        }
        self.insert(&items).await?;
        let path = self.spool.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .and_then(|f| f.sync_all())
        })
        .await
        .context("spool truncation")??;
        self.pending.store(false, Ordering::Release);
        tracing::info!(
            "moved {} spooled dead letter(s) into ingester_dead_letter",
            items.len()
        );
        Ok(items.len())
    }

    pub async fn list(&self, limit: i64) -> anyhow::Result<Vec<Stored>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, source, reason, error, ''::bytea, length(payload), publish_time, created, retries, last_retry, unapplied_events
                 FROM ingester_dead_letter ORDER BY id LIMIT $1",
                &[&limit],
            )
            .await?;
        rows.iter().map(stored).collect()
    }

    pub async fn get(&self, id: i64) -> anyhow::Result<Option<Stored>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT id, source, reason, error, payload, length(payload), publish_time, created, retries, last_retry, unapplied_events
                 FROM ingester_dead_letter WHERE id = $1",
                &[&id],
            )
            .await?;
        row.as_ref().map(stored).transpose()
    }

    pub async fn ids(&self) -> anyhow::Result<Vec<i64>> {
        let client = self.pool.get().await?;
        Ok(client
            .query("SELECT id FROM ingester_dead_letter ORDER BY id", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub async fn delete(&self, id: i64) -> anyhow::Result<()> {
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM ingester_dead_letter WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// Records a redrive that still failed, with what failed this time
    /// and the events still not applied (those that applied are left out).
    pub async fn redrive_failed(&self, id: i64, now: &DeadLetter) -> anyhow::Result<()> {
        let client = self.pool.get().await?;
        let (reason, error) = (now.reasons.to_string(), &now.error);
        let unapplied = to_column(&now.unapplied_events);
        client
            .execute(
                "UPDATE ingester_dead_letter SET retries = retries + 1, last_retry = now(), reason = $2, error = $3, unapplied_events = $4 WHERE id = $1",
                &[&id, &reason, error, &unapplied],
            )
            .await?;
        Ok(())
    }

    /// Deletes dead letters created more than `older_than` ago.
    pub async fn purge(&self, older_than: std::time::Duration) -> anyhow::Result<u64> {
        let client = self.pool.get().await?;
        let secs = older_than.as_secs_f64();
        Ok(client
            .execute("DELETE FROM ingester_dead_letter WHERE created < now() - make_interval(secs => $1)", &[&secs])
            .await?)
    }
}

fn stored(r: &tokio_postgres::Row) -> anyhow::Result<Stored> {
    let len: i32 = r.try_get(5)?;
    Ok(Stored {
        id: r.try_get(0)?,
        source: r.try_get(1)?,
        reason: r.try_get(2)?,
        error: r.try_get(3)?,
        payload: r.try_get(4)?,
        payload_bytes: usize::try_from(len).unwrap_or(0),
        publish_time: r.try_get(6)?,
        created: r.try_get(7)?,
        retries: r.try_get(8)?,
        last_retry: r.try_get(9)?,
        unapplied_events: from_column(r.try_get(10)?),
    })
}

/// Reads every complete line of the spool. A torn last line (a crash while
/// appending) is ignored: its batch was not acknowledged and is redelivered.
fn read_spool(path: &std::path::Path) -> anyhow::Result<Vec<DeadLetter>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<DeadLetter>(&line) {
            Ok(d) => out.push(d),
            Err(e) => tracing::warn!(
                "{} line {}: not a dead letter ({e}); left out",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

/// A human summary of a payload for `show`: what it decodes to, if anything.
pub fn describe_payload(payload: &[u8]) -> String {
    let mut out = String::new();
    match <crate::proto::armadaevents::EventSequence as prost::Message>::decode(payload) {
        Err(e) => {
            let _ = writeln!(out, "does not decode as an EventSequence: {e}");
        }
        Ok(seq) => {
            let _ = writeln!(
                out,
                "EventSequence: queue {:?}, job set {:?}, user {:?}, {} event(s)",
                String::from_utf8_lossy(&seq.queue),
                String::from_utf8_lossy(&seq.job_set_name),
                String::from_utf8_lossy(&seq.user_id),
                seq.events.len()
            );
            for (i, e) in seq.events.iter().enumerate().take(50) {
                let created = e
                    .created
                    .map(|c| format!("{}.{:09}", c.seconds, c.nanos))
                    .unwrap_or_else(|| "none".into());
                let _ = writeln!(
                    out,
                    "  event {i}: {} (created {created})",
                    crate::convert::event_kind(e)
                );
            }
        }
    }
    let head: String = payload
        .iter()
        .take(64)
        .map(|b| format!("{b:02x}"))
        .collect();
    let _ = writeln!(out, "payload: {} bytes, starting {head}", payload.len());
    out
}

/// One line of `dead-letters list`: id, created, reason, source, and the
/// start of the error.
pub fn list_line(d: &Stored) -> String {
    format!(
        "{:>6}  {}  {:<24} {:<40} {}",
        d.id,
        d.created.format("%Y-%m-%dT%H:%M:%SZ"),
        d.reason,
        d.source,
        d.error.chars().take(120).collect::<String>()
    )
}

/// Which events a dead letter has not applied, for a person.
pub fn unapplied_text(events: &Option<Vec<usize>>) -> String {
    match events {
        None => "every event".to_string(),
        Some(v) => {
            let list: Vec<String> = v.iter().map(ToString::to_string).collect();
            format!("event(s) {}", list.join(", "))
        }
    }
}

/// `dead-letters show`: every field, then what the payload decodes to.
pub fn show_view(d: &Stored) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "id:           {}", d.id);
    let _ = writeln!(out, "source:       {}", d.source);
    let _ = writeln!(out, "reason:       {}", d.reason);
    let _ = writeln!(out, "error:        {}", d.error);
    let _ = writeln!(out, "created:      {}", d.created.to_rfc3339());
    if let Some(t) = d.publish_time {
        let _ = writeln!(out, "published:    {}", t.to_rfc3339());
    }
    let _ = writeln!(out, "retries:      {}", d.retries);
    let _ = writeln!(out, "unapplied:    {}", unapplied_text(&d.unapplied_events));
    out.push_str(&describe_payload(&d.payload));
    out
}

/// Checks at start that the dead-letter spool can be written (created if
/// missing, appended to if present), so that an unwritable path is found
/// before a dead letter needs it. An error names the path.
pub fn check_spool(path: &std::path::Path) -> anyhow::Result<()> {
    let existed = path.exists();
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    match result {
        Ok(_) => {
            if !existed {
                // Leave no empty file behind: the spool's absence means "nothing spooled".
                let _ = std::fs::remove_file(path);
            }
            Ok(())
        }
        Err(e) => anyhow::bail!(
            "the dead-letter spool {} (deadLetterSpool) is not writable: {e}",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_inserts_are_bounded_by_count_and_bytes() {
        let letter = |payload: usize| DeadLetter {
            source: String::new(),
            reasons: Reasons::from_iter([Reason::Input(convert::Reason::Decode)]),
            error: String::new(),
            payload: vec![0; payload],
            publish_time: None,
            unapplied_events: None,
        };
        let sizes = |items: &[DeadLetter]| -> Vec<usize> {
            pipeline_chunks(items).map(<[DeadLetter]>::len).collect()
        };
        let small: Vec<_> = (0..150).map(|_| letter(10)).collect();
        assert_eq!(sizes(&small), [64, 64, 22]);
        // 1.5 MiB each: two fit in 4 MiB, a third would not.
        let large: Vec<_> = (0..5).map(|_| letter(3 << 19)).collect();
        assert_eq!(sizes(&large), [2, 2, 1]);
        // One larger than the bound still goes, alone.
        let huge = [letter(5 << 20), letter(1)];
        assert_eq!(sizes(&huge), [1, 1]);
        assert!(sizes(&[]).is_empty());
    }

    #[test]
    fn spool_lines_round_trip_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool.jsonl");
        let d = DeadLetter {
            source: "f record 1".into(),
            reasons: Reasons::from_iter([Reason::Input(convert::Reason::Decode)]),
            error: "bad".into(),
            payload: vec![0, 1, 0xff, 0x10],
            publish_time: None,
            unapplied_events: Some(vec![1, 3]),
        };
        let mut text = serde_json::to_string(&d).expect("json");
        text.push('\n');
        text.push_str("{\"source\": \"torn");
        std::fs::write(&path, text).expect("write");
        assert_eq!(read_spool(&path).expect("read"), vec![d]);
        assert!(read_spool(&dir.path().join("missing"))
            .expect("missing is empty")
            .is_empty());
    }

    #[test]
    fn reasons_are_sorted_deduplicated_and_joined_as_before() {
        let r = Reasons::from_iter([
            Reason::UnknownRun,
            Reason::RowFailed,
            Reason::Input(convert::Reason::MissingId),
            Reason::RowFailed,
            Reason::UnknownJob,
        ]);
        assert_eq!(
            r.to_string(),
            "missing_id,row_failed,unknown_job,unknown_run"
        );
        assert_eq!(Reasons::parse(&r.to_string()), Some(r));
        assert_eq!(Reasons::parse("decode,bogus"), None);
        // Every reason's text reads back as itself.
        for reason in Reason::all() {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
        }
    }

    #[test]
    fn spool_lines_keep_the_reason_text_field() {
        // A line as earlier versions wrote it still reads, and writes back the same.
        let line = r#"{"source":"t message 1:2:-1:-1","reason":"row_failed,unknown_job","error":"e","payload":"00ff","publish_time":null}"#;
        let d: DeadLetter = serde_json::from_str(line).expect("old line");
        assert_eq!(
            d.reasons.iter().collect::<Vec<_>>(),
            vec![Reason::RowFailed, Reason::UnknownJob]
        );
        assert_eq!(d.unapplied_events, None, "an old line means every event");
        assert_eq!(serde_json::to_string(&d).expect("json"), line);
        // A new line carries the events not applied.
        let d = DeadLetter {
            unapplied_events: Some(vec![0, 2]),
            ..d
        };
        let text = serde_json::to_string(&d).expect("json");
        assert!(text.ends_with(r#""unapplied_events":[0,2]}"#), "{text}");
        assert_eq!(
            serde_json::from_str::<DeadLetter>(&text).expect("new line"),
            d
        );
    }

    #[test]
    fn unapplied_events_read_back_from_the_column() {
        assert_eq!(to_column(&Some(vec![0, 4])), Some(vec![0, 4]));
        assert_eq!(to_column(&None), None);
        assert_eq!(from_column(Some(vec![3, -1, 5])), Some(vec![3, 5]));
        assert_eq!(from_column(None), None);
        assert_eq!(unapplied_text(&None), "every event");
        assert_eq!(unapplied_text(&Some(vec![1, 2])), "event(s) 1, 2");
    }

    #[test]
    fn hex_rejects_garbage() {
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn describes_payloads() {
        assert!(describe_payload(&[0xff, 0xff]).contains("does not decode"));
        let seq = crate::sample::sequence(
            "q",
            "js",
            "u",
            vec![crate::sample::event(
                None,
                crate::sample::job_succeeded("j"),
            )],
        );
        let text = describe_payload(&prost::Message::encode_to_vec(&seq));
        assert!(text.contains("job_succeeded (created none)"), "{text}");
    }
}

//! `replay`: feeds recorded event files through the same pipeline and writer
//! as live mode, then summarises what happened.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::convert::{Converter, Reason};
use crate::deadletter::DeadLetters;
use crate::pipeline::{self, Committed};
use crate::source::{file, Message, Origin};
use crate::store::{Store, WriteReport};
use crate::telemetry;

/// Records read ahead of the batcher.
const READ_AHEAD: usize = 256;

/// A run of this many records in a row that are not event sequences stops
/// a file as corrupt from the run's first record (one report, no dead
/// letters for the run).
pub const CORRUPT_RUN_RECORDS: usize = 100;

/// ... as does a run whose payloads add up to this many bytes (the run is
/// held back until it is known not to be one, so this bounds its memory).
pub const CORRUPT_RUN_BYTES: usize = 16 * 1024 * 1024;

/// How a replay reads its files.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Read files that do not look like recordings (`--force`); a long
    /// corrupt region still stops the file unless `read_past_corrupt`.
    pub force: bool,
    /// Read long runs of records that are not event sequences as records
    /// (each becomes a dead letter) instead of stopping the file there
    /// (`--read-past-corrupt`).
    pub read_past_corrupt: bool,
    /// Show a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// Turns true to stop reading (SIGINT, SIGTERM): what was read is
    /// committed, and the summary says the replay was interrupted.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Whether a record is an event sequence with a queue and a job set, as
/// every record of a recording is.
pub fn looks_like_sequence(payload: &[u8]) -> bool {
    pipeline::decode(payload).is_ok_and(|s| !s.queue.is_empty() && !s.job_set_name.is_empty())
}

/// What the start of a file says about it.
#[derive(Debug, PartialEq)]
enum Start {
    /// Its first record is an event sequence with a queue and job set.
    Recording,
    Empty,
    /// It cannot be opened; reported when it is read.
    Unopenable,
    /// Anything else, with why.
    NotRecording(String),
}

fn check_start(path: &std::path::Path) -> Start {
    let mut reader = match file::open(path, Arc::new(AtomicU64::new(0))) {
        Ok(r) => r,
        Err(_) => return Start::Unopenable,
    };
    match reader.next_record() {
        Ok(None) => Start::Empty,
        Ok(Some(p)) if looks_like_sequence(&p) => Start::Recording,
        Ok(Some(p)) => Start::NotRecording(match pipeline::decode(&p) {
            Err(e) => format!("its first record is not an event sequence: {e}"),
            Ok(_) => "its first record has no queue or job set".into(),
        }),
        Err(e) => Start::NotRecording(format!("its first record cannot be read: {e}")),
    }
}

/// Refuses files that do not look like recordings, before anything is
/// stored (unless `force`).
fn check_recordings(files: &[PathBuf], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    for path in files {
        if let Start::NotRecording(why) = check_start(path) {
            anyhow::bail!(
                "{} does not look like a recording ({why}); nothing was stored; \
                 --force reads it as records anyway",
                path.display()
            );
        }
    }
    Ok(())
}

/// What a replay did. `Display` renders the end-of-run summary.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub records: u64,
    pub events_by_kind: BTreeMap<&'static str, u64>,
    /// Rows inserted or changed, by "table operation" (a replayed insert of
    /// an existing row changes nothing and is not counted).
    pub rows: BTreeMap<String, u64>,
    /// Records or events that produced no rows, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Inputs used with a change or ignored in part, by reason.
    pub warnings: BTreeMap<String, u64>,
    /// Rows that failed even row by row.
    pub failed_rows: u64,
    /// Records kept as dead letters.
    pub dead_letters: u64,
    pub elapsed: Duration,
    /// Stopped by a signal: the summary covers what was committed.
    pub interrupted: bool,
    /// Remarks about the input that are not problems (an empty file).
    pub remarks: Vec<String>,
}

impl Summary {
    pub fn events(&self) -> u64 {
        self.events_by_kind.values().sum()
    }

    /// True when every input was applied (the exit status reflects this).
    pub fn clean(&self) -> bool {
        self.skipped.is_empty()
            && self.failed_rows == 0
            && self.dead_letters == 0
            && !self.interrupted
    }

    fn add(&mut self, c: &Committed) {
        self.records += c.origins.len() as u64;
        crate::telemetry::add_counts(
            &mut self.events_by_kind,
            c.events_by_kind.iter().map(|(k, n)| (*k, *n)),
        );
        for p in &c.problems {
            let map = if p.problem.skipped {
                &mut self.skipped
            } else {
                &mut self.warnings
            };
            *map.entry(p.problem.reason.as_str().to_string())
                .or_insert(0) += 1;
        }
        add_write(self, &c.write);
        self.dead_letters += c.dead_letters as u64;
    }
}

fn add_write(s: &mut Summary, w: &WriteReport) {
    for (name, c) in [
        ("job insert", w.job_inserted),
        ("job_spec insert", w.job_spec_inserted),
        ("job update", w.job_updated),
        ("job_run insert", w.job_run_inserted),
        ("job_error insert", w.job_error_inserted),
        ("job_run update", w.job_run_updated),
    ] {
        if c.attempted > 0 {
            *s.rows.entry(name.to_string()).or_insert(0) += c.affected;
        }
    }
    s.failed_rows += w.failed.len() as u64;
    if w.filtered_terminal > 0 {
        *s.warnings
            .entry("job_update_for_terminal_job".into())
            .or_insert(0) += w.filtered_terminal;
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.events() as f64 / secs
        } else {
            0.0
        };
        let mut out = String::new();
        if self.interrupted {
            let _ = writeln!(
                out,
                "interrupted: what follows was committed; the rest was not read"
            );
        }
        let _ = writeln!(
            out,
            "replayed {} records, {} events in {:.2}s ({:.0} events/s)",
            self.records,
            self.events(),
            secs,
            rate
        );
        let section = |out: &mut String, title: &str, m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                let _ = writeln!(out, "{title}: none");
            } else {
                let _ = writeln!(out, "{title}:");
                for (k, v) in m {
                    let _ = writeln!(out, "  {k:<32} {v:>10}");
                }
            }
        };
        let events: BTreeMap<String, u64> = self
            .events_by_kind
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        section(&mut out, "events by type", &events);
        section(&mut out, "rows by table", &self.rows);
        section(&mut out, "skipped by reason", &self.skipped);
        section(&mut out, "warnings by reason", &self.warnings);
        let _ = writeln!(out, "rows failed: {}", self.failed_rows);
        let _ = writeln!(out, "dead letters: {}", self.dead_letters);
        for r in &self.remarks {
            let _ = writeln!(out, "remark: {r}");
        }
        f.write_str(&out)
    }
}

/// Reads `files` on a blocking thread into the pipeline's channel. A file
/// that cannot be opened or read to its end, or that turns corrupt (a run of
/// [`CORRUPT_RUN_RECORDS`] records that are not event sequences), is
/// reported once at the record where reading stopped; the following files
/// are still read.
/// What the reader shares with the replay.
#[derive(Default)]
struct Shared {
    /// File bytes read so far (compressed bytes for gzip).
    read: AtomicU64,
    /// `read` when each message sent was read, until it is committed.
    offsets: std::sync::Mutex<std::collections::VecDeque<u64>>,
    stopping: std::sync::atomic::AtomicBool,
    /// Reading stopped early because of `stopping`.
    cut: std::sync::atomic::AtomicBool,
    errors: std::sync::Mutex<Vec<(Origin, String)>>,
    remarks: std::sync::Mutex<Vec<String>>,
}

impl Shared {
    fn send(&self, tx: &mpsc::Sender<Message>, msg: Message) -> bool {
        if self.stopping.load(Ordering::Relaxed) {
            self.cut.store(true, Ordering::Relaxed);
            return false;
        }
        if let Ok(mut o) = self.offsets.lock() {
            o.push_back(self.read.load(Ordering::Relaxed));
        }
        tx.blocking_send(msg).is_ok()
    }
}

fn read_files(
    files: Vec<PathBuf>,
    read_past_corrupt: bool,
    tx: mpsc::Sender<Message>,
    shared: Arc<Shared>,
) {
    let progress = Arc::new(AtomicU64::new(0));
    for path in files {
        let name: Arc<str> = Arc::from(path.display().to_string());
        let mut reader = match file::open(&path, progress.clone()) {
            Ok(r) => r,
            Err(e) => {
                let why = match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file".to_string(),
                    _ => format!("cannot open: {e}"),
                };
                telemetry::file_unopenable(&name, &why);
                if let Ok(mut errs) = shared.errors.lock() {
                    errs.push((
                        Origin::File {
                            path: name,
                            index: 0,
                        },
                        why,
                    ));
                }
                continue;
            }
        };
        let errors = &shared.errors;
        let mut index = 0u64;
        // Records that are not event sequences, held back until a good one
        // shows they are not a corrupt region.
        let mut held: Vec<Message> = Vec::new();
        let mut held_bytes = 0usize;
        let send_held = |held: &mut Vec<Message>, held_bytes: &mut usize| -> bool {
            *held_bytes = 0;
            held.drain(..).all(|m| shared.send(&tx, m))
        };
        loop {
            shared
                .read
                .store(progress.load(Ordering::Relaxed), Ordering::Relaxed);
            match reader.next_record() {
                Ok(Some(payload)) => {
                    let good = read_past_corrupt || looks_like_sequence(&payload);
                    let msg = Message {
                        payload,
                        origin: Origin::File {
                            path: name.clone(),
                            index,
                        },
                        publish_time: None,
                    };
                    index += 1;
                    if good {
                        if !send_held(&mut held, &mut held_bytes) || !shared.send(&tx, msg) {
                            // Interrupted, or the pipeline stopped (its
                            // error is reported by join).
                            return;
                        }
                        continue;
                    }
                    held_bytes += msg.payload.len();
                    held.push(msg);
                    if held.len() >= CORRUPT_RUN_RECORDS || held_bytes >= CORRUPT_RUN_BYTES {
                        let from = index - held.len() as u64;
                        push_error(
                            errors,
                            Origin::File {
                                path: name.clone(),
                                index: from,
                            },
                            format!(
                                "corrupt from record {from}: {} records in a row are not \
                                 event sequences; the rest of the file is skipped \
                                 (--read-past-corrupt reads it as records)",
                                held.len()
                            ),
                        );
                        break;
                    }
                }
                Ok(None) => {
                    if index == 0 {
                        if let Ok(mut r) = shared.remarks.lock() {
                            r.push(format!("{name} is empty"));
                        }
                    }
                    if !send_held(&mut held, &mut held_bytes) {
                        return;
                    }
                    break;
                }
                Err(e) => {
                    if !send_held(&mut held, &mut held_bytes) {
                        return;
                    }
                    push_error(
                        errors,
                        Origin::File {
                            path: name.clone(),
                            index,
                        },
                        e.to_string(),
                    );
                    break;
                }
            }
        }
    }
}

fn push_error(errors: &std::sync::Mutex<Vec<(Origin, String)>>, origin: Origin, msg: String) {
    telemetry::file_unreadable(&origin, &msg);
    if let Ok(mut e) = errors.lock() {
        e.push((origin, msg));
    }
}

/// Replays `files` into the store and returns the summary. `progress` shows
/// a bar on stderr (callers pass it only when stderr is a terminal).
pub async fn replay(
    files: Vec<PathBuf>,
    converter: Converter,
    store: Arc<Store>,
    dead: Arc<DeadLetters>,
    settings: pipeline::Settings,
    progress: bool,
) -> anyhow::Result<Summary> {
    let options = Options {
        progress,
        ..Options::default()
    };
    replay_with(files, converter, store, dead, settings, options).await
}

/// [`replay`] with all its options. Files that do not look like recordings
/// are refused before anything is stored, unless `options.force`.
pub async fn replay_with(
    files: Vec<PathBuf>,
    converter: Converter,
    store: Arc<Store>,
    dead: Arc<DeadLetters>,
    settings: pipeline::Settings,
    options: Options,
) -> anyhow::Result<Summary> {
    let progress = options.progress;
    let started = Instant::now();
    // Refuse a database this binary cannot write before reading anything.
    store.detect().await?;
    check_recordings(&files, options.force)?;
    let total: u64 = files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let shared = Arc::new(Shared::default());
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let reader = {
        let (shared, past) = (shared.clone(), options.read_past_corrupt);
        tokio::task::spawn_blocking(move || read_files(files, past, tx, shared))
    };
    if let Some(mut stop) = options.stop {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                if *stop.borrow_and_update() {
                    shared.stopping.store(true, Ordering::Relaxed);
                    return;
                }
                if stop.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    // A recording is history: every batch is behind the topic.
    let settings = pipeline::Settings {
        always_behind: true,
        ..settings
    };
    let (mut committed, stages) = pipeline::spawn(rx, converter, store, dead, settings);
    // The bar shows how far into the files the committed records reach,
    // not how far reading has run ahead of them.
    let bar = progress.then(|| {
        let b = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} committed, {msg} [{elapsed_precise}, eta {eta}]",
        ) {
            b.set_style(style);
        }
        b
    });
    let mut summary = Summary::default();
    while let Some(c) = committed.recv().await {
        summary.add(&c);
        let mut reached = None;
        if let Ok(mut o) = shared.offsets.lock() {
            for _ in 0..c.origins.len() {
                reached = o.pop_front().or(reached);
            }
        }
        if let Some(b) = &bar {
            if let Some(r) = reached {
                b.set_position(r);
            }
            b.set_message(format!(
                "{} records, {} events",
                summary.records,
                summary.events()
            ));
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let reader_result = reader.await;
    stages.join().await?;
    reader_result.map_err(|e| anyhow::anyhow!("file reader failed: {e}"))?;
    summary.interrupted = shared.cut.load(Ordering::Relaxed);
    if let Ok(errs) = shared.errors.lock() {
        for _ in errs.iter() {
            *summary
                .skipped
                .entry(Reason::File.as_str().into())
                .or_insert(0) += 1;
        }
    }
    if let Ok(r) = shared.remarks.lock() {
        summary.remarks.clone_from(&r);
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

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
}

impl Summary {
    pub fn events(&self) -> u64 {
        self.events_by_kind.values().sum()
    }

    /// True when every input was applied (the exit status reflects this).
    pub fn clean(&self) -> bool {
        self.skipped.is_empty() && self.failed_rows == 0 && self.dead_letters == 0
    }

    fn add(&mut self, c: &Committed) {
        self.records += c.origins.len() as u64;
        for (k, n) in &c.events_by_kind {
            *self.events_by_kind.entry(k).or_insert(0) += n;
        }
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
        f.write_str(&out)
    }
}

/// Reads `files` on a blocking thread into the pipeline's channel. A file
/// that cannot be opened or read to its end is reported at the record where
/// reading stopped; the following files are still read.
fn read_files(
    files: Vec<PathBuf>,
    tx: mpsc::Sender<Message>,
    progress: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<(Origin, String)>>>,
) {
    for path in files {
        let name: Arc<str> = Arc::from(path.display().to_string());
        let mut reader = match file::open(&path, progress.clone()) {
            Ok(r) => r,
            Err(e) => {
                push_error(
                    &errors,
                    Origin::File {
                        path: name,
                        index: 0,
                    },
                    format!("cannot open: {e}"),
                );
                continue;
            }
        };
        let mut index = 0u64;
        loop {
            match reader.next_record() {
                Ok(Some(payload)) => {
                    let msg = Message {
                        payload,
                        origin: Origin::File {
                            path: name.clone(),
                            index,
                        },
                        publish_time: None,
                    };
                    if tx.blocking_send(msg).is_err() {
                        return; // the pipeline stopped; its error is reported by join
                    }
                    index += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    push_error(
                        &errors,
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
    let started = Instant::now();
    // Refuse a database this binary cannot write before reading anything.
    store.detect().await?;
    let total: u64 = files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let read = Arc::new(AtomicU64::new(0));
    let file_errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Few messages wait here: with the batches, memory is bounded by bytes.
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let reader = {
        let (read, errs) = (read.clone(), file_errors.clone());
        tokio::task::spawn_blocking(move || read_files(files, tx, read, errs))
    };
    let (mut committed, stages) = pipeline::spawn(rx, converter, store, dead, settings);
    let bar = progress.then(|| {
        let b = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {msg} [{elapsed_precise}, eta {eta}]",
        ) {
            b.set_style(style);
        }
        b
    });
    let mut summary = Summary::default();
    while let Some(c) = committed.recv().await {
        summary.add(&c);
        if let Some(b) = &bar {
            b.set_position(read.load(Ordering::Relaxed));
            b.set_message(format!("{} events", summary.events()));
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let reader_result = reader.await;
    stages.join().await?;
    reader_result.map_err(|e| anyhow::anyhow!("file reader failed: {e}"))?;
    if let Ok(errs) = file_errors.lock() {
        for _ in errs.iter() {
            *summary
                .skipped
                .entry(Reason::File.as_str().into())
                .or_insert(0) += 1;
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

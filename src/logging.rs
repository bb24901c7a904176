//! Where log lines go and how they look: stderr, as text (colour only on a
//! terminal) or as one JSON object per line (`logFormat: json`,
//! `--log-format json`), at the level of `RUST_LOG` if set, else
//! `logLevel` (default `info`). Every line passes the secret scrubber, and
//! is counted in upstream's `log_messages{level}`.
//!
//! Logging starts before the configuration is read (the format from the
//! command line if it is there, so that even the first lines are JSON);
//! [`apply`] switches to what the configuration says once it is loaded.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Deserializer};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter, fmt, reload, EnvFilter, Layer, Registry};

use crate::metrics::upstream;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    /// `text` or `json`, any case.
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s.trim().to_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected text or json, got {other:?}")),
        }
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        LogFormat::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Whether `level` is a level or filter directives the logger accepts.
pub fn check_level(level: &str) -> Result<(), String> {
    EnvFilter::builder()
        .parse(level.trim())
        .map(|_| ())
        .map_err(|e| {
            format!(
                "not a log level or filter ({e}), e.g. info, debug or info,lookout_ingester=debug"
            )
        })
}

static JSON: AtomicBool = AtomicBool::new(false);
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// `RUST_LOG`, when set and not empty.
fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

/// The format the command line asks for (`--log-format X` or
/// `--log-format=X`), before the configuration is read.
pub fn format_from_args(args: &[std::ffi::OsString]) -> Option<LogFormat> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    args.iter().enumerate().rev().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix("--log-format=") {
            return LogFormat::parse(v).ok();
        }
        (a == "--log-format")
            .then(|| args.get(i + 1))
            .flatten()
            .and_then(|v| LogFormat::parse(v).ok())
    })
}

/// Counts every line written in upstream's `log_messages{level}`.
struct Counting;

impl<S: Subscriber> Layer<S> for Counting {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => return,
        };
        upstream::LOG_MESSAGES.with_label_values(&[level]).inc();
    }
}

/// Starts logging to `writer` (stderr, scrubbed) in `format`, at the level
/// of `RUST_LOG` or `info`. Once per process; later calls do nothing.
pub fn init<W>(writer: fn() -> W, format: LogFormat)
where
    W: std::io::Write + 'static,
{
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    let level = rust_log().unwrap_or_else(|| "info".to_string());
    let (filter, handle) = reload::Layer::new(
        EnvFilter::builder()
            .parse(&level)
            .unwrap_or_else(|_| EnvFilter::new("info")),
    );
    let text = fmt::layer()
        // Colour codes only where a person reads them, not in files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer)
        .with_filter(filter::filter_fn(|_| !json()));
    let json_layer = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer)
        .with_filter(filter::filter_fn(|_| json()));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json_layer)
        .with(Counting)
        .try_init();
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Switches to the configured format and level (`RUST_LOG`, when set, wins
/// over `level`).
pub fn apply(format: LogFormat, level: &str) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    if rust_log().is_some() {
        return;
    }
    if let (Some(handle), Ok(f)) = (FILTER.get(), EnvFilter::builder().parse(level)) {
        let _ = handle.reload(f);
    }
}

/// The one line of a fatal error (already scrubbed): `error: …` in text,
/// a JSON object in JSON.
pub fn fatal_line(text: &str) -> String {
    if json() {
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "ERROR",
            "message": format!("error: {text}"),
        });
        line.to_string()
    } else {
        format!("error: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_levels_parse() {
        assert_eq!(LogFormat::parse("JSON"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        assert!(LogFormat::parse("xml").is_err());
        assert!(check_level("debug").is_ok());
        assert!(check_level("info,lookout_ingester=debug").is_ok());
        assert!(check_level("loud=").is_err() || check_level("[").is_err());
        let args = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(|s| s.into()).collect() };
        assert_eq!(
            format_from_args(&args(&["x", "run", "--log-format", "json"])),
            Some(LogFormat::Json)
        );
        assert_eq!(
            format_from_args(&args(&["x", "run", "--log-format=text"])),
            Some(LogFormat::Text)
        );
        assert_eq!(format_from_args(&args(&["x", "run"])), None);
    }
}

//! Command line: subcommands wired to the pipeline, the store and migrations.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use prost::Message as _;

use crate::convert::{self, Converter};
use crate::{migrate, pipeline, replay, sample, source, store};

/// Exit status of a replay that finished but skipped some input.
pub const EXIT_SKIPPED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "lookout-ingester",
    version,
    about = "Keeps Armada's Lookout database up to date from Armada's event stream"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Bring the Lookout schema up to date (or show its state with --status).
    Migrate {
        #[command(flatten)]
        db: DbArgs,
        /// Print the current version and the pending migrations; change nothing.
        #[arg(long)]
        status: bool,
    },
    /// Apply recorded event files (plain or gzip) to the database.
    Replay {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        convert: ConvertArgs,
        #[command(flatten)]
        batch: BatchArgs,
        /// Recorded event files: length-delimited EventSequence records.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write a synthetic recording of job life cycles (for demos and tests).
    Sample {
        /// File to write.
        #[arg(long)]
        out: PathBuf,
        /// Number of jobs.
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
        /// Seed of the deterministic generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Gzip the file.
        #[arg(long)]
        gzip: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// Postgres connection URL of the Lookout database.
    #[arg(
        long,
        env = "LOOKOUT_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/lookout"
    )]
    pub database_url: String,
    /// Longest wait between retries of a retryable Postgres error, in seconds.
    #[arg(long, default_value_t = 60)]
    pub max_backoff: u64,
    /// Regex; a Postgres error whose message matches is never retried (repeatable).
    #[arg(long = "fatal-insertion-error")]
    pub fatal_insertion_errors: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// Prefix stripped from user annotation keys.
    #[arg(long, default_value = "armadaproject.io/")]
    pub user_annotation_prefix: String,
    /// Annotation keys never stored, case-insensitive (repeatable, or comma-separated).
    #[arg(long = "annotation-blocklist", value_delimiter = ',')]
    pub annotation_blocklist: Vec<String>,
    /// Job specs and error texts longer than this many bytes are compressed.
    #[arg(long, default_value_t = 1024)]
    pub min_job_spec_compression_size: usize,
}

#[derive(Args, Debug, Clone)]
pub struct BatchArgs {
    /// Events per batch.
    #[arg(long, default_value_t = 10_000)]
    pub batch_size: usize,
    /// Longest time a batch waits to fill, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub batch_duration_ms: u64,
}

impl ConvertArgs {
    pub fn settings(&self) -> convert::Settings {
        convert::Settings {
            user_annotation_prefix: self.user_annotation_prefix.clone(),
            annotation_blocklist: self.annotation_blocklist.clone(),
            min_job_spec_compression_size: self.min_job_spec_compression_size,
        }
    }
}

impl BatchArgs {
    pub fn settings(&self) -> pipeline::Settings {
        pipeline::Settings {
            batch_size: self.batch_size.max(1),
            batch_duration: Duration::from_millis(self.batch_duration_ms),
            ..pipeline::Settings::default()
        }
    }
}

impl DbArgs {
    pub fn store_settings(&self) -> anyhow::Result<store::StoreSettings> {
        let mut fatal = Vec::new();
        for r in &self.fatal_insertion_errors {
            fatal.push(regex::Regex::new(r).map_err(|e| {
                anyhow::anyhow!("--fatal-insertion-error {r:?} is not a valid regex: {e}")
            })?);
        }
        Ok(store::StoreSettings {
            max_backoff: Duration::from_secs(self.max_backoff.max(1)),
            fatal_errors: fatal,
            ..store::StoreSettings::default()
        })
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to Postgres at {}: {e}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!("postgres connection ended: {e}");
        }
    });
    Ok(client)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Migrate { db, status } => {
            let mut client = connect(&db.database_url).await?;
            if status {
                let s = migrate::status(&client).await?;
                println!("database version: {}", s.current);
                println!("binary's latest:  {}", s.latest);
                if s.current > s.latest {
                    println!("the database is newer than this binary; migrate will not touch it");
                } else if s.pending.is_empty() {
                    println!("up to date");
                } else {
                    println!("pending:");
                    for (v, name) in &s.pending {
                        println!("  {v:03} {name}");
                    }
                }
            } else {
                let r = migrate::migrate(&mut client).await?;
                if r.applied.is_empty() {
                    println!("database at version {}; nothing to apply", r.to);
                } else {
                    println!(
                        "migrated from version {} to {} ({} applied)",
                        r.from,
                        r.to,
                        r.applied.len()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            db,
            convert,
            batch,
            files,
        } => {
            let pool = store::connect_pool(&db.database_url, 4).await?;
            let store = Arc::new(store::Store::new(pool, db.store_settings()?));
            let converter = Converter::new(convert.settings());
            let progress = std::io::stderr().is_terminal();
            let summary =
                replay::replay(files, converter, store, batch.settings(), progress).await?;
            print!("{summary}");
            Ok(if summary.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_SKIPPED)
            })
        }
        Command::Sample {
            out,
            jobs,
            seed,
            gzip,
        } => {
            let mut w = source::file::RecordWriter::create(&out, gzip)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
            let mut events = 0usize;
            for seq in sample::generate(seed, jobs) {
                events += seq.events.len();
                w.write_record(&seq.encode_to_vec())?;
            }
            let records = w.records;
            w.finish()?;
            println!(
                "wrote {records} records, {events} events to {}",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}

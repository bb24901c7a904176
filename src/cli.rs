//! Command line: subcommands wired to the pipeline, the store and migrations.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use prost::Message as _;

use crate::convert::{self, Converter};
use crate::deadletter::DeadLetters;
use crate::{config, live, migrate, pipeline, record, replay, sample, source, store};

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
    /// Consume the job-set events topic and keep the Lookout database up to date.
    Run {
        #[command(flatten)]
        live: LiveArgs,
    },
    /// Copy a topic's messages into a recorded event file (no subscription is touched).
    Record {
        #[command(flatten)]
        live: LiveArgs,
        /// File to write.
        #[arg(long)]
        out: PathBuf,
        /// Gzip the file.
        #[arg(long)]
        gzip: bool,
        /// Skip messages published before this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Stop once the topic has been quiet this long (e.g. 5s).
        #[arg(long, default_value = "5s")]
        idle: String,
        /// Stop after this many messages.
        #[arg(long)]
        max_messages: Option<u64>,
    },
    /// Publish recorded event files to the topic, one message per record (demos, tests).
    Publish {
        #[command(flatten)]
        live: LiveArgs,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
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
    /// Inspect, retry or purge dead letters (inputs that could not be applied).
    #[command(name = "dead-letters")]
    DeadLetters {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        convert: ConvertArgs,
        #[command(subcommand)]
        action: DeadLetterAction,
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

/// Settings of live mode: upstream's YAML files, environment, and overrides.
#[derive(Args, Debug, Clone)]
pub struct LiveArgs {
    /// Upstream lookoutingester YAML; repeatable, later files override earlier ones.
    #[arg(long = "config")]
    pub config: Vec<PathBuf>,
    /// Postgres URL or key=value string; overrides postgres.connection.
    #[arg(long, env = "LOOKOUT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Pulsar service URL; overrides pulsar.URL.
    #[arg(long)]
    pub pulsar_url: Option<String>,
    /// Topic; overrides pulsar.jobsetEventsTopic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Subscription name; overrides subscriptionName.
    #[arg(long)]
    pub subscription: Option<String>,
    /// Failover (default), Exclusive, Shared or KeyShared; overrides subscriptionType.
    #[arg(long)]
    pub subscription_type: Option<String>,
    /// Events per batch; overrides batchSize.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Longest wait for a batch to fill, e.g. 500ms; overrides batchDuration.
    #[arg(long)]
    pub batch_duration: Option<String>,
    /// Port of /metrics, /healthz and /readyz (0 = off); overrides metricsPort.
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// File for dead letters Postgres refuses; overrides deadLetterSpool.
    #[arg(long)]
    pub dead_letter_spool: Option<PathBuf>,
}

impl LiveArgs {
    pub fn load(&self) -> anyhow::Result<config::Config> {
        let overrides = config::Overrides {
            database_url: self.database_url.clone(),
            pulsar_url: self.pulsar_url.clone(),
            topic: self.topic.clone(),
            subscription: self.subscription.clone(),
            subscription_type: self.subscription_type.clone(),
            batch_size: self.batch_size,
            batch_duration: self.batch_duration.clone(),
            metrics_port: self.metrics_port,
            dead_letter_spool: self.dead_letter_spool.clone(),
        };
        let loaded = config::load(&self.config, std::env::vars(), &overrides)?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        Ok(loaded.config)
    }
}

#[derive(Subcommand, Debug)]
pub enum DeadLetterAction {
    /// One line per dead letter (oldest first); --json prints one JSON object per line.
    List {
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Everything about one dead letter, with what its payload decodes to.
    Show { id: i64 },
    /// Send dead letters through the normal path again; those that now apply are removed.
    Retry {
        /// The dead letter to retry.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Retry every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters older than a duration (e.g. 720h).
    Purge {
        #[arg(long)]
        older_than: String,
    },
    /// Move dead letters from the local spool file into the table.
    Flush,
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
    /// File for dead letters Postgres refuses (flushed into the table later).
    #[arg(long, default_value = config::DEFAULT_SPOOL)]
    pub dead_letter_spool: PathBuf,
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
        Command::Run { live: args } => {
            let cfg = args.load()?;
            tracing::info!(
                "lookout-ingester {} starting: topic {} on {}, subscription {} ({:?}), database {}",
                env!("CARGO_PKG_VERSION"),
                cfg.pulsar.topic,
                cfg.pulsar.url,
                cfg.pulsar.subscription,
                cfg.pulsar.subscription_kind,
                redact(&cfg.database_url)
            );
            let (_keep, stop) = live::signal_stop()?;
            live::run(cfg, stop).await?;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Record {
            live: args,
            out,
            gzip,
            since,
            idle,
            max_messages,
        } => {
            let cfg = args.load()?;
            let since_ms = match since {
                None => None,
                Some(s) => {
                    let t = chrono::DateTime::parse_from_rfc3339(&s).map_err(|e| {
                        anyhow::anyhow!("--since {s:?} is not an RFC 3339 time: {e}")
                    })?;
                    Some(u64::try_from(t.timestamp_millis()).unwrap_or(0))
                }
            };
            let idle = config::parse_duration(&idle).map_err(|e| anyhow::anyhow!("--idle: {e}"))?;
            let opts = record::RecordOptions {
                since_ms,
                idle,
                max_messages,
                gzip,
            };
            let r = record::record(&cfg.pulsar, &out, &opts).await?;
            println!(
                "recorded {} messages from {} to {} ({} events given their publish time as created, {} undecodable kept raw, {} before --since skipped)",
                r.messages,
                cfg.pulsar.topic,
                out.display(),
                r.created_filled,
                r.undecodable_kept_raw,
                r.skipped_before_since
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish { live: args, files } => {
            let cfg = args.load()?;
            let n = record::publish(&cfg.pulsar, &files).await?;
            println!("published {n} messages to {}", cfg.pulsar.topic);
            Ok(ExitCode::SUCCESS)
        }
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
                    let own = migrate::own_pending(&client).await?;
                    if own.is_empty() {
                        println!("ingester tables: up to date");
                    } else {
                        println!("ingester tables pending (migrations/ingester):");
                        for (v, name) in &own {
                            println!("  {v:04} {name}");
                        }
                    }
                } else {
                    println!("pending:");
                    for (v, name) in &s.pending {
                        println!("  {v:03} {name}");
                    }
                }
            } else {
                let r = migrate::migrate(&mut client).await?;
                for (v, name) in &r.own_applied {
                    println!("applied ingester migration {v:04} {name}");
                }
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
            let store = Arc::new(store::Store::new(pool.clone(), db.store_settings()?));
            let dead = DeadLetters::new(pool, db.dead_letter_spool.clone());
            let converter = Converter::new(convert.settings());
            let progress = std::io::stderr().is_terminal();
            let summary =
                replay::replay(files, converter, store, dead, batch.settings(), progress).await?;
            print!("{summary}");
            Ok(if summary.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_SKIPPED)
            })
        }
        Command::DeadLetters {
            db,
            convert,
            action,
        } => {
            let pool = store::connect_pool(&db.database_url, 2).await?;
            let dead = DeadLetters::new(pool.clone(), db.dead_letter_spool.clone());
            match action {
                DeadLetterAction::List { json, limit } => {
                    for d in dead.list(limit).await? {
                        if json {
                            println!("{}", serde_json::to_string(&d)?);
                        } else {
                            println!(
                                "{:>6}  {}  {:<24} {:<40} {}",
                                d.id,
                                d.created.format("%Y-%m-%dT%H:%M:%SZ"),
                                d.reason,
                                d.source,
                                d.error.chars().take(120).collect::<String>()
                            );
                        }
                    }
                }
                DeadLetterAction::Show { id } => {
                    let Some(d) = dead.get(id).await? else {
                        anyhow::bail!("no dead letter {id}");
                    };
                    println!("id:           {}", d.id);
                    println!("source:       {}", d.source);
                    println!("reason:       {}", d.reason);
                    println!("error:        {}", d.error);
                    println!("created:      {}", d.created.to_rfc3339());
                    if let Some(t) = d.publish_time {
                        println!("published:    {}", t.to_rfc3339());
                    }
                    println!("retries:      {}", d.retries);
                    print!("{}", crate::deadletter::describe_payload(&d.payload));
                }
                DeadLetterAction::Retry { id, all } => {
                    let ids = if all {
                        dead.ids().await?
                    } else {
                        id.into_iter().collect()
                    };
                    let store = store::Store::new(pool, db.store_settings()?);
                    let converter = Converter::new(convert.settings());
                    let r = crate::pipeline::redrive(&dead, &store, &converter, &ids).await?;
                    for (id, reason) in &r.still_failing {
                        println!("{id}: still failing: {reason}");
                    }
                    for id in &r.missing {
                        println!("{id}: no such dead letter");
                    }
                    println!(
                        "retried {}: {} applied and removed, {} still failing",
                        ids.len(),
                        r.applied.len(),
                        r.still_failing.len()
                    );
                    if !r.still_failing.is_empty() || !r.missing.is_empty() {
                        return Ok(ExitCode::from(EXIT_SKIPPED));
                    }
                }
                DeadLetterAction::Purge { older_than } => {
                    let d = config::parse_duration(&older_than)
                        .map_err(|e| anyhow::anyhow!("--older-than: {e}"))?;
                    println!("purged {} dead letter(s)", dead.purge(d).await?);
                }
                DeadLetterAction::Flush => {
                    println!(
                        "flushed {} dead letter(s) from {}",
                        dead.flush_spool().await?,
                        dead.spool_path().display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
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

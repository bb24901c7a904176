//! Command line: [`run`] dispatches each subcommand to one function, its
//! entry point. Settings come from one place for every command that touches
//! the database or converts events: `--config` files, `ARMADA_*`
//! environment variables and the flags in [`FLAGS`], layered by
//! [`config::load`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use serde_yaml::Value;

use crate::convert::Converter;
use crate::deadletter::{self, DeadLetters};
use crate::values::parse_duration;
use crate::{config, live, migrate, record, replay, sample, status, store};

/// Exit status of a replay that finished but skipped some input.
pub const EXIT_SKIPPED: u8 = 3;

/// Exit status of a replay stopped by SIGINT or SIGTERM (after committing
/// what it had read and printing the summary of it).
pub const EXIT_INTERRUPTED: u8 = 130;

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
        settings: SettingArgs<RUN>,
    },
    /// Copy a topic's messages into a recorded event file (no subscription is touched).
    Record(RecordArgs),
    /// Publish recorded event files to the topic, one message per record (demos, tests).
    Publish {
        #[command(flatten)]
        settings: SettingArgs<{ PULSAR | LOG }, DATABASE>,
        /// Recorded event files (plain or gzip), published in order, one message per record.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Put up to N messages in one broker entry, zlib-compressed, sent
        /// after 10 ms or 4 MiB at most, as Armada's server and scheduler
        /// publish (N = 1000); 1 is one message per entry.
        #[arg(long, value_name = "N", default_value_t = 1)]
        batch: u32,
    },
    /// Bring the Lookout schema to generation 031, or to --to N (or show its state with --status).
    Migrate {
        #[command(flatten)]
        settings: SettingArgs<MIGRATE>,
        /// Print the version, the generation the columns say and the pending migrations; change nothing.
        #[arg(long, conflicts_with_all = ["to", "allow_drop"])]
        status: bool,
        /// Target generation: 31 to 35, or `latest` (default 31). Never goes backwards.
        #[arg(long, value_name = "N|latest", value_parser = migrate::parse_target)]
        to: Option<i64>,
        /// Let migration 033 drop job_run.failure_info even when rows hold one.
        #[arg(long)]
        allow_drop: bool,
    },
    /// Apply recorded event files (plain or gzip) to the database.
    Replay {
        #[command(flatten)]
        settings: SettingArgs<REPLAY>,
        /// Read files that do not look like recordings (their first record is
        /// not an event sequence with a queue and job set) anyway.
        #[arg(long)]
        force: bool,
        /// Read past corrupt regions: a run of 100 records (or 16 MiB) that are
        /// not event sequences no longer stops the file; each such record
        /// becomes a dead letter.
        #[arg(long)]
        read_past_corrupt: bool,
        /// Recorded event files: length-delimited EventSequence records.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Inspect, retry or purge dead letters (inputs that could not be applied).
    #[command(name = "dead-letters")]
    DeadLetters {
        #[command(flatten)]
        settings: SettingArgs<{ DEAD_LETTERS | GLOBAL }>,
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// The fleet of `run` replicas from their heartbeats: alive, crashed, failed or stopped cleanly, with progress and lag.
    Status {
        #[command(flatten)]
        settings: SettingArgs<STATUS>,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Reports on what the Lookout tables hold.
    Report {
        #[command(flatten)]
        settings: SettingArgs<{ REPORT | GLOBAL }>,
        #[command(subcommand)]
        kind: ReportKind,
    },
    /// Write a synthetic recording of job life cycles (for demos and tests).
    Sample(SampleArgs),
    /// Measure replay, live ingestion and latency against their ceilings on databases it creates and drops.
    Bench(BenchArgs),
    /// Print the effective configuration (files, then environment, then flags) with secrets redacted.
    Config {
        #[command(flatten)]
        settings: SettingArgs<ALL>,
        /// Print it as YAML with upstream's key names.
        #[arg(long, required = true)]
        show: bool,
    },
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    settings: SettingArgs<{ PULSAR | LOG }, DATABASE>,
    /// File to write.
    #[arg(long)]
    out: PathBuf,
    /// Gzip the file.
    #[arg(long)]
    gzip: bool,
    /// Replace --out if it exists (it is kept otherwise).
    #[arg(long)]
    force: bool,
    /// Skip messages published before this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Stop once the topic has been quiet this long (e.g. 5s).
    #[arg(long, default_value = "5s")]
    idle: String,
    /// Stop after this many messages.
    #[arg(long)]
    max_messages: Option<u64>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    settings: SettingArgs<DATABASE>,
    /// Size of the generated workload, in events.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Seed of the workload generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of jobs whose run fails (0 to 1).
    #[arg(long, default_value_t = 0.2)]
    failure_ratio: f64,
    /// Failures carry no FailureInfo (to measure its cost).
    #[arg(long)]
    no_failure_info: bool,
    /// Jobs in flight at once in the generated topic.
    #[arg(long, default_value_t = 5_000)]
    in_flight: u32,
    /// Seconds over which each job's events are spread, at most.
    #[arg(long, default_value_t = 600)]
    window: u32,
    /// Skip the live catch-up and latency measurements (no broker needed).
    #[arg(long)]
    no_live: bool,
    /// Use this broker instead of starting pulsar-lite and the proxy.
    #[arg(long)]
    pulsar_url: Option<String>,
    /// Seconds of publishing at each latency rate.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Messages/s of the first latency measurement, instead of half the catch-up rate.
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Also keep the generated workload as a recording in this file (to replay or profile it alone).
    #[arg(long, value_name = "FILE")]
    save_workload: Option<PathBuf>,
    /// Messages per broker entry in the live parts, as `publish --batch`:
    /// 1000 publishes as Armada does, 1 one message per entry (earlier rounds).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    producer_batch: u32,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
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
}

#[derive(Subcommand, Debug)]
pub enum ReportKind {
    /// Failed runs of a period by queue and category, by exit code, their most
    /// common messages, and the change against the period before.
    Failures(FailuresArgs),
}

#[derive(Args, Debug)]
pub struct FailuresArgs {
    /// Length of the period, ending at --until: e.g. 24h, 7d, 90m.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    since: String,
    /// End of the period (RFC 3339, e.g. 2026-11-23T10:00:00Z); default now.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML page with a chart to this file.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// How many of the most common messages to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
}

#[derive(Subcommand, Debug)]
pub enum DeadLetterAction {
    /// One line per dead letter (oldest first, at most --limit N, 1000); --json: one JSON object per line.
    List {
        /// One JSON object per line instead of one summary line per dead letter.
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Everything about one dead letter, with what its payload decodes to.
    Show {
        /// The dead letter's id (the first column of `list`).
        id: i64,
    },
    /// Send one dead letter (ID) or every one (--all) through the normal path again; those that now apply are removed.
    Retry {
        /// The dead letter to retry.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Retry every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters older than --older-than DURATION (e.g. 30d or 720h).
    Purge {
        /// Age of the dead letters to delete: a duration such as 30d, 12h or 90m.
        #[arg(long, value_name = "DURATION")]
        older_than: String,
    },
    /// Move dead letters from the local spool file into the table.
    Flush,
}

// What a setting flag is about; each command takes the groups it uses, so
// that no command accepts a flag it would ignore.
const DATABASE: u16 = 1;
const PULSAR: u16 = 2;
const BATCH: u16 = 4;
const CONVERT: u16 = 8;
const STORE: u16 = 16;
const SPOOL: u16 = 32;
const METRICS: u16 = 64;
const SUBSCRIPTION: u16 = 128;
/// `--retry-for`: one-shot commands only (`run` retries for ever).
const RETRY: u16 = 256;
/// `--log-format`, `--log-level`: every command that loads settings.
const LOG: u16 = 1024;
/// Not a group: the command's setting flags are accepted after its
/// subcommand too (`dead-letters list --database-url URL`).
const GLOBAL: u16 = 512;
/// `/healthz` and the heartbeat of `run`.
const HEALTH: u16 = 2048;
/// How `status` judges heartbeats.
const FLEET: u16 = 4096;
const ALL: u16 = 511 | LOG | HEALTH | FLEET;
const RUN: u16 = ALL & !RETRY & !FLEET;
const STATUS: u16 = DATABASE | RETRY | FLEET | LOG;
const MIGRATE: u16 = DATABASE | RETRY | LOG;
const REPLAY: u16 = DATABASE | BATCH | CONVERT | STORE | SPOOL | RETRY | LOG;
const DEAD_LETTERS: u16 = DATABASE | CONVERT | STORE | SPOOL | RETRY | LOG;
const REPORT: u16 = DATABASE | RETRY | LOG;

/// A flag that sets a configuration key.
pub struct Flag {
    pub long: &'static str,
    /// The key it sets (see [`config`]).
    pub key: &'static str,
    group: u16,
    help: &'static str,
    /// Repeatable and comma-separated: the values form a list.
    list: bool,
    /// Appended to the value (a flag in other units than the key's).
    suffix: &'static str,
    /// Kept for old command lines, not shown in help.
    hidden: bool,
    env: Option<&'static str>,
}

const fn flag(long: &'static str, key: &'static str, group: u16, help: &'static str) -> Flag {
    Flag {
        long,
        key,
        group,
        help,
        list: false,
        suffix: "",
        hidden: false,
        env: None,
    }
}

/// Every setting flag. The README's configuration table lists the visible
/// ones beside their keys (a test keeps the two in step).
pub const FLAGS: &[Flag] = &[
    Flag {
        env: Some("LOOKOUT_DATABASE_URL"),
        ..flag(
            "database-url",
            "postgres.connection",
            DATABASE,
            "Postgres URL or key=value string, instead of postgres.connection",
        )
    },
    flag("pulsar-url", "pulsar.URL", PULSAR, "Pulsar service URL"),
    flag("topic", "pulsar.jobsetEventsTopic", PULSAR, "Topic"),
    flag(
        "subscription",
        "subscriptionName",
        SUBSCRIPTION,
        "Subscription name",
    ),
    flag(
        "subscription-type",
        "subscriptionType",
        SUBSCRIPTION,
        "Failover (default), Exclusive, Shared or KeyShared",
    ),
    flag("batch-size", "batchSize", BATCH, "Events per batch"),
    flag(
        "batch-duration",
        "batchDuration",
        BATCH,
        "Longest wait for a batch to fill, e.g. 500ms",
    ),
    Flag {
        suffix: "ms",
        hidden: true,
        ..flag(
            "batch-duration-ms",
            "batchDuration",
            BATCH,
            "Longest wait for a batch to fill, in milliseconds",
        )
    },
    flag(
        "metrics-port",
        "metricsPort",
        METRICS,
        "Port of /metrics, /healthz and /readyz (0 = off)",
    ),
    flag(
        "bind",
        "metricsBind",
        METRICS,
        "Address the HTTP server listens on, e.g. 127.0.0.1 (default 0.0.0.0)",
    ),
    flag(
        "log-format",
        "logFormat",
        LOG,
        "Log lines as text (default) or json, one object per line",
    ),
    flag(
        "log-level",
        "logLevel",
        LOG,
        "Log level or filter, e.g. debug (RUST_LOG wins when set; default info)",
    ),
    flag(
        "dead-letter-spool",
        "deadLetterSpool",
        SPOOL,
        "File for dead letters Postgres refuses (flushed into the table later)",
    ),
    flag(
        "max-backoff",
        "maxBackoff",
        STORE,
        "Longest wait between retries, in seconds",
    ),
    flag(
        "retry-for",
        "retryFor",
        RETRY,
        "Give up on an unreachable or refusing database after this long, e.g. 2m",
    ),
    Flag {
        list: true,
        ..flag(
            "fatal-insertion-error",
            "fatalInsertionErrors",
            STORE,
            "Regex; a Postgres error whose message matches is never retried (repeatable)",
        )
    },
    flag(
        "user-annotation-prefix",
        "annotations.userAnnotationPrefix",
        CONVERT,
        "Prefix stripped from user annotation keys",
    ),
    Flag {
        list: true,
        ..flag(
            "annotation-blocklist",
            "annotations.blocklistAnnotations",
            CONVERT,
            "Annotation keys never stored, case-insensitive (repeatable, or comma-separated)",
        )
    },
    flag(
        "min-job-spec-compression-size",
        "minJobSpecCompressionSize",
        CONVERT,
        "Job specs and error texts longer than this many bytes are compressed",
    ),
    flag(
        "stall-timeout",
        "health.stallTimeout",
        HEALTH,
        "/healthz fails once messages waited this long with nothing committed, e.g. 3m",
    ),
    flag(
        "replica-id",
        "heartbeat.replicaId",
        HEALTH,
        "This replica's id in ingester_heartbeat (default <hostname>-<pid>)",
    ),
    flag(
        "heartbeat-interval",
        "heartbeat.interval",
        HEALTH,
        "How often the heartbeat is written, e.g. 10s",
    ),
    flag(
        "heartbeat-retention",
        "heartbeat.retention",
        HEALTH,
        "Heartbeat rows not written for this long are deleted, e.g. 7d",
    ),
    flag(
        "stale-after",
        "heartbeat.staleAfter",
        FLEET,
        "A replica without a heartbeat for this long is stale (crashed unless it stopped), e.g. 1m",
    ),
];

/// `--config` files and the setting flags of the groups in `G`, as the
/// `(key, value)` pairs they set. The flags of the groups in `H` are
/// accepted but not shown in help (a shared `--database-url` on a command
/// that does not use it).
#[derive(Debug, Clone, Default)]
pub struct SettingArgs<const G: u16, const H: u16 = 0> {
    pub config: Vec<PathBuf>,
    pub flags: Vec<(&'static str, Value)>,
    /// Where the database setting came from, when a flag or its variable set it.
    pub database_source: Option<&'static str>,
}

impl<const G: u16, const H: u16> SettingArgs<G, H> {
    fn flags() -> impl Iterator<Item = &'static Flag> {
        FLAGS.iter().filter(|f| f.group & (G | H) & ALL != 0)
    }

    /// Loads the configuration, logging what was odd about it.
    pub fn load(&self) -> anyhow::Result<config::Config> {
        // vars() would panic on a variable that is not UTF-8; such a one is no ARMADA_* key.
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        let loaded = config::load(&self.config, env, &self.flags)?;
        crate::logging::apply(
            loaded.config.service.log_format,
            &loaded.config.service.log_level,
        );
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        // --database-url (or its variable LOOKOUT_DATABASE_URL) replaces
        // postgres.connection from files and ARMADA_*: say which one won.
        if let Some(source) = self.database_source {
            tracing::info!(
                "Postgres connection from {source}, which overrides postgres.connection \
                 in config files and ARMADA_POSTGRES_CONNECTION*"
            );
        }
        Ok(loaded.config)
    }
}

impl<const G: u16, const H: u16> FromArgMatches for SettingArgs<G, H> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let config = m
            .get_many::<PathBuf>("config")
            .map(|v| v.cloned().collect())
            .unwrap_or_default();
        let mut flags = Vec::new();
        let mut database_source = None;
        for f in Self::flags() {
            let Some(values) = m.get_many::<String>(f.long) else {
                continue;
            };
            if f.key == "postgres.connection" {
                database_source = Some(match (m.value_source(f.long), f.env) {
                    (Some(clap::parser::ValueSource::EnvVariable), Some(env)) => env,
                    _ => "--database-url",
                });
            }
            let mut values = values.map(|v| Value::String(format!("{v}{}", f.suffix)));
            let value = if f.list {
                Value::Sequence(values.collect())
            } else {
                values.next().unwrap_or(Value::Null)
            };
            flags.push((f.key, value));
        }
        Ok(SettingArgs {
            config,
            flags,
            database_source,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl<const G: u16, const H: u16> Args for SettingArgs<G, H> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let config = Arg::new("config")
            .long("config")
            .value_name("FILE")
            .action(ArgAction::Append)
            .value_parser(clap::value_parser!(PathBuf))
            .help("Upstream lookoutingester YAML; repeatable, later files override earlier ones")
            .global(G & GLOBAL != 0);
        Self::flags().fold(cmd.arg(config), |cmd, f| {
            let mut arg = Arg::new(f.long)
                .long(f.long)
                .help(format!("{} [key: {}]", f.help, f.key))
                .hide(f.hidden || f.group & G == 0)
                .global(G & GLOBAL != 0);
            // Two flags for one key (a unit alias) cannot both be given.
            for other in Self::flags().filter(|o| o.key == f.key && o.long != f.long) {
                arg = arg.conflicts_with(other.long);
            }
            if f.list {
                arg = arg.action(ArgAction::Append).value_delimiter(',');
            }
            if let Some(env) = f.env {
                // The value may hold a password: never shown in help.
                arg = arg.env(env).hide_env_values(true);
            }
            cmd.arg(arg)
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    crate::logging::init(
        || ScrubbingStderr,
        crate::logging::format_from_args(&args).unwrap_or_default(),
    );
    install_panic_hook();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            // clap quotes what it could not parse, which may be a
            // connection string after a mistyped flag.
            let text = scrub_args(&e.render().to_string(), &args);
            let use_stderr = e.use_stderr();
            if use_stderr {
                eprint!("{}", config::scrub(&text));
            } else {
                print!("{text}");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    warn_password_on_command_line(&args);
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
            // One line, whatever the error chain holds, each cause once.
            let text = config::scrub(&crate::pg::error_chain(e.as_ref())).replace('\n', " ");
            eprintln!("{}", crate::logging::fatal_line(&text));
            ExitCode::FAILURE
        }
    }
}

/// `rendered` with every command-line argument that holds a password
/// replaced by its redacted form.
fn scrub_args(rendered: &str, args: &[std::ffi::OsString]) -> String {
    let mut out = rendered.to_string();
    for arg in args {
        let arg = arg.to_string_lossy();
        let redacted = redact(&arg);
        if redacted != arg && !arg.is_empty() {
            out = out.replace(arg.as_ref(), &redacted);
        }
    }
    out
}

/// A password in argv is readable by every user of the machine (`ps`), a
/// leak this process cannot undo; say so once, without the password.
fn warn_password_on_command_line(args: &[std::ffi::OsString]) {
    let given = args.iter().any(|a| {
        let a = a.to_string_lossy();
        redact(&a) != a
    });
    if given {
        tracing::warn!(
            "a password was given on the command line, where other users of this machine can \
             read it; use a --config file, LOOKOUT_DATABASE_URL or PGPASSWORD instead"
        );
    }
}

/// Panics print where they happened and their message with known secrets
/// scrubbed, never a backtrace of values.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("panic at {at}: {}", config::scrub(&msg).replace('\n', " "));
    }));
}

/// Stderr with every registered secret scrubbed ([`config::scrub`]): the
/// formatter hands over one whole event per write, so a secret is never
/// split across two writes.
struct ScrubbingStderr;

impl std::io::Write for ScrubbingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(config::scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Runs one subcommand.
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { settings } => run_live(&settings).await,
        Command::Record(args) => record(args).await,
        Command::Publish {
            settings,
            files,
            batch,
        } => publish(&settings, &files, record::Entries::of(batch)).await,
        Command::Migrate {
            settings,
            status,
            to,
            allow_drop,
        } => migrate(&settings, status, to, allow_drop).await,
        Command::Replay {
            settings,
            force,
            read_past_corrupt,
            files,
        } => replay(&settings, force, read_past_corrupt, files).await,
        Command::DeadLetters { settings, action } => dead_letters(&settings, action).await,
        Command::Status { settings, json } => fleet_status(&settings, json).await,
        Command::Report {
            settings,
            kind: ReportKind::Failures(args),
        } => report_failures(&settings, &args).await,
        Command::Sample(args) => write_sample(&args),
        Command::Bench(args) => bench(args).await,
        Command::Config { settings, .. } => {
            print!("{}", config::show(&settings.load()?));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `run`: live ingestion until SIGTERM or SIGINT.
async fn run_live(settings: &SettingArgs<RUN>) -> anyhow::Result<ExitCode> {
    let cfg = settings.load()?;
    tracing::info!(
        "lookout-ingester {} starting: topic {} on {}, subscription {} ({:?}), database {}",
        env!("CARGO_PKG_VERSION"),
        cfg.pulsar.topic,
        crate::source::pulsar::target(&cfg.pulsar.url),
        cfg.pulsar.subscription,
        cfg.pulsar.subscription_kind,
        crate::pg::PgSettings::from_config(&cfg.postgres)?.target()
    );
    let (_keep, stop) = live::signal_stop()?;
    live::run(cfg, stop).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `record`: copy the topic into a recorded file.
async fn record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.settings.load()?;
    let since_ms = match &args.since {
        None => None,
        Some(s) => {
            let t = chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| anyhow::anyhow!("--since {s:?} is not an RFC 3339 time: {e}"))?;
            Some(u64::try_from(t.timestamp_millis()).unwrap_or(0))
        }
    };
    let idle = parse_duration(&args.idle).map_err(|e| anyhow::anyhow!("--idle: {e}"))?;
    let opts = record::RecordOptions {
        since_ms,
        idle,
        max_messages: args.max_messages,
        gzip: args.gzip,
        force: args.force,
    };
    let r = record::record(&cfg.pulsar, &args.out, &opts).await?;
    println!("{}", r.summary(&cfg.pulsar.topic, &args.out));
    Ok(ExitCode::SUCCESS)
}

/// `publish`: send recorded files to the topic.
async fn publish(
    settings: &SettingArgs<{ PULSAR | LOG }, DATABASE>,
    files: &[PathBuf],
    entries: record::Entries,
) -> anyhow::Result<ExitCode> {
    let cfg = settings.load()?;
    let n = record::publish(&cfg.pulsar, files, entries).await?;
    println!("published {n} messages to {}", cfg.pulsar.topic);
    Ok(ExitCode::SUCCESS)
}

/// `migrate`: bring the schema to the target generation, or print its
/// state (exiting non-zero on a database newer than the binary).
async fn migrate(
    settings: &SettingArgs<MIGRATE>,
    status: bool,
    to: Option<i64>,
    allow_drop: bool,
) -> anyhow::Result<ExitCode> {
    let cfg = settings.load()?;
    let pg = crate::pg::PgSettings::from_config(&cfg.postgres)?;
    let mut client = crate::pg::connect_one_shot(&pg, cfg.store.retry_for).await?;
    if status {
        let status = migrate::status(&client).await?;
        print!("{status}");
        if status.newer_than_binary() {
            anyhow::bail!(
                "the database's schema version {} is newer than this binary's latest ({}); \
                 run a lookout-ingester built for it",
                status.current,
                status.latest
            );
        }
    } else {
        let target = to.unwrap_or(migrate::DEFAULT_TARGET);
        print!(
            "{}",
            migrate::upgrade(&mut client, target, allow_drop).await?
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `replay`: apply recorded files, print the summary.
async fn replay(
    settings: &SettingArgs<REPLAY>,
    force: bool,
    read_past_corrupt: bool,
    files: Vec<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let cfg = settings.load()?;
    deadletter::check_spool(&cfg.service.dead_letter_spool)?;
    let pg = crate::pg::PgSettings::from_config(&cfg.postgres)?;
    drop(crate::pg::connect_one_shot(&pg, cfg.store.retry_for).await?);
    let pool = crate::pg::pool(&pg, store::WRITE_CONNECTIONS + 2)?;
    let store = Arc::new(store::Store::new(pool.clone(), cfg.store));
    let dead = DeadLetters::new(pool, cfg.service.dead_letter_spool);
    let converter = Converter::new(cfg.convert);
    let (_keep, stop) = live::signal_stop()?;
    let options = replay::Options {
        force,
        read_past_corrupt,
        progress: std::io::stderr().is_terminal(),
        stop: Some(stop),
    };
    let summary = replay::replay_with(files, converter, store, dead, cfg.pipeline, options).await?;
    print!("{summary}");
    Ok(if summary.interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if summary.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SKIPPED)
    })
}

/// `dead-letters`: inspect, retry, purge or flush dead letters.
async fn dead_letters(
    settings: &SettingArgs<{ DEAD_LETTERS | GLOBAL }>,
    action: DeadLetterAction,
) -> anyhow::Result<ExitCode> {
    let cfg = settings.load()?;
    let pg = crate::pg::PgSettings::from_config(&cfg.postgres)?;
    // Every action, not only `retry` (whose writes the store retries).
    drop(crate::pg::connect_one_shot(&pg, cfg.store.retry_for).await?);
    let pool = crate::pg::pool(&pg, 2)?;
    let dead = DeadLetters::new(pool.clone(), cfg.service.dead_letter_spool.clone());
    match action {
        DeadLetterAction::List { json, limit } => {
            let list = dead.list(limit).await?;
            if list.is_empty() {
                // Not on stdout with --json: that stays one object per line.
                if json {
                    eprintln!("no dead letters");
                } else {
                    println!("no dead letters");
                }
            }
            for d in list {
                if json {
                    println!("{}", serde_json::to_string(&d)?);
                } else {
                    println!("{}", deadletter::list_line(&d));
                }
            }
        }
        DeadLetterAction::Show { id } => {
            let Some(d) = dead.get(id).await? else {
                anyhow::bail!("no dead letter {id}");
            };
            print!("{}", deadletter::show_view(&d));
        }
        DeadLetterAction::Retry { id, all } => {
            let ids = if all {
                dead.ids().await?
            } else {
                id.into_iter().collect()
            };
            let store = store::Store::new(pool, cfg.store);
            let converter = Converter::new(cfg.convert);
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
            let d =
                parse_duration(&older_than).map_err(|e| anyhow::anyhow!("--older-than: {e}"))?;
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

/// `status`: the replicas' heartbeats, as text or JSON. Gives up on an
/// unreachable database after `retryFor`.
async fn fleet_status(settings: &SettingArgs<STATUS>, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = settings.load()?;
    let pg = crate::pg::PgSettings::from_config(&cfg.postgres)?;
    let client = crate::pg::connect_one_shot(&pg, cfg.store.retry_for).await?;
    let fleet = status::fleet(&client, cfg.heartbeat.stale_after).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&fleet)?);
    } else {
        print!("{}", status::render(&fleet));
    }
    Ok(ExitCode::SUCCESS)
}

/// `report failures`: the failed runs of a period, as text or JSON, and
/// optionally as an HTML page.
async fn report_failures(
    settings: &SettingArgs<{ REPORT | GLOBAL }>,
    args: &FailuresArgs,
) -> anyhow::Result<ExitCode> {
    let length = parse_duration(&args.since).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let until = match &args.until {
        None => chrono::Utc::now(),
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| anyhow::anyhow!("--until {s:?} is not an RFC 3339 time: {e}"))?
            .with_timezone(&chrono::Utc),
    };
    let period = crate::report::Period::new(until, length).map_err(anyhow::Error::msg)?;
    let cfg = settings.load()?;
    let pg = crate::pg::PgSettings::from_config(&cfg.postgres)?;
    let mut client = crate::pg::connect_one_shot(&pg, cfg.store.retry_for).await?;
    let report =
        crate::report::failures(&mut client, period, args.queue.as_deref(), args.top).await?;
    if let Some(path) = &args.html {
        std::fs::write(path, crate::report::html::render(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    if let Some(path) = &args.html {
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench`: the figures as a table, then one JSON line.
async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.settings.load()?;
    if !(0.0..=1.0).contains(&args.failure_ratio) {
        anyhow::bail!(
            "--failure-ratio: expected a number from 0 to 1, got {}",
            args.failure_ratio
        );
    }
    let opts = crate::bench::Options {
        workload: crate::workload::Options {
            seed: args.seed,
            events: args.events,
            failure_ratio: args.failure_ratio,
            failure_info: !args.no_failure_info,
            in_flight: args.in_flight,
            window_secs: args.window,
            ..Default::default()
        },
        live: !args.no_live,
        pulsar_url: args.pulsar_url,
        latency_secs: args.latency_secs,
        latency_rate: args.latency_rate,
        entries: crate::record::Entries::of(args.producer_batch),
        save_workload: args.save_workload,
        config_files: args.settings.config.clone(),
    };
    let figures = crate::bench::run(cfg, opts).await?;
    print!("{}", figures.table());
    println!("{}", serde_json::to_string(&figures)?);
    Ok(ExitCode::SUCCESS)
}

/// `sample`: write a synthetic recording.
fn write_sample(args: &SampleArgs) -> anyhow::Result<ExitCode> {
    let w = sample::write_file(&args.out, args.seed, args.jobs, args.gzip)?;
    println!(
        "wrote {} records, {} events to {}",
        w.records,
        w.events,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The connection string without its password: the URL form
/// (`user:secret@`) and the key=value form (`password=secret`). For
/// scrubbing text that may quote one (clap's errors); to name a target, use
/// [`config::describe_postgres_target`] instead.
pub fn redact(url: &str) -> String {
    if !url.contains("://") {
        return redact_key_values(url);
    }
    let Some((base, query)) = url.split_once('?') else {
        return redact_userinfo(url);
    };
    // URL parameters are `&`-separated key=value pairs (spaces are escaped).
    let query = redact_key_values(&query.replace('&', " ")).replace(' ', "&");
    format!("{}?{query}", redact_userinfo(base))
}

fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!(
                    "{}{}:{}{}",
                    &url[..s + 3],
                    &creds[..c],
                    config::REDACTED_TEXT,
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Replaces the value of `password=` in a libpq key=value string (quoted
/// values included) with `<redacted>`.
fn redact_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = find_key(rest, "password") {
        out.push_str(&rest[..at]);
        let after = rest[at + "password".len()..].trim_start();
        let Some(value) = after.strip_prefix('=') else {
            out.push_str(&rest[at..]);
            return out;
        };
        out.push_str("password=");
        out.push_str(config::REDACTED_TEXT);
        let value = value.trim_start();
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            // Up to the closing quote, skipping backslash escapes.
            let mut escaped = false;
            quoted
                .char_indices()
                .find(|&(_, c)| {
                    let close = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    close
                })
                .map(|(i, _)| i + 2)
                .unwrap_or(value.len())
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Where `key` starts as a whole keyword (at the start or after whitespace).
fn find_key(s: &str, key: &str) -> Option<usize> {
    s.match_indices(key)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || s[..i].ends_with(char::is_whitespace))
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
        let redact = |s: &str| redact(s).replace(config::REDACTED_TEXT, "***");
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("dbname=lookout host=h password=psw port=5432"),
            "dbname=lookout host=h password=*** port=5432"
        );
        assert_eq!(redact("password = 'a \\' b' user=u"), "password=*** user=u");
        assert_eq!(redact("host=h user=u"), "host=h user=u");
        assert_eq!(redact("password=a?b host=h"), "password=*** host=h");
        assert_eq!(
            redact("postgres://u@h/db?sslmode=disable&password=secret&x=1"),
            "postgres://u@h/db?sslmode=disable&password=***&x=1"
        );
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lookout-ingester").chain(args.iter().copied()))
    }

    #[test]
    fn flags_set_keys_and_old_spellings_still_work() {
        let cli = parse(&[
            "replay",
            "--batch-duration-ms",
            "250",
            "--fatal-insertion-error",
            "a",
            "--fatal-insertion-error",
            "b",
            "--annotation-blocklist",
            "x,y",
            "--max-backoff",
            "5",
            "f.bin",
        ])
        .expect("parse");
        let Command::Replay { settings, .. } = cli.command else {
            panic!("not replay");
        };
        let cfg = config::load(&settings.config, Vec::new(), &settings.flags)
            .expect("load")
            .config;
        assert_eq!(cfg.pipeline.batch_duration.as_millis(), 250);
        assert_eq!(cfg.store.fatal_errors.len(), 2);
        assert_eq!(cfg.convert.annotation_blocklist, ["x", "y"]);
        assert_eq!(cfg.store.max_backoff.as_secs(), 5);
        assert!(parse(&[
            "replay",
            "--batch-duration",
            "1s",
            "--batch-duration-ms",
            "5",
            "f"
        ])
        .is_err());
    }

    #[test]
    fn migrate_targets() {
        let target = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Command::Migrate { to, allow_drop, .. }) => Ok((to, allow_drop)),
            Ok(other) => panic!("not migrate: {other:?}"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(target(&["migrate"]), Ok((None, false)));
        assert_eq!(target(&["migrate", "--to", "32"]), Ok((Some(32), false)));
        assert_eq!(target(&["migrate", "--to", "031"]), Ok((Some(31), false)));
        assert_eq!(
            target(&["migrate", "--to", "latest", "--allow-drop"]),
            Ok((Some(migrate::latest_version()), true))
        );
        let invalid = Err(clap::error::ErrorKind::ValueValidation);
        for bad in ["36", "30", "1", "x", ""] {
            assert_eq!(target(&["migrate", "--to", bad]), invalid, "--to {bad:?}");
        }
        let conflict = Err(clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(target(&["migrate", "--status", "--to", "35"]), conflict);
        assert_eq!(target(&["migrate", "--status", "--allow-drop"]), conflict);
    }

    #[test]
    fn migrate_takes_only_the_database() {
        assert!(parse(&["migrate", "--config", "c.yaml", "--database-url", "x"]).is_ok());
        for flag in FLAGS.iter().filter(|f| f.group & MIGRATE == 0) {
            let err = parse(&["migrate", &format!("--{}", flag.long), "1"]);
            assert!(err.is_err(), "migrate accepts --{}", flag.long);
        }
    }

    /// Every flag sets a key the loader knows, and the README's table shows
    /// each visible flag beside its key.
    #[test]
    fn flags_match_keys_and_readme() {
        let known: Vec<String> = config::known_keys().into_iter().map(|k| k.path).collect();
        for f in FLAGS {
            assert!(known.iter().any(|k| k == f.key), "--{}: {}", f.long, f.key);
        }
        let readme = include_str!("../README.md");
        let mut in_readme: Vec<(String, String)> = Vec::new();
        for (key, flags) in config::tests::readme_table(readme) {
            for f in flags.iter().filter(|f| f.starts_with("--")) {
                in_readme.push((f.trim_start_matches("--").to_string(), key.clone()));
            }
        }
        in_readme.sort();
        let mut visible: Vec<(String, String)> = FLAGS
            .iter()
            .filter(|f| !f.hidden)
            .map(|f| {
                let key = if f.key == "postgres.connection" {
                    "postgres.connection.*"
                } else {
                    f.key
                };
                (f.long.to_string(), key.to_string())
            })
            .collect();
        visible.sort();
        assert_eq!(in_readme, visible);
    }
}

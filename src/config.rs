//! Configuration: upstream's lookoutingester YAML, environment variables and
//! command-line overrides, merged into one typed [`Config`].
//!
//! Layering, later wins: built-in defaults (upstream's
//! `config/lookoutingester/config.yaml`, hosts on 127.0.0.1) → each `--config`
//! file in order → `ARMADA_*` environment variables → flags. As with upstream
//! (viper), keys are case-insensitive and an environment variable is the key
//! path upper-cased with `_` between parts, e.g. `ARMADA_PULSAR_URL`,
//! `ARMADA_BATCHSIZE`, `ARMADA_POSTGRES_CONNECTION_HOST`.
//!
//! Unknown keys are warned about (returned in [`Loaded::warnings`]); an
//! invalid value stops start-up with an error naming the key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml::Value;

/// How the ingester subscribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionKind {
    Exclusive,
    Failover,
    Shared,
    KeyShared,
}

impl SubscriptionKind {
    /// Exclusive and Failover deliver each partition in order to one
    /// consumer, which is what allows cumulative acknowledgement.
    pub fn ordered(self) -> bool {
        matches!(
            self,
            SubscriptionKind::Exclusive | SubscriptionKind::Failover
        )
    }
}

/// Pulsar settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PulsarConfig {
    pub url: String,
    pub topic: String,
    pub subscription: String,
    pub subscription_kind: SubscriptionKind,
    pub receiver_queue_size: u32,
    /// Pause after a receive error, and first wait when reconnecting.
    pub backoff: Duration,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// JWT for token authentication, read from `pulsar.jwtTokenPath`.
    pub jwt_token_path: Option<PathBuf>,
    /// Skip redeliveries of messages already in flight or committed.
    pub skip_redelivered: bool,
}

/// The whole typed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// A libpq-style `key=value` connection string or a `postgres://` URL.
    pub database_url: String,
    pub metrics_port: u16,
    pub pulsar: PulsarConfig,
    pub batch_size: usize,
    pub batch_duration: Duration,
    pub convert: crate::convert::Settings,
    /// Longest wait between Postgres retries.
    pub max_backoff: Duration,
    /// Regexes; matching Postgres errors are never retried.
    pub fatal_insertion_errors: Vec<String>,
    /// Local append-only file for dead letters Postgres refuses.
    pub dead_letter_spool: PathBuf,
}

/// A loaded configuration and what was odd about its sources.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("config file {path} is not valid YAML: {err}")]
    Yaml {
        path: String,
        err: serde_yaml::Error,
    },
    #[error("{key}: {msg}")]
    Invalid { key: String, msg: String },
}

/// Where dead letters go when Postgres refuses them (relative to the working directory).
pub const DEFAULT_SPOOL: &str = "lookout-ingester-dead-letters.jsonl";

/// Upstream's defaults, with hosts on loopback.
pub const DEFAULTS: &str = r#"
postgres:
  connection:
    host: 127.0.0.1
    port: 5432
    user: postgres
    password: psw
    dbname: lookout
    sslmode: disable
metricsPort: 9002
pulsar:
  URL: "pulsar://127.0.0.1:6650"
  jobsetEventsTopic: "events"
  backoffTime: 1s
  receiverQueueSize: 100
subscriptionName: "lookout-ingester-v2"
subscriptionType: Failover
batchSize: 10000
batchDuration: 500ms
minJobSpecCompressionSize: 1024
userAnnotationPrefix: "armadaproject.io/"
maxBackoff: 60
"#;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Str,
    U16,
    U32,
    Usize,
    Seconds,
    Duration,
    Bool,
    StrList,
    /// A map of free-form string values (postgres.connection).
    StrMap,
    /// Understood by upstream, meaningless here: accepted, not used.
    Ignored,
}

/// Every key we accept: canonical spelling (used in messages and for the
/// environment variable) and kind. Lookups are case-insensitive.
const KEYS: &[(&str, Kind)] = &[
    ("postgres.connection", Kind::StrMap),
    ("metricsPort", Kind::U16),
    ("pulsar.URL", Kind::Str),
    ("pulsar.jobsetEventsTopic", Kind::Str),
    ("pulsar.receiverQueueSize", Kind::U32),
    ("pulsar.backoffTime", Kind::Duration),
    ("pulsar.authenticationEnabled", Kind::Bool),
    ("pulsar.authenticationType", Kind::Str),
    ("pulsar.jwtTokenPath", Kind::Str),
    ("pulsar.restURL", Kind::Ignored),
    ("pulsar.delayMonitor", Kind::Ignored),
    ("pulsar.TLSTrustCertsFilePath", Kind::Ignored),
    ("pulsar.TLSAllowInsecureConnection", Kind::Ignored),
    ("pulsar.TLSValidateHostname", Kind::Ignored),
    ("pulsar.maxConnectionsPerBroker", Kind::Ignored),
    ("pulsar.controlPlaneEventsTopic", Kind::Ignored),
    ("pulsar.metricEventsTopic", Kind::Ignored),
    ("pulsar.compressionType", Kind::Ignored),
    ("pulsar.compressionLevel", Kind::Ignored),
    ("pulsar.maxAllowedEventsPerMessage", Kind::Ignored),
    ("pulsar.maxAllowedMessageSize", Kind::Ignored),
    ("pulsar.sendTimeout", Kind::Ignored),
    ("subscriptionName", Kind::Str),
    ("skipRedeliveredMessages", Kind::Bool),
    ("subscriptionType", Kind::Str),
    ("batchSize", Kind::Usize),
    ("batchDuration", Kind::Duration),
    ("pulsarReceiveTimeout", Kind::Ignored),
    ("pulsarBackoffTime", Kind::Duration),
    ("minJobSpecCompressionSize", Kind::Usize),
    ("userAnnotationPrefix", Kind::Str),
    ("annotations.blocklistAnnotations", Kind::StrList),
    ("annotations.userAnnotationPrefix", Kind::Str),
    ("maxBackoff", Kind::Seconds),
    ("fatalInsertionErrors", Kind::StrList),
    ("profiling", Kind::Ignored),
    ("deadLetterSpool", Kind::Str),
];

fn known(path: &str) -> Option<(&'static str, Kind)> {
    KEYS.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(path))
        .copied()
}

/// The environment variable that sets a key, as viper derives it.
pub fn env_name(key: &str) -> String {
    format!("ARMADA_{}", key.replace('.', "_").to_uppercase())
}

/// Flattens YAML into `lowercase.dotted.path → value`, stopping at known
/// leaves (maps such as postgres.connection stay whole). Unknown paths are
/// collected for warnings.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>, unknown: &mut Vec<String>) {
    if !prefix.is_empty() {
        if let Some((canon, kind)) = known(prefix) {
            if kind == Kind::StrMap {
                // Merge map entries so later layers can override single keys.
                if let Value::Mapping(m) = v {
                    for (k, val) in m {
                        let k = yaml_key(k);
                        out.insert(
                            format!("{}.{}", canon.to_lowercase(), k.to_lowercase()),
                            val.clone(),
                        );
                    }
                    return;
                }
            }
            out.insert(canon.to_lowercase(), v.clone());
            return;
        }
    }
    match v {
        Value::Mapping(m) => {
            for (k, val) in m {
                let k = yaml_key(k);
                let path = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, val, out, unknown);
            }
        }
        _ if prefix.is_empty() => {}
        _ => unknown.push(prefix.to_string()),
    }
}

fn yaml_key(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// Command-line overrides, applied last.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub pulsar_url: Option<String>,
    pub topic: Option<String>,
    pub subscription: Option<String>,
    pub subscription_type: Option<String>,
    pub batch_size: Option<usize>,
    pub batch_duration: Option<String>,
    pub metrics_port: Option<u16>,
    pub dead_letter_spool: Option<PathBuf>,
}

/// Loads configuration from `files` (in order), `env` (pass
/// `std::env::vars()`), and `overrides`.
pub fn load(
    files: &[PathBuf],
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Loaded, ConfigError> {
    let mut flat = BTreeMap::new();
    let mut warnings = Vec::new();
    let defaults: Value = serde_yaml::from_str(DEFAULTS).map_err(|err| ConfigError::Yaml {
        path: "<built-in defaults>".into(),
        err,
    })?;
    let mut unknown = Vec::new();
    flatten("", &defaults, &mut flat, &mut unknown);
    for path in files {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: name.clone(),
            err,
        })?;
        let doc: Value = serde_yaml::from_str(&text).map_err(|err| ConfigError::Yaml {
            path: name.clone(),
            err,
        })?;
        let mut unknown = Vec::new();
        flatten("", &doc, &mut flat, &mut unknown);
        for u in unknown {
            warnings.push(format!("{name}: unknown key {u:?} ignored"));
        }
    }
    let env: BTreeMap<String, String> = env.into_iter().collect();
    for (key, kind) in KEYS {
        if *kind == Kind::Ignored {
            continue;
        }
        if *kind == Kind::StrMap {
            let prefix = format!("{}_", env_name(key));
            for (name, val) in env.range(prefix.clone()..) {
                let Some(sub) = name.strip_prefix(&prefix) else {
                    break;
                };
                flat.insert(
                    format!("{}.{}", key.to_lowercase(), sub.to_lowercase()),
                    Value::String(val.clone()),
                );
            }
            continue;
        }
        if let Some(val) = env.get(&env_name(key)) {
            let v = if *kind == Kind::StrList {
                Value::Sequence(
                    val.split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.trim().into()))
                        .collect(),
                )
            } else {
                Value::String(val.clone())
            };
            flat.insert(key.to_lowercase(), v);
        }
    }
    let set = |flat: &mut BTreeMap<String, Value>, key: &str, v: Option<Value>| {
        if let Some(v) = v {
            flat.insert(key.to_lowercase(), v);
        }
    };
    set(
        &mut flat,
        "pulsar.URL",
        overrides.pulsar_url.clone().map(Value::String),
    );
    set(
        &mut flat,
        "pulsar.jobsetEventsTopic",
        overrides.topic.clone().map(Value::String),
    );
    set(
        &mut flat,
        "subscriptionName",
        overrides.subscription.clone().map(Value::String),
    );
    set(
        &mut flat,
        "subscriptionType",
        overrides.subscription_type.clone().map(Value::String),
    );
    set(
        &mut flat,
        "batchSize",
        overrides.batch_size.map(|n| Value::Number(n.into())),
    );
    set(
        &mut flat,
        "batchDuration",
        overrides.batch_duration.clone().map(Value::String),
    );
    set(
        &mut flat,
        "metricsPort",
        overrides.metrics_port.map(|n| Value::Number(n.into())),
    );

    let r = Reader { flat: &flat };
    let connection = r.connection();
    let database_url = match &overrides.database_url {
        Some(url) => url.clone(),
        None => connection,
    };
    let auth_enabled = r.bool("pulsar.authenticationEnabled")?.unwrap_or(false);
    let jwt_token_path = if auth_enabled {
        let kind = r.str("pulsar.authenticationType")?.unwrap_or_default();
        if !kind.eq_ignore_ascii_case("jwt") {
            return Err(invalid(
                "pulsar.authenticationType",
                format!("only JWT is supported, got {kind:?}"),
            ));
        }
        match r.str("pulsar.jwtTokenPath")? {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => {
                return Err(invalid(
                    "pulsar.jwtTokenPath",
                    "required when authentication is enabled".into(),
                ))
            }
        }
    } else {
        None
    };
    let subscription_kind = match r
        .str("subscriptionType")?
        .unwrap_or_default()
        .to_lowercase()
        .replace(['_', '-'], "")
        .as_str()
    {
        "failover" => SubscriptionKind::Failover,
        "exclusive" => SubscriptionKind::Exclusive,
        "shared" => SubscriptionKind::Shared,
        "keyshared" => SubscriptionKind::KeyShared,
        other => {
            return Err(invalid(
                "subscriptionType",
                format!("expected Failover, Exclusive, Shared or KeyShared, got {other:?}"),
            ))
        }
    };
    let backoff = match r.duration("pulsar.backoffTime")? {
        Some(d) => d,
        None => r
            .duration("pulsarBackoffTime")?
            .unwrap_or(Duration::from_secs(1)),
    };
    let max_backoff = r.seconds("maxBackoff")?.unwrap_or(Duration::from_secs(60));
    let batch_size = r.usize("batchSize")?.unwrap_or(10_000);
    if batch_size == 0 {
        return Err(invalid("batchSize", "must be at least 1".into()));
    }
    let batch_duration = r
        .duration("batchDuration")?
        .unwrap_or(Duration::from_millis(500));
    if batch_duration.is_zero() {
        return Err(invalid("batchDuration", "must be longer than zero".into()));
    }
    // upstream: annotations.userAnnotationPrefix wins over the deprecated top-level key.
    let prefix = match r.str("annotations.userAnnotationPrefix")? {
        Some(p) if !p.is_empty() => p,
        _ => r.str("userAnnotationPrefix")?.unwrap_or_default(),
    };
    let fatal = r.list("fatalInsertionErrors")?;
    for re in &fatal {
        if let Err(e) = regex::Regex::new(re) {
            return Err(invalid(
                "fatalInsertionErrors",
                format!("{re:?} is not a valid regex: {e}"),
            ));
        }
    }
    let config = Config {
        database_url,
        metrics_port: r.u16("metricsPort")?.unwrap_or(9002),
        pulsar: PulsarConfig {
            url: r.required_str("pulsar.URL")?,
            topic: r.required_str("pulsar.jobsetEventsTopic")?,
            subscription: r.required_str("subscriptionName")?,
            subscription_kind,
            receiver_queue_size: r.u32("pulsar.receiverQueueSize")?.unwrap_or(100).max(1),
            backoff,
            max_backoff,
            jwt_token_path,
            skip_redelivered: r.bool("skipRedeliveredMessages")?.unwrap_or(true),
        },
        batch_size,
        batch_duration,
        convert: crate::convert::Settings {
            user_annotation_prefix: prefix,
            annotation_blocklist: r.list("annotations.blocklistAnnotations")?,
            min_job_spec_compression_size: r.usize("minJobSpecCompressionSize")?.unwrap_or(1024),
        },
        max_backoff,
        fatal_insertion_errors: fatal,
        dead_letter_spool: PathBuf::from(
            r.str("deadLetterSpool")?
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| DEFAULT_SPOOL.to_string()),
        ),
    };
    Ok(Loaded { config, warnings })
}

fn invalid(key: &str, msg: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        msg,
    }
}

struct Reader<'a> {
    flat: &'a BTreeMap<String, Value>,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.flat.get(&key.to_lowercase())
    }

    fn scalar(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(invalid(
                key,
                "expected a single value, got a list or map".into(),
            )),
        }
    }

    fn str(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.scalar(key)
    }

    fn required_str(&self, key: &str) -> Result<String, ConfigError> {
        match self.scalar(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(invalid(key, "must not be empty".into())),
        }
    }

    fn parsed<T: std::str::FromStr>(
        &self,
        key: &str,
        what: &str,
    ) -> Result<Option<T>, ConfigError> {
        match self.scalar(key)? {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|_| invalid(key, format!("expected {what}, got {s:?}"))),
        }
    }

    fn u16(&self, key: &str) -> Result<Option<u16>, ConfigError> {
        self.parsed(key, "a port number (0-65535)")
    }

    fn u32(&self, key: &str) -> Result<Option<u32>, ConfigError> {
        self.parsed(key, "a non-negative integer")
    }

    fn usize(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        self.parsed(key, "a non-negative integer")
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.parsed(key, "true or false")
    }

    fn seconds(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        Ok(self
            .parsed::<u64>(key, "a whole number of seconds")?
            .map(Duration::from_secs))
    }

    fn duration(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.scalar(key)? {
            None => Ok(None),
            Some(s) => parse_duration(&s)
                .map(Some)
                .map_err(|msg| invalid(key, msg)),
        }
    }

    fn list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(invalid(key, "expected a list of strings".into())),
                })
                .collect(),
            Some(Value::String(s)) => Ok(s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()),
            Some(_) => Err(invalid(key, "expected a list of strings".into())),
        }
    }

    /// `postgres.connection.*` as a libpq key=value string, in key order.
    fn connection(&self) -> String {
        let prefix = "postgres.connection.";
        let mut parts = Vec::new();
        for (k, v) in self.flat.range(prefix.to_string()..) {
            let Some(name) = k.strip_prefix(prefix) else {
                break;
            };
            let val = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            parts.push(format!("{name}={}", quote_libpq(&val)));
        }
        parts.join(" ")
    }
}

fn quote_libpq(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\']) {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Parses a Go-style duration: `500ms`, `1s`, `1m30s`, `2h`, `1.5s`, `250us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("expected a duration such as 500ms, 1s or 1m30s, got {s:?}");
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(yaml: &[&str], env: &[(&str, &str)], o: &Overrides) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let files: Vec<PathBuf> = yaml
            .iter()
            .enumerate()
            .map(|(i, y)| {
                let p = dir.path().join(format!("c{i}.yaml"));
                std::fs::write(&p, y).expect("write");
                p
            })
            .collect();
        load(
            &files,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            o,
        )
    }

    #[test]
    fn defaults_match_upstream() {
        let c = load_str(&[], &[], &Overrides::default())
            .expect("load")
            .config;
        assert_eq!(c.pulsar.topic, "events");
        assert_eq!(c.pulsar.subscription, "lookout-ingester-v2");
        assert_eq!(c.pulsar.subscription_kind, SubscriptionKind::Failover);
        assert_eq!(c.pulsar.receiver_queue_size, 100);
        assert_eq!(c.pulsar.url, "pulsar://127.0.0.1:6650");
        assert_eq!(c.batch_size, 10_000);
        assert_eq!(c.batch_duration, Duration::from_millis(500));
        assert_eq!(c.metrics_port, 9002);
        assert_eq!(c.max_backoff, Duration::from_secs(60));
        assert_eq!(c.convert, crate::convert::Settings::default());
        assert_eq!(
            c.database_url,
            "dbname=lookout host=127.0.0.1 password=psw port=5432 sslmode=disable user=postgres"
        );
    }

    #[test]
    fn upstream_file_is_accepted_and_later_files_win() {
        let upstream = r#"
postgres:
  connection:
    host: postgres
    port: 5433
    user: postgres
    password: psw
    dbname: lookout
    sslmode: disable
metricsPort: 9002
pulsar:
  URL: "pulsar://pulsar:6650"
  restURL: "http://localhost:8090"
  jobsetEventsTopic: "events"
  backoffTime: 1s
  receiverQueueSize: 100
  delayMonitor:
    enabled: false
    interval: 30s
subscriptionName: "lookout-ingester-v2"
batchSize: 10000
batchDuration: 500ms
minJobSpecCompressionSize: 1024
userAnnotationPrefix: "armadaproject.io/"
maxBackoff: 60
"#;
        let over = "postgres:\n  connection:\n    host: db2\nbatchsize: 50\nannotations:\n  blocklistAnnotations: [a, B]\n";
        let l = load_str(&[upstream, over], &[], &Overrides::default()).expect("load");
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let c = l.config;
        assert_eq!(c.pulsar.url, "pulsar://pulsar:6650");
        assert_eq!(
            c.batch_size, 50,
            "keys are case-insensitive and later files win"
        );
        assert!(c.database_url.contains("host=db2") && c.database_url.contains("port=5433"));
        assert_eq!(
            c.convert.annotation_blocklist,
            vec!["a".to_string(), "B".to_string()]
        );
    }

    #[test]
    fn env_then_flags_override() {
        let env = [
            ("ARMADA_BATCHSIZE", "7"),
            ("ARMADA_PULSAR_URL", "pulsar://e:1"),
            ("ARMADA_POSTGRES_CONNECTION_HOST", "envhost"),
        ];
        let c = load_str(&["batchSize: 3"], &env, &Overrides::default())
            .expect("load")
            .config;
        assert_eq!(c.batch_size, 7);
        assert_eq!(c.pulsar.url, "pulsar://e:1");
        assert!(c.database_url.contains("host=envhost"));
        let o = Overrides {
            pulsar_url: Some("pulsar://flag:2".into()),
            database_url: Some("postgres://x@y/z".into()),
            batch_size: Some(9),
            ..Default::default()
        };
        let c = load_str(&[], &env, &o).expect("load").config;
        assert_eq!(
            (c.pulsar.url.as_str(), c.database_url.as_str(), c.batch_size),
            ("pulsar://flag:2", "postgres://x@y/z", 9)
        );
    }

    #[test]
    fn unknown_keys_warn_invalid_values_fail_naming_the_key() {
        let l = load_str(
            &["colour: blue\npulsar:\n  flavour: x\n"],
            &[],
            &Overrides::default(),
        )
        .expect("load");
        assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
        assert!(l.warnings.iter().any(|w| w.contains("pulsar.flavour")));
        for (yaml, key) in [
            ("batchSize: many", "batchSize"),
            ("batchDuration: soon", "batchDuration"),
            ("metricsPort: 70000", "metricsPort"),
            (
                "pulsar:\n  receiverQueueSize: -1",
                "pulsar.receiverQueueSize",
            ),
            ("subscriptionType: Roundrobin", "subscriptionType"),
            ("fatalInsertionErrors: ['(']", "fatalInsertionErrors"),
            ("batchSize: 0", "batchSize"),
        ] {
            let err = load_str(&[yaml], &[], &Overrides::default())
                .expect_err(yaml)
                .to_string();
            assert!(err.starts_with(key), "{yaml}: {err}");
        }
    }

    #[test]
    fn annotation_prefix_precedence() {
        let c = load_str(
            &["userAnnotationPrefix: old/\nannotations:\n  userAnnotationPrefix: new/"],
            &[],
            &Overrides::default(),
        )
        .expect("load")
        .config;
        assert_eq!(c.convert.user_annotation_prefix, "new/");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "5", "1x", "-1s", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn libpq_values_are_quoted() {
        assert_eq!(quote_libpq("a b"), "'a b'");
        assert_eq!(quote_libpq(""), "''");
        assert_eq!(quote_libpq("it's"), "'it\\'s'");
    }
}

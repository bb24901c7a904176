//! Configuration: upstream's lookoutingester YAML, `ARMADA_*` environment
//! variables and command-line flags, layered into one key map and
//! deserialised into the settings structs ([`Config`]).
//!
//! Layering, later wins: each `--config` file in order → `ARMADA_*`
//! environment variables → flags. A key no layer sets takes its default
//! from the settings struct's `Default` impl, the only place a default is
//! written (each field's doc line says what it is). As with upstream
//! (viper), keys are case-insensitive and an environment variable is the
//! key path upper-cased with `_` between parts, e.g. `ARMADA_PULSAR_URL`,
//! `ARMADA_BATCHSIZE`, `ARMADA_POSTGRES_CONNECTION_HOST`.
//!
//! The key map is flat (`pulsar.url` → value), so a later layer overrides
//! single keys, including single `postgres.connection` parameters. A settings
//! struct names its keys with serde renames, dotted where the key is nested
//! (`annotations.blocklistAnnotations`); the set of known keys is read from
//! the structs themselves (see [`known_keys`]), so adding an option touches
//! its struct field, the field's doc line and the README table, nothing else.
//!
//! Unknown keys are warned about (returned in [`Loaded::warnings`]); an
//! invalid value stops start-up with an error that starts with the key.
//! The key map and its deserializers are in `config/keymap.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_yaml::Value;

use crate::store::StoreSettings;
use crate::{convert, health, heartbeat, pipeline, values};

mod keymap;
use keymap::{keys_of, KeyMap};

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

impl<'de> Deserialize<'de> for SubscriptionKind {
    /// Case-insensitive, `_` and `-` ignored (`key_shared`, `Key-Shared`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.to_lowercase().replace(['_', '-'], "").as_str() {
            "failover" => Ok(SubscriptionKind::Failover),
            "exclusive" => Ok(SubscriptionKind::Exclusive),
            "shared" => Ok(SubscriptionKind::Shared),
            "keyshared" => Ok(SubscriptionKind::KeyShared),
            other => Err(de::Error::custom(format!(
                "expected Failover, Exclusive, Shared or KeyShared, got {other:?}"
            ))),
        }
    }
}

/// Pulsar settings.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct PulsarConfig {
    /// Service URL of the broker. Default: pulsar://127.0.0.1:6650
    #[serde(rename = "pulsar.URL", deserialize_with = "non_empty")]
    pub url: String,
    /// Topic of the job-set events. Default: events
    #[serde(rename = "pulsar.jobsetEventsTopic", deserialize_with = "non_empty")]
    pub topic: String,
    /// Subscription name. Default: lookout-ingester-v2
    #[serde(rename = "subscriptionName", deserialize_with = "non_empty")]
    pub subscription: String,
    /// Subscription type (ours). Default: Failover
    #[serde(rename = "subscriptionType")]
    pub subscription_kind: SubscriptionKind,
    /// Messages the consumer may hold; 0 counts as 1. Default: 100
    #[serde(rename = "pulsar.receiverQueueSize")]
    pub receiver_queue_size: u32,
    /// Pause after a receive error, and first wait when reconnecting. Default: 1s
    #[serde(rename = "pulsar.backoffTime", deserialize_with = "values::duration")]
    pub backoff: Duration,
    /// Longest wait between reconnect attempts: the store's `maxBackoff`,
    /// copied here by the loader.
    #[serde(skip)]
    pub max_backoff: Duration,
    /// JWT for token authentication, used when `pulsar.authenticationEnabled`.
    /// Default: none
    #[serde(rename = "pulsar.jwtTokenPath")]
    pub jwt_token_path: Option<PathBuf>,
    /// CA certificates (PEM) that may sign the broker's certificate, for
    /// `pulsar+ssl://` URLs; the system roots are trusted too. Default: none
    #[serde(rename = "pulsar.TLSTrustCertsFilePath")]
    pub tls_trust_certs_file_path: Option<PathBuf>,
    /// Accept any broker certificate (no chain or host name check).
    /// Default: false
    #[serde(rename = "pulsar.TLSAllowInsecureConnection")]
    pub tls_allow_insecure_connection: bool,
    /// Check that the broker's certificate names the host connected to; the
    /// chain is checked either way. Default: false (as upstream)
    #[serde(rename = "pulsar.TLSValidateHostname")]
    pub tls_validate_hostname: bool,
    /// OAuth2 issuer, used when `pulsar.authenticationType` is `OAuth2`
    /// (ours; the credentials file's `issuer_url` if empty). Default: none
    #[serde(rename = "pulsar.oauth2IssuerUrl")]
    pub oauth2_issuer_url: Option<String>,
    /// OAuth2 audience requested with the token (ours). Default: none
    #[serde(rename = "pulsar.oauth2Audience")]
    pub oauth2_audience: Option<String>,
    /// OAuth2 client credentials file, Pulsar's JSON format (`client_id`,
    /// `client_secret`, `issuer_url`), a path or `file://` URL (ours).
    /// Default: none
    #[serde(rename = "pulsar.oauth2PrivateKey")]
    pub oauth2_private_key: Option<PathBuf>,
    /// Skip redeliveries of messages already in flight or committed (ours).
    /// Default: true
    #[serde(rename = "skipRedeliveredMessages")]
    pub skip_redelivered: bool,
}

impl Default for PulsarConfig {
    fn default() -> Self {
        PulsarConfig {
            url: "pulsar://127.0.0.1:6650".into(),
            topic: "events".into(),
            subscription: "lookout-ingester-v2".into(),
            subscription_kind: SubscriptionKind::Failover,
            receiver_queue_size: 100,
            backoff: Duration::from_secs(1),
            max_backoff: StoreSettings::default().max_backoff,
            jwt_token_path: None,
            tls_trust_certs_file_path: None,
            tls_allow_insecure_connection: false,
            tls_validate_hostname: false,
            oauth2_issuer_url: None,
            oauth2_audience: None,
            oauth2_private_key: None,
            skip_redelivered: true,
        }
    }
}

/// Pulsar authentication switches; the loader turns them into
/// [`PulsarConfig::jwt_token_path`] or an error.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
struct PulsarAuth {
    /// Authenticate to the broker. Default: false
    #[serde(rename = "pulsar.authenticationEnabled")]
    enabled: bool,
    /// `JWT` or `OAuth2`. Default: empty
    #[serde(rename = "pulsar.authenticationType")]
    kind: String,
}

/// Where the Lookout database is.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct Postgres {
    /// libpq parameters, set key by key over the defaults (or, from
    /// `--database-url`, one whole URL or key=value string).
    /// Default: host=127.0.0.1 port=5432 user=postgres password=psw dbname=lookout sslmode=disable
    #[serde(rename = "postgres.connection")]
    pub connection: Connection,
    /// A file whose whole content (one trailing line break removed) is the
    /// password, e.g. a mounted Kubernetes secret; replaces any password in
    /// `postgres.connection`. Default: none
    #[serde(rename = "postgres.passwordFile")]
    pub password_file: Option<PathBuf>,
}

impl Postgres {
    /// A connection string for tokio-postgres: libpq key=value pairs in key
    /// order, or the whole string as given. May hold a password: pass it
    /// through `cli::redact` before printing.
    pub fn connection_string(&self) -> String {
        match &self.connection {
            Connection::Whole(s) => s.expose().to_string(),
            Connection::Params(params) => params
                .iter()
                .map(|(k, v)| format!("{k}={}", quote_libpq(v)))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// How to reach Postgres. Its Debug form never shows a password.
#[derive(Clone, PartialEq)]
pub enum Connection {
    /// `postgres.connection.*`: lower-cased libpq keywords and their values.
    Params(BTreeMap<String, String>),
    /// A `postgres://` URL or a libpq key=value string; it may hold a
    /// password anywhere, so it is a [`Secret`] as a whole.
    Whole(Secret),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connection::Params(params) => {
                let shown = params.iter().map(|(k, v)| {
                    let v: &dyn std::fmt::Debug = if is_secret_param(k) { &REDACTED } else { v };
                    (k, v)
                });
                f.debug_tuple("Params")
                    .field(&DebugMap(shown.collect()))
                    .finish()
            }
            Connection::Whole(s) => f.debug_tuple("Whole").field(s).finish(),
        }
    }
}

struct DebugMap<'a>(Vec<(&'a String, &'a dyn std::fmt::Debug)>);

impl std::fmt::Debug for DebugMap<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

/// What a secret prints as, everywhere.
pub const REDACTED_TEXT: &str = "<redacted>";

struct Redacted;
const REDACTED: Redacted = Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED_TEXT)
    }
}

/// libpq keywords whose value is a secret.
pub fn is_secret_param(key: &str) -> bool {
    key.eq_ignore_ascii_case("password")
}

/// A password, token or a string that may hold one. Debug and Display print
/// `<redacted>`, so neither `{:?}` of a config nor a careless `{}` can leak
/// it; [`Secret::expose`] is the one way to the text. Creating one also
/// registers the text with [`scrub`], the last line of defence of logs,
/// errors and panic messages.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        let s = s.into();
        register_secret(&s);
        Secret(s)
    }

    /// The secret text: only for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED_TEXT)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED_TEXT)
    }
}

/// Secrets seen by this process (passwords from the configuration, from a
/// whole connection string, from `PGPASSWORD`), for [`scrub`].
static SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Registers `s` (and its URL-encoded form) for [`scrub`]. Very short
/// strings are skipped: replacing every `a` in a log would help nobody.
pub fn register_secret(s: &str) {
    if s.chars().count() < 3 {
        return;
    }
    let mut forms = vec![s.to_string(), percent_encode(s)];
    // As a JSON log line spells it (`--log-format json`).
    if let Ok(quoted) = serde_json::to_string(s) {
        forms.push(quoted.trim_matches('"').to_string());
    }
    forms.sort();
    forms.dedup();
    let mut known = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    for form in forms {
        if !known.contains(&form) {
            known.push(form);
        }
    }
    // Longest first, so that a secret containing another is replaced whole.
    known.sort_by_key(|k| std::cmp::Reverse(k.len()));
}

/// `text` with every registered secret replaced by `<redacted>`: applied to
/// everything the process writes to stderr (logs, the final error, panics).
pub fn scrub(text: &str) -> std::borrow::Cow<'_, str> {
    let known = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    if !known.iter().any(|k| text.contains(k.as_str())) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for k in known.iter() {
        out = out.replace(k.as_str(), REDACTED_TEXT);
    }
    std::borrow::Cow::Owned(out)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The password a connection carries, wherever it sits in it.
fn connection_password(c: &Connection) -> Option<String> {
    match c {
        Connection::Params(params) => params
            .iter()
            .find(|(k, _)| is_secret_param(k))
            .map(|(_, v)| v.clone()),
        Connection::Whole(s) => s
            .expose()
            .parse::<tokio_postgres::Config>()
            .ok()?
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
    }
}

/// Where a connection goes, for messages: `host H port P database D user U`,
/// read from the parsed configuration, never by echoing the string (which
/// may hold a password anywhere). Parts the configuration leaves to libpq's
/// defaults print as `default`.
pub fn describe_postgres_target(pg: &Postgres) -> String {
    let (host, port, db, user) = match &pg.connection {
        Connection::Params(p) => {
            let get = |k: &str| p.get(k).cloned();
            (get("host"), get("port"), get("dbname"), get("user"))
        }
        Connection::Whole(s) => match s.expose().parse::<tokio_postgres::Config>() {
            Ok(c) => {
                let hosts: Vec<String> = c
                    .get_hosts()
                    .iter()
                    .map(|h| match h {
                        tokio_postgres::config::Host::Tcp(h) => h.clone(),
                        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                    })
                    .collect();
                let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
                let join = |v: Vec<String>| (!v.is_empty()).then(|| v.join(","));
                (
                    join(hosts),
                    join(ports),
                    c.get_dbname().map(str::to_string),
                    c.get_user().map(str::to_string),
                )
            }
            // The parse error is reported where the connection is made.
            Err(_) => return "an unparsable connection string".to_string(),
        },
    };
    let show = |v: Option<String>| v.unwrap_or_else(|| "default".to_string());
    format!(
        "host {} port {} database {} user {}",
        show(host),
        show(port),
        show(db),
        show(user)
    )
}

impl Connection {
    fn default_params() -> BTreeMap<String, String> {
        [
            ("host", "127.0.0.1"),
            ("port", "5432"),
            ("user", "postgres"),
            ("password", "psw"),
            ("dbname", "lookout"),
            ("sslmode", "disable"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Default for Connection {
    fn default() -> Self {
        Connection::Params(Connection::default_params())
    }
}

impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Connection;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("libpq connection parameters or a connection string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Connection, E> {
                Ok(Connection::Whole(Secret::new(s)))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Connection, A::Error> {
                // Set key by key over the defaults, as upstream's layered viper does.
                let mut params = Connection::default_params();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    params.insert(k.to_lowercase(), v);
                }
                Ok(Connection::Params(params))
            }
        }
        d.deserialize_map(V)
    }
}

/// An IP address (`127.0.0.1`, `::`).
fn ip_addr<'de, D: Deserializer<'de>>(d: D) -> Result<std::net::IpAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(|_| {
        de::Error::custom(format!(
            "expected an IP address such as 127.0.0.1 or ::, got {s:?}"
        ))
    })
}

/// Settings of this process's surroundings.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct Service {
    /// Port of /metrics, /healthz and /readyz; 0 turns them off. Default: 9002
    #[serde(rename = "metricsPort")]
    pub metrics_port: u16,
    /// Address the HTTP server listens on. Default: 0.0.0.0 (every IPv4
    /// interface, as upstream); 127.0.0.1 keeps it on loopback
    #[serde(rename = "metricsBind", deserialize_with = "ip_addr")]
    pub metrics_bind: std::net::IpAddr,
    /// Local append-only file for dead letters Postgres refuses; empty means
    /// the default. Default: lookout-ingester-dead-letters.jsonl (relative to
    /// the working directory)
    #[serde(rename = "deadLetterSpool")]
    pub dead_letter_spool: PathBuf,
    /// How log lines are written: `text`, or `json` (one object per line
    /// with `timestamp`, `level`, `message` and the line's fields). Colour
    /// only in text on a terminal. Default: text
    #[serde(rename = "logFormat")]
    pub log_format: crate::logging::LogFormat,
    /// Log level, or tracing filter directives such as
    /// `info,lookout_ingester=debug`; `RUST_LOG`, when set, wins. Default: info
    #[serde(rename = "logLevel", deserialize_with = "log_level")]
    pub log_level: String,
}

/// A log level or filter directives that parse.
fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    crate::logging::check_level(&s).map_err(de::Error::custom)?;
    Ok(s.trim().to_string())
}

impl Default for Service {
    fn default() -> Self {
        Service {
            metrics_port: 9002,
            metrics_bind: std::net::IpAddr::from([0, 0, 0, 0]),
            dead_letter_spool: PathBuf::from("lookout-ingester-dead-letters.jsonl"),
            log_format: crate::logging::LogFormat::Text,
            log_level: "info".to_string(),
        }
    }
}

/// The whole typed configuration: one settings struct per part.
#[derive(Debug, Clone)]
pub struct Config {
    pub postgres: Postgres,
    pub service: Service,
    pub pulsar: PulsarConfig,
    pub convert: convert::Settings,
    pub pipeline: pipeline::Settings,
    /// Holds the compiled `fatalInsertionErrors`.
    pub store: StoreSettings,
    pub health: health::Settings,
    pub heartbeat: heartbeat::Settings,
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

/// Upstream keys that only concern producers, monitoring or TLS: accepted,
/// not used (with everything below them). `pulsarBackoffTime` was only read
/// when `pulsar.backoffTime` was unset, which its default never was.
const IGNORED: &[&str] = &[
    "pulsar.restURL",
    "pulsar.delayMonitor",
    "pulsar.TLSTrustCertsFilePath",
    "pulsar.TLSAllowInsecureConnection",
    "pulsar.TLSValidateHostname",
    "pulsar.maxConnectionsPerBroker",
    "pulsar.controlPlaneEventsTopic",
    "pulsar.metricEventsTopic",
    "pulsar.compressionType",
    "pulsar.compressionLevel",
    "pulsar.maxAllowedEventsPerMessage",
    "pulsar.maxAllowedMessageSize",
    "pulsar.sendTimeout",
    "pulsarReceiveTimeout",
    "pulsarBackoffTime",
    "profiling",
];

/// Upstream's deprecated spelling of a key and the key it stands for, which
/// wins unless it is empty.
const DEPRECATED: &[(&str, &str)] = &[("userAnnotationPrefix", "annotations.userAnnotationPrefix")];

/// A key the settings structs read; `map` keys take sub-keys of their own
/// (`postgres.connection.host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub path: String,
    pub map: bool,
}

/// Every key the settings structs read, in canonical spelling.
pub fn known_keys() -> Vec<Key> {
    let mut keys = Vec::new();
    keys_of::<Postgres>(&mut keys);
    keys_of::<Service>(&mut keys);
    keys_of::<PulsarConfig>(&mut keys);
    keys_of::<PulsarAuth>(&mut keys);
    keys_of::<convert::Settings>(&mut keys);
    keys_of::<pipeline::Settings>(&mut keys);
    keys_of::<StoreSettings>(&mut keys);
    keys_of::<health::Settings>(&mut keys);
    keys_of::<heartbeat::Settings>(&mut keys);
    keys
}

/// The environment variable that sets a key, as viper derives it.
pub fn env_name(key: &str) -> String {
    format!("ARMADA_{}", key.replace('.', "_").to_uppercase())
}

/// Loads configuration from `files` (in order), `env` (pass
/// `std::env::vars()`), and `flags`: `(key, value)` pairs, applied last.
pub fn load(
    files: &[PathBuf],
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[(&str, Value)],
) -> Result<Loaded, ConfigError> {
    let known = known_keys();
    let mut keys = KeyMap::default();
    let mut warnings = Vec::new();
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
        let mut leaves = Vec::new();
        flatten("", &doc, &mut leaves);
        for (path, value) in leaves {
            let lower = path.to_lowercase();
            if is_known(&known, &lower) {
                keys.set(lower, value);
            } else {
                warnings.push(format!("{name}: unknown key {path:?} ignored"));
            }
        }
    }
    let env: BTreeMap<String, String> = env.into_iter().collect();
    // libpq's own variable: whoever reads it, it is never to be printed.
    if let Some(p) = env.get("PGPASSWORD") {
        register_secret(p);
    }
    let deprecated = DEPRECATED.iter().map(|(old, _)| Key {
        path: old.to_string(),
        map: false,
    });
    for key in known.iter().cloned().chain(deprecated) {
        let lower = key.path.to_lowercase();
        if key.map {
            let prefix = format!("{}_", env_name(&key.path));
            for (name, val) in env.range(prefix.clone()..) {
                let Some(sub) = name.strip_prefix(&prefix) else {
                    break;
                };
                keys.set(
                    format!("{lower}.{}", sub.to_lowercase()),
                    Value::String(val.clone()),
                );
            }
        } else if let Some(val) = env.get(&env_name(&key.path)) {
            keys.set(lower, Value::String(val.clone()));
        }
    }
    for (key, value) in flags {
        keys.set(key.to_lowercase(), value.clone());
    }
    // ARMADA_* variables no key reads: most likely misspelt.
    for name in env.keys().filter(|n| n.starts_with("ARMADA_")) {
        let read = known.iter().any(|k| {
            let var = env_name(&k.path);
            *name == var || (k.map && name.starts_with(&format!("{var}_")))
        }) || DEPRECATED.iter().any(|(old, _)| *name == env_name(old));
        if !read {
            warnings.push(format!(
                "environment variable {name} matches no configuration key; ignored (misspelt?)"
            ));
        }
    }
    resolve_deprecated(&mut keys);
    let config = build(&keys)?;
    if let Connection::Params(params) = &config.postgres.connection {
        for k in params.keys().filter(|k| !crate::pg::known_keyword(k)) {
            warnings.push(format!(
                "postgres.connection: {k:?} is not a connection keyword (misspelt?); \
                 connecting will fail"
            ));
        }
    }
    if let Some(p) = connection_password(&config.postgres.connection) {
        register_secret(&p);
    }
    Ok(Loaded { config, warnings })
}

/// Sets `dotted.path` in nested YAML mappings.
fn insert_nested(m: &mut serde_yaml::Mapping, path: &str, v: Value) {
    match path.split_once('.') {
        None => {
            m.insert(Value::String(path.to_string()), v);
        }
        Some((head, rest)) => {
            let entry = m
                .entry(Value::String(head.to_string()))
                .or_insert_with(|| Value::Mapping(Default::default()));
            if let Value::Mapping(sub) = entry {
                insert_nested(sub, rest, v);
            }
        }
    }
}

/// The effective configuration as upstream-style YAML (`config --show`):
/// every key the loader knows, in [`known_keys`] order, secrets replaced by
/// `<redacted>`. Loading the output again gives the same configuration,
/// secrets aside.
pub fn show(cfg: &Config) -> String {
    let text = |s: &str| Value::String(s.to_string());
    let num = |n: u64| Value::Number(n.into());
    let list = |v: Vec<String>| Value::Sequence(v.into_iter().map(Value::String).collect());
    let connection = match &cfg.postgres.connection {
        Connection::Params(params) => Value::Mapping(
            params
                .iter()
                .map(|(k, v)| {
                    let v = if is_secret_param(k) { REDACTED_TEXT } else { v };
                    (text(k), text(v))
                })
                .collect(),
        ),
        // A whole string is shown only as what it parses to.
        Connection::Whole(_) => text(&format!(
            "<redacted: {}>",
            describe_postgres_target(&cfg.postgres)
        )),
    };
    let opt_text = |v: Option<String>| v.map_or(Value::Null, |v| text(&v));
    let opt_path = |v: &Option<PathBuf>| {
        v.as_ref()
            .map_or(Value::Null, |v| text(&v.display().to_string()))
    };
    let p = &cfg.pulsar;
    let shown: Vec<(&str, Value)> = vec![
        ("postgres.connection", connection),
        ("metricsPort", num(cfg.service.metrics_port.into())),
        (
            "metricsBind",
            Value::String(cfg.service.metrics_bind.to_string()),
        ),
        (
            "deadLetterSpool",
            text(&cfg.service.dead_letter_spool.display().to_string()),
        ),
        ("logFormat", text(cfg.service.log_format.as_str())),
        ("logLevel", text(&cfg.service.log_level)),
        ("pulsar.URL", text(&p.url)),
        ("pulsar.jobsetEventsTopic", text(&p.topic)),
        ("subscriptionName", text(&p.subscription)),
        (
            "subscriptionType",
            text(&format!("{:?}", p.subscription_kind)),
        ),
        (
            "pulsar.receiverQueueSize",
            num(p.receiver_queue_size.into()),
        ),
        ("pulsar.backoffTime", text(&format!("{:?}", p.backoff))),
        // A path, not a secret; the token itself is never read for this.
        (
            "pulsar.jwtTokenPath",
            match &p.jwt_token_path {
                Some(path) => text(&path.display().to_string()),
                None => Value::Null,
            },
        ),
        ("skipRedeliveredMessages", Value::Bool(p.skip_redelivered)),
        (
            "pulsar.authenticationEnabled",
            Value::Bool(p.jwt_token_path.is_some() || p.oauth2_private_key.is_some()),
        ),
        (
            "pulsar.authenticationType",
            text(if p.jwt_token_path.is_some() {
                "JWT"
            } else if p.oauth2_private_key.is_some() {
                "OAuth2"
            } else {
                ""
            }),
        ),
        // Paths and URLs, not secrets: the files are not read for this.
        (
            "pulsar.oauth2IssuerUrl",
            opt_text(p.oauth2_issuer_url.clone()),
        ),
        ("pulsar.oauth2Audience", opt_text(p.oauth2_audience.clone())),
        ("pulsar.oauth2PrivateKey", opt_path(&p.oauth2_private_key)),
        (
            "pulsar.TLSTrustCertsFilePath",
            opt_path(&p.tls_trust_certs_file_path),
        ),
        (
            "pulsar.TLSAllowInsecureConnection",
            Value::Bool(p.tls_allow_insecure_connection),
        ),
        (
            "pulsar.TLSValidateHostname",
            Value::Bool(p.tls_validate_hostname),
        ),
        (
            "postgres.passwordFile",
            opt_path(&cfg.postgres.password_file),
        ),
        (
            "annotations.userAnnotationPrefix",
            text(&cfg.convert.user_annotation_prefix),
        ),
        (
            "annotations.blocklistAnnotations",
            list(cfg.convert.annotation_blocklist.clone()),
        ),
        (
            "minJobSpecCompressionSize",
            num(cfg.convert.min_job_spec_compression_size as u64),
        ),
        ("batchSize", num(cfg.pipeline.batch_size as u64)),
        (
            "batchMaxMessages",
            num(cfg.pipeline.batch_max_messages as u64),
        ),
        ("batchMaxBytes", num(cfg.pipeline.batch_max_bytes as u64)),
        ("batchCutWhenIdle", Value::Bool(cfg.pipeline.cut_when_idle)),
        ("batchHoldOpen", num(cfg.pipeline.hold_open)),
        (
            "batchDuration",
            text(&format!("{:?}", cfg.pipeline.batch_duration)),
        ),
        ("maxBackoff", num(cfg.store.max_backoff.as_secs())),
        (
            "retryFor",
            text(
                &cfg.store
                    .retry_for
                    .map(|d| format!("{}s", d.as_secs_f64()))
                    .unwrap_or_default(),
            ),
        ),
        (
            "fatalInsertionErrors",
            list(
                cfg.store
                    .fatal_errors
                    .iter()
                    .map(|r| r.as_str().to_string())
                    .collect(),
            ),
        ),
        (
            "health.stallTimeout",
            text(&format!("{:?}", cfg.health.stall_timeout)),
        ),
        ("heartbeat.replicaId", text(&cfg.heartbeat.replica_id)),
        (
            "heartbeat.interval",
            text(&format!("{:?}", cfg.heartbeat.interval)),
        ),
        (
            "heartbeat.staleAfter",
            text(&format!("{:?}", cfg.heartbeat.stale_after)),
        ),
        (
            "heartbeat.retention",
            text(&format!("{:?}", cfg.heartbeat.retention)),
        ),
    ];
    let mut root = serde_yaml::Mapping::new();
    for key in known_keys() {
        let Some((_, v)) = shown.iter().find(|(k, _)| *k == key.path) else {
            continue;
        };
        insert_nested(&mut root, &key.path, v.clone());
    }
    serde_yaml::to_string(&Value::Mapping(root)).unwrap_or_default()
}

/// A key is known at or below a known key: below a leaf it is kept, so that
/// the leaf's value fails as "a list or map" instead of being lost.
fn is_known(known: &[Key], lower: &str) -> bool {
    let at_or_under = |key: &str| {
        let key = key.to_lowercase();
        lower == key || lower.strip_prefix(&key).is_some_and(|r| r.starts_with('.'))
    };
    known.iter().any(|k| at_or_under(&k.path))
        || IGNORED.iter().any(|k| at_or_under(k))
        || DEPRECATED
            .iter()
            .any(|(old, _)| lower == old.to_lowercase())
}

/// Flattens YAML into `dotted.path → leaf` (paths as written).
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Mapping(m) => {
            for (k, val) in m {
                let k = yaml_key(k);
                let path = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, val, out);
            }
        }
        _ if prefix.is_empty() => {}
        _ => out.push((prefix.to_string(), v.clone())),
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

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    Ok(s)
}

fn quote_libpq(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\']) {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Upstream: the new key wins over the deprecated one unless it is empty.
fn resolve_deprecated(keys: &mut KeyMap) {
    for (old, new) in DEPRECATED {
        let (old, new) = (old.to_lowercase(), new.to_lowercase());
        let old_value = keys.0.remove(&old);
        let new_set = match keys.0.get(&new) {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        if !new_set {
            keys.0.remove(&new);
            if let Some(v) = old_value {
                keys.0.insert(new, v);
            }
        }
    }
}

/// Reads every settings struct from the key map, then applies the rules
/// that span structs (Pulsar reconnects use `maxBackoff`, the JWT switches).
fn build(keys: &KeyMap) -> Result<Config, ConfigError> {
    let postgres: Postgres = keys.get()?;
    let mut service: Service = keys.get()?;
    let mut pulsar: PulsarConfig = keys.get()?;
    let auth: PulsarAuth = keys.get()?;
    let convert: convert::Settings = keys.get()?;
    let pipeline: pipeline::Settings = keys.get()?;
    let store: StoreSettings = keys.get()?;
    let health: health::Settings = keys.get()?;
    let heartbeat: heartbeat::Settings = keys.get()?;
    pulsar.max_backoff = store.max_backoff;
    pulsar.receiver_queue_size = pulsar.receiver_queue_size.max(1);
    let set = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| !p.as_os_str().is_empty());
    let jwt = auth.enabled && auth.kind.eq_ignore_ascii_case("jwt");
    let oauth2 = auth.enabled && auth.kind.eq_ignore_ascii_case("oauth2");
    if auth.enabled && !jwt && !oauth2 {
        return Err(invalid(
            "pulsar.authenticationType",
            format!("expected JWT or OAuth2, got {:?}", auth.kind),
        ));
    }
    if jwt && !set(&pulsar.jwt_token_path) {
        return Err(invalid(
            "pulsar.jwtTokenPath",
            "required when authentication is enabled".into(),
        ));
    }
    if oauth2 && !set(&pulsar.oauth2_private_key) {
        return Err(invalid(
            "pulsar.oauth2PrivateKey",
            "required with OAuth2 authentication".into(),
        ));
    }
    // Only the chosen method's settings survive, so the client never sends
    // credentials the operator switched off.
    if !jwt {
        pulsar.jwt_token_path = None;
    }
    if !oauth2 {
        pulsar.oauth2_private_key = None;
        pulsar.oauth2_issuer_url = None;
        pulsar.oauth2_audience = None;
    }
    if service.dead_letter_spool.as_os_str().is_empty() {
        service.dead_letter_spool = Service::default().dead_letter_spool;
    }
    Ok(Config {
        postgres,
        service,
        pulsar,
        convert,
        pipeline,
        store,
        health,
        heartbeat,
    })
}

fn invalid(key: &str, msg: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        msg,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn load_str(
        yaml: &[&str],
        env: &[(&str, &str)],
        flags: &[(&str, Value)],
    ) -> Result<Loaded, ConfigError> {
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
            flags,
        )
    }

    #[test]
    fn defaults_match_upstream() {
        let c = load_str(&[], &[], &[]).expect("load").config;
        assert_eq!(c.pulsar.topic, "events");
        assert_eq!(c.pulsar.subscription, "lookout-ingester-v2");
        assert_eq!(c.pulsar.subscription_kind, SubscriptionKind::Failover);
        assert_eq!(c.pulsar.receiver_queue_size, 100);
        assert_eq!(c.pulsar.url, "pulsar://127.0.0.1:6650");
        // Ours: larger batches, bounded by bytes (README, Configuration).
        assert_eq!(c.pipeline.batch_size, 40_000);
        assert_eq!(c.pipeline.batch_duration, Duration::from_millis(500));
        assert_eq!(c.service.metrics_port, 9002);
        assert_eq!(c.store.max_backoff, Duration::from_secs(60));
        assert_eq!(c.convert, crate::convert::Settings::default());
        assert_eq!(
            c.postgres.connection_string(),
            "dbname=lookout host=127.0.0.1 password=psw port=5432 sslmode=disable user=postgres"
        );
        // What the old built-in YAML also said.
        assert_eq!(c.pulsar.backoff, Duration::from_secs(1));
        assert_eq!(c.pulsar.max_backoff, Duration::from_secs(60));
        assert_eq!(c.convert.user_annotation_prefix, "armadaproject.io/");
        assert_eq!(c.convert.min_job_spec_compression_size, 1024);
        assert!(c.pulsar.skip_redelivered && c.pulsar.jwt_token_path.is_none());
        assert!(c.store.fatal_errors.is_empty() && c.store.max_retries.is_none());
        assert_eq!(
            c.service.dead_letter_spool,
            PathBuf::from("lookout-ingester-dead-letters.jsonl")
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
        let l = load_str(&[upstream, over], &[], &[]).expect("load");
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let c = l.config;
        assert_eq!(c.pulsar.url, "pulsar://pulsar:6650");
        assert_eq!(
            c.pipeline.batch_size, 50,
            "keys are case-insensitive and later files win"
        );
        let url = c.postgres.connection_string();
        assert!(url.contains("host=db2") && url.contains("port=5433"));
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
            ("ARMADA_POSTGRES_CONNECTION_CONNECT_TIMEOUT", "5"),
            ("ARMADA_FATALINSERTIONERRORS", "a,b"),
        ];
        let l = load_str(&["batchSize: 3"], &env, &[]).expect("load");
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let c = l.config;
        assert_eq!(c.pipeline.batch_size, 7);
        assert_eq!(c.pulsar.url, "pulsar://e:1");
        let url = c.postgres.connection_string();
        assert!(url.contains("host=envhost") && url.contains("connect_timeout=5"));
        assert!(url.contains("dbname=lookout"), "merged over the defaults");
        assert_eq!(c.store.fatal_errors.len(), 2);
        let flags = [
            ("pulsar.URL", Value::from("pulsar://flag:2")),
            ("postgres.connection", Value::from("postgres://x@y/z")),
            ("batchSize", Value::from("9")),
        ];
        let c = load_str(&[], &env, &flags).expect("load").config;
        assert_eq!(
            (
                c.pulsar.url.as_str(),
                c.postgres.connection_string().as_str(),
                c.pipeline.batch_size
            ),
            ("pulsar://flag:2", "postgres://x@y/z", 9)
        );
    }

    #[test]
    fn unknown_keys_warn_invalid_values_fail_naming_the_key() {
        let l = load_str(&["colour: blue\npulsar:\n  flavour: x\n"], &[], &[]).expect("load");
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
            ("batchSize:\n  a: 1", "batchSize"),
            ("fatalInsertionErrors:\n  a: b", "fatalInsertionErrors"),
            ("batchDuration: 0s", "batchDuration"),
            ("maxBackoff: 1s", "maxBackoff"),
            ("pulsar:\n  URL: ''", "pulsar.URL"),
            ("skipRedeliveredMessages: maybe", "skipRedeliveredMessages"),
            (
                "pulsar:\n  authenticationEnabled: true\n  authenticationType: basic",
                "pulsar.authenticationType",
            ),
            (
                "pulsar:\n  authenticationEnabled: true\n  authenticationType: JWT",
                "pulsar.jwtTokenPath",
            ),
        ] {
            let err = load_str(&[yaml], &[], &[]).expect_err(yaml).to_string();
            assert!(err.starts_with(key), "{yaml}: {err}");
        }
        let err = load_str(&[], &[("ARMADA_BATCHSIZE", "many")], &[])
            .expect_err("env")
            .to_string();
        assert_eq!(
            err,
            "batchSize: expected a non-negative integer, got \"many\""
        );
    }

    #[test]
    fn jwt_only_when_enabled() {
        let yaml = "pulsar:\n  authenticationEnabled: true\n  authenticationType: jwt\n  jwtTokenPath: /t\n";
        let c = load_str(&[yaml], &[], &[]).expect("load").config;
        assert_eq!(c.pulsar.jwt_token_path, Some(PathBuf::from("/t")));
        let c = load_str(&["pulsar:\n  jwtTokenPath: /t\n"], &[], &[])
            .expect("load")
            .config;
        assert_eq!(c.pulsar.jwt_token_path, None);
    }

    #[test]
    fn oauth2_and_tls_keys() {
        let yaml = "pulsar:\n  URL: pulsar+ssl://b:6651\n  TLSTrustCertsFilePath: /ca.pem\n  \
                    TLSValidateHostname: true\n  authenticationEnabled: true\n  \
                    authenticationType: OAuth2\n  jwtTokenPath: /t\n  \
                    oauth2IssuerUrl: https://i\n  oauth2Audience: aud\n  \
                    oauth2PrivateKey: /c.json\n";
        let c = load_str(&[yaml], &[], &[]).expect("load").config.pulsar;
        assert_eq!(c.tls_trust_certs_file_path, Some(PathBuf::from("/ca.pem")));
        assert!(c.tls_validate_hostname && !c.tls_allow_insecure_connection);
        assert_eq!(c.oauth2_private_key, Some(PathBuf::from("/c.json")));
        assert_eq!(c.oauth2_issuer_url.as_deref(), Some("https://i"));
        assert_eq!(c.oauth2_audience.as_deref(), Some("aud"));
        assert_eq!(c.jwt_token_path, None, "only the chosen method is kept");
        let e = load_str(
            &["pulsar:\n  authenticationEnabled: true\n  authenticationType: OAuth2\n"],
            &[],
            &[],
        )
        .expect_err("no credentials file");
        assert!(e.to_string().starts_with("pulsar.oauth2PrivateKey"), "{e}");
        let e = load_str(
            &["pulsar:\n  authenticationEnabled: true\n  authenticationType: basic\n"],
            &[],
            &[],
        )
        .expect_err("unknown method");
        assert!(
            e.to_string().starts_with("pulsar.authenticationType"),
            "{e}"
        );
    }

    #[test]
    fn annotation_prefix_precedence() {
        let c = load_str(
            &["userAnnotationPrefix: old/\nannotations:\n  userAnnotationPrefix: new/"],
            &[],
            &[],
        )
        .expect("load")
        .config;
        assert_eq!(c.convert.user_annotation_prefix, "new/");
        let c = load_str(
            &["userAnnotationPrefix: old/\nannotations:\n  userAnnotationPrefix: ''"],
            &[],
            &[],
        )
        .expect("load")
        .config;
        assert_eq!(c.convert.user_annotation_prefix, "old/");
    }

    /// `config --show` lists every key, hides the password, and reads back
    /// as the same configuration.
    #[test]
    fn show_lists_every_key_and_reads_back() {
        let yaml = "postgres:\n  connection:\n    password: s3cr3t-show\n    host: db\nbatchSize: 7\nfatalInsertionErrors: ['a.*']\npulsar:\n  authenticationEnabled: true\n  authenticationType: JWT\n  jwtTokenPath: /run/token\n";
        let c = load_str(&[yaml], &[], &[]).expect("load").config;
        let shown = show(&c);
        assert!(!shown.contains("s3cr3t-show"), "{shown}");
        assert!(shown.contains("password: <redacted>"), "{shown}");
        assert!(shown.contains("jwtTokenPath: /run/token"), "{shown}");
        let doc: Value = serde_yaml::from_str(&shown).expect("yaml");
        let mut leaves = Vec::new();
        flatten("", &doc, &mut leaves);
        for key in known_keys() {
            let covered = leaves.iter().any(|(p, _)| {
                p == &key.path || (key.map && p.starts_with(&format!("{}.", key.path)))
            });
            assert!(covered, "config --show misses {}", key.path);
        }
        let again = load_str(&[&shown], &[], &[]).expect("reload");
        assert!(again.warnings.is_empty(), "{:?}", again.warnings);
        assert_eq!(show(&again.config), shown);
        assert_eq!(again.config.pipeline, c.pipeline);
        assert_eq!(again.config.pulsar, c.pulsar);
    }

    #[test]
    fn debug_of_a_config_hides_passwords() {
        let c = load_str(
            &["postgres:\n  connection:\n    password: s3cr3t-debug\n"],
            &[],
            &[],
        )
        .expect("load")
        .config;
        assert!(!format!("{c:?}").contains("s3cr3t-debug"));
        let flags = [(
            "postgres.connection",
            Value::from("postgres://u:s3cr3t-url@h:1/d"),
        )];
        let c = load_str(&[], &[], &flags).expect("load").config;
        let debug = format!("{c:?} {:#?}", c.postgres);
        assert!(!debug.contains("s3cr3t-url"), "{debug}");
        assert_eq!(
            describe_postgres_target(&c.postgres),
            "host h port 1 database d user u"
        );
        assert_eq!(scrub("x s3cr3t-url y"), "x <redacted> y");
        assert_eq!(
            describe_postgres_target(&Postgres::default()),
            "host 127.0.0.1 port 5432 database lookout user postgres"
        );
    }

    #[test]
    fn libpq_values_are_quoted() {
        assert_eq!(quote_libpq("a b"), "'a b'");
        assert_eq!(quote_libpq(""), "''");
        assert_eq!(quote_libpq("it's"), "'it\\'s'");
    }

    /// The README's configuration table lists exactly the keys the loader knows.
    #[test]
    fn readme_table_lists_every_key() {
        let readme = include_str!("../README.md");
        let in_readme: std::collections::BTreeSet<String> = readme_table(readme)
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        let known: std::collections::BTreeSet<String> = known_keys()
            .into_iter()
            .map(|k| {
                if k.map {
                    format!("{}.*", k.path)
                } else {
                    k.path
                }
            })
            .chain(DEPRECATED.iter().map(|(old, _)| old.to_string()))
            .collect();
        assert_eq!(in_readme, known);
    }

    /// `(key, flags)` of each row of the README's configuration table: the
    /// first code span of the first cell, and the code spans of the last.
    pub(crate) fn readme_table(readme: &str) -> Vec<(String, Vec<String>)> {
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|s| s.split("\n#").next())
            .unwrap_or_default();
        let spans = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
                let key = spans(cells.first()?).into_iter().next()?;
                Some((key, spans(cells.last()?)))
            })
            .collect()
    }

    #[test]
    fn misspelt_environment_variables_and_connection_keys_are_warned_about() {
        let l = load_str(
            &["postgres:\n  connection:\n    pasword: hunter2\n"],
            &[
                ("ARMADA_BATCHSIZ", "7"),
                ("ARMADA_POSTGRES_CONNECTION_HOST", "h"),
                ("ARMADA_USERANNOTATIONPREFIX", "p/"),
                ("OTHER_BATCHSIZ", "7"),
            ],
            &[],
        )
        .expect("load");
        assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
        assert!(l.warnings[0].contains("ARMADA_BATCHSIZ matches no configuration key"));
        assert!(l.warnings[1].contains("\"pasword\" is not a connection keyword"));
        assert!(!l.warnings.iter().any(|w| w.contains("hunter2")));
    }
}

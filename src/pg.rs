//! Postgres connections: the libpq connection settings (URL or key=value
//! string, or the `postgres.connection` map), where the password comes
//! from, TLS (`sslmode` with libpq's semantics, through OpenSSL via
//! native-tls), one client or a deadpool pool.
//!
//! tokio-postgres' own parser knows only part of libpq's keywords and none
//! of its TLS files, so the string is parsed here into [`PgSettings`], from
//! which the tokio-postgres `Config` and the TLS connector are built.
//! Messages describe a connection with [`PgSettings::target`] (host, port,
//! database, user and TLS mode from the parsed settings), never by echoing
//! the string, which may hold a password.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::future::BoxFuture;
use postgres_native_tls::MakeTlsConnector;
use tokio_postgres::config::SslMode as TpSslMode;
use tokio_postgres::Client;

use crate::config;

/// The built-in default password of `postgres.connection` (upstream's). It
/// gives way to `PGPASSWORD`, a passfile entry and `postgres.passwordFile`.
pub const DEFAULT_PASSWORD: &str = "psw";

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain only.
    Disable,
    /// Plain first; TLS (unverified) if the plain attempt is refused.
    Allow,
    /// TLS (unverified) first; plain if the server has no TLS or the TLS
    /// attempt is refused. libpq's default.
    Prefer,
    /// TLS, certificate not verified — unless a root CA file is given, when
    /// libpq treats it as `verify-ca`.
    Require,
    /// TLS, chain verified against the root CA, host name not checked.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> anyhow::Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => bail!(
                "invalid sslmode {s:?}: expected disable, allow, prefer, require, verify-ca or verify-full"
            ),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where a password came from (for messages; never the password itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordSource {
    /// `postgres.passwordFile`.
    PasswordFile,
    /// `password` in the connection settings (YAML, URL or key=value).
    Settings,
    /// The `PGPASSWORD` environment variable.
    Env,
    /// A `.pgpass`-format file (`passfile`, `PGPASSFILE` or `~/.pgpass`).
    Passfile,
    /// The built-in default (`psw`).
    Default,
}

/// Parsed connection settings. `Debug` does not show the password.
#[derive(Clone, PartialEq)]
pub struct PgSettings {
    /// Host names or socket directories (libpq allows a comma list).
    pub hosts: Vec<String>,
    /// `hostaddr`: numeric addresses used instead of resolving `hosts`.
    pub hostaddrs: Vec<String>,
    /// One port, or one per host.
    pub ports: Vec<u16>,
    pub user: String,
    pub dbname: String,
    password: Option<String>,
    pub password_source: Option<PasswordSource>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub sslsni: bool,
    pub connect_timeout: Option<Duration>,
    pub application_name: Option<String>,
    /// Other keywords handed to tokio-postgres as they are (`options`,
    /// keepalives, `target_session_attrs`, …).
    passthrough: Vec<(String, String)>,
    /// Keywords accepted and ignored (harmless), for a start-up warning.
    pub ignored: Vec<String>,
    /// `postgres.passwordFile`, read again for each new connection so that
    /// a rotated secret is picked up without a restart.
    pub password_file: Option<PathBuf>,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.target())
    }
}

/// What the environment supplies (`PGPASSWORD`, `PGPASSFILE`, `HOME`);
/// a parameter so that tests need not change the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// Keywords honoured here, beyond those tokio-postgres takes as they are.
const OWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "dbname",
    "password",
    "passfile",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslsni",
    "connect_timeout",
    "application_name",
    "fallback_application_name",
    "requiressl",
];

/// Passed to tokio-postgres' config parser unchanged (it knows them and
/// their libpq meaning).
const PASSTHROUGH_KEYS: &[&str] = &[
    "options",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// Accepted and ignored with a warning: they change nothing this client
/// could do differently (no GSSAPI/Kerberos here, compression long gone,
/// the client encoding is always UTF8).
const IGNORED_KEYS: &[&str] = &["sslcompression", "krbsrvname", "gsslib", "gssdelegation"];

/// Whether `key` is a connection keyword [`PgSettings::from_config`]
/// accepts (for the configuration loader's early warning).
pub fn known_keyword(key: &str) -> bool {
    OWN_KEYS.contains(&key)
        || PASSTHROUGH_KEYS.contains(&key)
        || IGNORED_KEYS.contains(&key)
        || key == "client_encoding"
        || key == "gssencmode"
}

impl PgSettings {
    /// Settings from the configuration: the `postgres.connection` map or
    /// string, then `postgres.passwordFile`, with the process environment.
    pub fn from_config(pg: &config::Postgres) -> anyhow::Result<PgSettings> {
        PgSettings::from_config_with(pg, &process_env)
    }

    pub fn from_config_with(pg: &config::Postgres, env: EnvLookup) -> anyhow::Result<PgSettings> {
        let (pairs, from_map) = match &pg.connection {
            config::Connection::Params(map) => (
                map.iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>(),
                true,
            ),
            config::Connection::Whole(s) => (parse_conninfo(s.expose())?, false),
        };
        let what = if from_map {
            "postgres.connection"
        } else {
            "the connection string"
        };
        PgSettings::from_pairs(pairs, pg.password_file.as_deref(), env)
            .with_context(|| format!("invalid Postgres settings in {what}"))
    }

    /// Settings from a URL or key=value string alone, with the process
    /// environment.
    pub fn parse(s: &str) -> anyhow::Result<PgSettings> {
        PgSettings::parse_with(s, None, &process_env)
    }

    pub fn parse_with(
        s: &str,
        password_file: Option<&Path>,
        env: EnvLookup,
    ) -> anyhow::Result<PgSettings> {
        PgSettings::from_pairs(parse_conninfo(s)?, password_file, env)
            .context("invalid Postgres connection string")
    }

    fn from_pairs(
        pairs: Vec<(String, String)>,
        password_file: Option<&Path>,
        env: EnvLookup,
    ) -> anyhow::Result<PgSettings> {
        let mut own: BTreeMap<String, String> = BTreeMap::new();
        let mut passthrough = Vec::new();
        let mut ignored = Vec::new();
        for (k, v) in pairs {
            if OWN_KEYS.contains(&k.as_str()) {
                own.insert(k, v);
            } else if PASSTHROUGH_KEYS.contains(&k.as_str()) {
                passthrough.push((k, v));
            } else if IGNORED_KEYS.contains(&k.as_str()) {
                ignored.push(k);
            } else if k == "client_encoding" {
                // The protocol layer always speaks UTF8.
                if !v.eq_ignore_ascii_case("utf8") && !v.eq_ignore_ascii_case("utf-8") {
                    bail!("client_encoding {v:?} is not supported (always UTF8)");
                }
            } else if k == "gssencmode" {
                // No GSSAPI encryption here: "disable" and "prefer" both end
                // in a plain or TLS connection, as with libpq without GSS.
                if v == "require" {
                    bail!("gssencmode=require is not supported (no GSSAPI)");
                }
                ignored.push(k);
            } else {
                bail!("unknown or unsupported connection keyword {k:?}");
            }
        }
        let list = |k: &str| -> Vec<String> {
            own.get(k)
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default()
        };
        let mut hosts = list("host");
        hosts.retain(|h| !h.is_empty());
        let hostaddrs: Vec<String> = list("hostaddr");
        if hosts.is_empty() {
            hosts = if hostaddrs.is_empty() {
                vec!["localhost".to_string()]
            } else {
                hostaddrs.clone()
            };
        }
        let ports = match own.get("port") {
            None => vec![5432],
            Some(p) => p
                .split(',')
                .map(|p| {
                    let p = p.trim();
                    if p.is_empty() {
                        Ok(5432)
                    } else {
                        p.parse::<u16>().map_err(|_| anyhow!("invalid port {p:?}"))
                    }
                })
                .collect::<anyhow::Result<Vec<u16>>>()?,
        };
        if ports.len() != 1 && ports.len() != hosts.len() {
            bail!(
                "{} ports given for {} hosts (give one, or one per host)",
                ports.len(),
                hosts.len()
            );
        }
        let user = match own.get("user") {
            Some(u) if !u.is_empty() => u.clone(),
            _ => bail!("no user given (set user)"),
        };
        let dbname = own
            .get("dbname")
            .filter(|d| !d.is_empty())
            .cloned()
            .unwrap_or_else(|| user.clone());
        let mut sslmode = match own.get("sslmode") {
            Some(m) => SslMode::parse(m)?,
            None => SslMode::Prefer,
        };
        // The deprecated requiressl=1 means sslmode=require (if no sslmode).
        if own.get("requiressl").map(String::as_str) == Some("1") && !own.contains_key("sslmode") {
            sslmode = SslMode::Require;
        }
        let path = |k: &str| own.get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let sslrootcert = path("sslrootcert");
        let sslcert = path("sslcert");
        let sslkey = path("sslkey");
        if sslcert.is_some() != sslkey.is_some() {
            bail!("sslcert and sslkey must be given together");
        }
        let sslsni = match own.get("sslsni").map(String::as_str) {
            None | Some("1") => true,
            Some("0") => false,
            Some(v) => bail!("invalid sslsni {v:?}: expected 0 or 1"),
        };
        // libpq: seconds; 0 or negative waits forever; below 2 means 2.
        let connect_timeout = match own.get("connect_timeout") {
            None => None,
            Some(t) => {
                let secs: i64 = t
                    .trim()
                    .parse()
                    .map_err(|_| anyhow!("invalid connect_timeout {t:?}: expected seconds"))?;
                (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
            }
        };
        // As psql does, name ourselves in pg_stat_activity unless told.
        let application_name = own
            .get("application_name")
            .or(own.get("fallback_application_name"))
            .cloned()
            .or_else(|| Some("lookout-ingester".to_string()));
        let mut s = PgSettings {
            hosts,
            hostaddrs,
            ports,
            user,
            dbname,
            password: None,
            password_source: None,
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
            sslsni,
            connect_timeout,
            application_name,
            passthrough,
            ignored,
            password_file: password_file.map(Path::to_path_buf),
        };
        for k in &s.ignored {
            tracing::warn!("Postgres connection keyword {k} is accepted but has no effect here");
        }
        // Tokio-postgres checks the passthrough values; do it now so that a
        // typo stops start-up rather than every connection.
        s.pg_config_base()?;
        s.resolve_password(own.get("password"), own.get("passfile"), password_file, env)?;
        Ok(s)
    }

    /// libpq's order, with `postgres.passwordFile` first (it is the
    /// operator's explicit choice of where the password is) and the built-in
    /// default last: passwordFile > password > PGPASSWORD > passfile >
    /// `psw`.
    fn resolve_password(
        &mut self,
        given: Option<&String>,
        passfile: Option<&String>,
        password_file: Option<&Path>,
        env: EnvLookup,
    ) -> anyhow::Result<()> {
        let (password, source) = if let Some(file) = password_file {
            (
                Some(read_password_file(file)?),
                PasswordSource::PasswordFile,
            )
        } else if let Some(p) = given.filter(|p| p.as_str() != DEFAULT_PASSWORD) {
            (Some(p.clone()), PasswordSource::Settings)
        } else if let Some(p) = env("PGPASSWORD") {
            (Some(p), PasswordSource::Env)
        } else if let Some(p) = self.passfile_password(passfile, env)? {
            (Some(p), PasswordSource::Passfile)
        } else if let Some(p) = given {
            (Some(p.clone()), PasswordSource::Default)
        } else {
            (None, PasswordSource::Default)
        };
        if let Some(p) = &password {
            // Wherever it came from, the scrubber of logs and errors knows it.
            crate::config::register_secret(p);
        }
        self.password_source = password.as_ref().map(|_| source);
        self.password = password;
        Ok(())
    }

    /// The password of the first matching `.pgpass` line. A named file
    /// (`passfile`, `PGPASSFILE`) that cannot be read is an error; a missing
    /// `~/.pgpass` is not.
    fn passfile_password(
        &self,
        passfile: Option<&String>,
        env: EnvLookup,
    ) -> anyhow::Result<Option<String>> {
        let (file, named) = match passfile.cloned().or_else(|| env("PGPASSFILE")) {
            Some(f) => (PathBuf::from(f), true),
            None => match env("HOME") {
                Some(home) => (Path::new(&home).join(".pgpass"), false),
                None => return Ok(None),
            },
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("cannot read passfile {}: {e}", file.display()),
        };
        let port = self.ports[0].to_string();
        Ok(pgpass_lookup(
            &text,
            &self.hosts[0],
            &port,
            &self.dbname,
            &self.user,
        ))
    }

    /// The connection target for messages: `host:port/dbname as user
    /// (sslmode=…)`, from the parsed settings (no password).
    pub fn target(&self) -> String {
        let mut s = String::new();
        for (i, h) in self.hosts.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let port = self.ports.get(i).unwrap_or(&self.ports[0]);
            let _ = write!(s, "{h}:{port}");
        }
        let _ = write!(
            s,
            "/{} as {} (sslmode={})",
            self.dbname,
            self.user,
            self.sslmode.as_str()
        );
        s
    }

    /// Whether a password is set (from any source).
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// The tokio-postgres config without TLS mode or password.
    fn pg_config_base(&self) -> anyhow::Result<tokio_postgres::Config> {
        // Passthrough keywords go through tokio-postgres' own parser (it
        // knows their libpq meaning); the rest is set field by field.
        let mut text = String::new();
        for (k, v) in &self.passthrough {
            let _ = write!(
                text,
                "{k}='{}' ",
                v.replace('\\', "\\\\").replace('\'', "\\'")
            );
        }
        let mut c: tokio_postgres::Config = if text.is_empty() {
            tokio_postgres::Config::new()
        } else {
            text.parse()
                .map_err(|e: tokio_postgres::Error| anyhow!("{}", error_chain(&e)))?
        };
        for h in &self.hosts {
            c.host(h);
        }
        for a in &self.hostaddrs {
            let ip = a
                .parse()
                .map_err(|_| anyhow!("invalid hostaddr {a:?}: expected a numeric address"))?;
            c.hostaddr(ip);
        }
        for p in &self.ports {
            c.port(*p);
        }
        c.user(&self.user).dbname(&self.dbname);
        if let Some(t) = self.connect_timeout {
            c.connect_timeout(t);
        }
        if let Some(a) = &self.application_name {
            c.application_name(a);
        }
        Ok(c)
    }

    fn pg_config(&self, mode: TpSslMode) -> anyhow::Result<tokio_postgres::Config> {
        let mut c = self.pg_config_base()?;
        if let Some(p) = &self.password {
            c.password(p);
        }
        c.ssl_mode(mode);
        Ok(c)
    }

    /// The TLS connector for `sslmode`: which certificates are checked,
    /// the root CAs, the client certificate.
    fn tls_connector(&self) -> anyhow::Result<MakeTlsConnector> {
        let mut b = native_tls::TlsConnector::builder();
        // libpq: require with a root CA file behaves as verify-ca.
        let verify_chain = match self.sslmode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => self.sslrootcert.is_some(),
            _ => false,
        };
        if verify_chain {
            match &self.sslrootcert {
                // "system": the system's trusted roots, as libpq 16.
                Some(f) if f.as_os_str() != "system" => {
                    let pem = std::fs::read(f)
                        .with_context(|| format!("cannot read sslrootcert {}", f.display()))?;
                    let certs =
                        native_tls::Certificate::stack_from_pem(&pem).with_context(|| {
                            format!("sslrootcert {} holds no valid PEM certificate", f.display())
                        })?;
                    if certs.is_empty() {
                        bail!("sslrootcert {} holds no certificate", f.display());
                    }
                    // Only the given CAs, as libpq: a server certificate
                    // from a public CA must not pass for the private one.
                    b.disable_built_in_roots(true);
                    for c in certs {
                        b.add_root_certificate(c);
                    }
                }
                _ => {}
            }
            b.danger_accept_invalid_hostnames(self.sslmode != SslMode::VerifyFull);
        } else {
            b.danger_accept_invalid_certs(true);
            b.danger_accept_invalid_hostnames(true);
        }
        b.use_sni(self.sslsni);
        if let (Some(cert), Some(key)) = (&self.sslcert, &self.sslkey) {
            let cert_pem = std::fs::read(cert)
                .with_context(|| format!("cannot read sslcert {}", cert.display()))?;
            let key_pem = std::fs::read(key)
                .with_context(|| format!("cannot read sslkey {}", key.display()))?;
            // native-tls takes PKCS#8 only; libpq also takes the traditional
            // RSA/EC forms, so convert through OpenSSL.
            let pkey = openssl::pkey::PKey::private_key_from_pem(&key_pem).map_err(|_| {
                anyhow!(
                    "sslkey {} is not a PEM private key (encrypted keys are not supported)",
                    key.display()
                )
            })?;
            let key_pkcs8 = pkey
                .private_key_to_pem_pkcs8()
                .with_context(|| format!("sslkey {}", key.display()))?;
            let id =
                native_tls::Identity::from_pkcs8(&cert_pem, &key_pkcs8).with_context(|| {
                    format!(
                        "sslcert {} and sslkey {} do not make a client identity",
                        cert.display(),
                        key.display()
                    )
                })?;
            b.identity(id);
        }
        let c = b.build().context("cannot set up TLS")?;
        Ok(MakeTlsConnector::new(c))
    }

    /// The attempts libpq makes for `sslmode`, in order.
    fn attempts(&self) -> &'static [TpSslMode] {
        // libpq never uses TLS over a Unix socket, whatever the sslmode.
        if self.hosts.iter().all(|h| h.starts_with('/')) {
            return &[TpSslMode::Disable];
        }
        match self.sslmode {
            SslMode::Disable => &[TpSslMode::Disable],
            SslMode::Allow => &[TpSslMode::Disable, TpSslMode::Require],
            SslMode::Prefer => &[TpSslMode::Prefer, TpSslMode::Disable],
            _ => &[TpSslMode::Require],
        }
    }

    fn connector(&self) -> anyhow::Result<PgConnect> {
        let tls = self.tls_connector()?;
        let configs = self
            .attempts()
            .iter()
            .map(|m| self.pg_config(*m))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(PgConnect {
            configs,
            tls,
            password_file: self.password_file.clone(),
        })
    }
}

/// The whole content of a password file (a Kubernetes secret file, say),
/// one trailing line break removed.
fn read_password_file(file: &Path) -> anyhow::Result<String> {
    let mut p = std::fs::read_to_string(file)
        .map_err(|e| anyhow!("cannot read postgres.passwordFile {}: {e}", file.display()))?;
    if p.ends_with('\n') {
        p.pop();
        if p.ends_with('\r') {
            p.pop();
        }
    }
    if p.is_empty() {
        bail!("postgres.passwordFile {} is empty", file.display());
    }
    crate::config::register_secret(&p);
    Ok(p)
}

/// The password of the first `.pgpass` line matching (`*` matches any
/// value; `\:` and `\\` escape; `#` starts a comment line).
pub fn pgpass_lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    // libpq matches a socket directory against "localhost".
    let host = if host.starts_with('/') {
        "localhost"
    } else {
        host
    };
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields: Vec<String> = vec![String::new()];
        let mut raw: Vec<bool> = vec![true]; // field is literally "*"
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            let last = fields.len() - 1;
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        fields[last].push(n);
                    }
                    raw[last] = false;
                }
                ':' if fields.len() < 5 => {
                    fields.push(String::new());
                    raw.push(true);
                }
                c => fields[last].push(c),
            }
        }
        if fields.len() != 5 {
            continue;
        }
        let matches = |i: usize, want: &str| (raw[i] && fields[i] == "*") || fields[i] == want;
        if matches(0, host) && matches(1, port) && matches(2, db) && matches(3, user) {
            return Some(fields[4].clone());
        }
    }
    None
}

/// Connects for deadpool and for [`connect`]: the attempts of the
/// `sslmode` in order, the first error kept if all fail (libpq reports
/// the first attempt's too).
struct PgConnect {
    configs: Vec<tokio_postgres::Config>,
    tls: MakeTlsConnector,
    password_file: Option<PathBuf>,
}

impl PgConnect {
    async fn connect_once(
        &self,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        let mut first = None;
        // A file that cannot be read now (a secret being swapped) leaves the
        // password read last time; the connection attempt tells the rest.
        let fresh = match &self.password_file {
            Some(f) => match read_password_file(f) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("{e:#}; using the password read before");
                    None
                }
            },
            None => None,
        };
        for c in &self.configs {
            let mut c = c.clone();
            if let Some(p) = &fresh {
                c.password(p);
            }
            match c.connect(self.tls.clone()).await {
                Ok((client, conn)) => {
                    let task = tokio::spawn(async move {
                        if let Err(e) = drive(conn).await {
                            tracing::warn!("postgres connection ended: {}", error_chain(&e));
                        }
                    });
                    return Ok((client, task));
                }
                Err(e) => {
                    if first.is_none() {
                        first = Some(e);
                    }
                }
            }
        }
        match first {
            Some(e) => Err(e),
            // attempts() is never empty; connect once more to get an error.
            None => self.configs[0]
                .connect(self.tls.clone())
                .await
                .map(|(c, conn)| {
                    (
                        c,
                        tokio::spawn(async move {
                            let _ = drive(conn).await;
                        }),
                    )
                }),
        }
    }
}

/// Runs a connection until it ends. The server's notices (`NOTICE:
/// relation "x" already exists, skipping` on every `migrate`) are logged at
/// debug; tokio-postgres would log them at info.
async fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
) -> Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::StreamExt;
    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    while let Some(m) = messages.next().await {
        if let tokio_postgres::AsyncMessage::Notice(n) = m? {
            tracing::debug!("postgres {}: {}", n.severity(), n.message());
        }
    }
    Ok(())
}

impl deadpool_postgres::Connect for PgConnect {
    fn connect(
        &self,
        _: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>> {
        Box::pin(self.connect_once())
    }
}

/// An error and its causes on one line, each said once: tokio-postgres'
/// `Display` shows only the kind ("db error") and repeats its cause, and the
/// pool wraps it in "Error occurred while creating a new object". A server
/// error ends the line with the server's own message (`database "x" does
/// not exist`), its detail and hint.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(c) = cur {
        let db = c
            .downcast_ref::<tokio_postgres::error::DbError>()
            .or_else(|| {
                c.downcast_ref::<tokio_postgres::Error>()
                    .and_then(|e| e.as_db_error())
            });
        if let Some(db) = db {
            parts.push(server_message(db));
            break;
        }
        let text = c.to_string();
        // A wrapper's text often ends with its cause's: keep its own part.
        let own = match c.source().map(|s| s.to_string()) {
            Some(next) if text.ends_with(&format!(": {next}")) => {
                text[..text.len() - next.len() - 2].to_string()
            }
            Some(next) if text == next => String::new(),
            _ => text,
        };
        let own = match own.as_str() {
            "db error" | "" => None,
            "Error occurred while creating a new object" => {
                Some("cannot connect to Postgres".to_string())
            }
            _ => Some(own),
        };
        if let Some(own) = own {
            // OpenSSL's errors repeat their cause in their own text.
            if !parts.iter().any(|p| p.contains(&own)) {
                parts.push(own);
            }
        }
        cur = c.source();
    }
    parts.join(": ").replace('\n', "; ")
}

/// The server's message, its detail and hint, as the server said them.
pub fn server_message(db: &tokio_postgres::error::DbError) -> String {
    let mut s = db.message().to_string();
    if let Some(d) = db.detail() {
        let _ = write!(s, " (detail: {d})");
    }
    if let Some(h) = db.hint() {
        let _ = write!(s, " (hint: {h})");
    }
    s
}

/// One client, its connection driven on a task. Errors name the target
/// and carry the server's message.
pub async fn connect(settings: &PgSettings) -> anyhow::Result<Client> {
    let target = settings.target();
    let c = settings
        .connector()
        .with_context(|| format!("cannot connect to Postgres at {target}"))?;
    match c.connect_once().await {
        Ok((client, _task)) => Ok(client),
        Err(e) => Err(anyhow!(
            "cannot connect to Postgres at {target}: {}",
            error_chain(&e)
        )),
    }
}

/// [`connect`], retrying what the environment may fix (a server still
/// starting, a database being restored, credentials being rolled out) for
/// up to `retry_for`, then failing with the last error.
pub async fn connect_retrying(
    settings: &PgSettings,
    retry_for: Duration,
) -> anyhow::Result<Client> {
    let target = settings.target();
    let c = settings
        .connector()
        .with_context(|| format!("cannot connect to Postgres at {target}"))?;
    let started = std::time::Instant::now();
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let e = match c.connect_once().await {
            Ok((client, _task)) => return Ok(client),
            Err(e) => e,
        };
        let text = error_chain(&e);
        let left = retry_for.saturating_sub(started.elapsed());
        let retryable = crate::store::retry::classify(&e, &[]).is_retryable();
        if !retryable || left.is_zero() {
            let after = if retryable {
                format!(" (gave up after {}s, retryFor)", retry_for.as_secs_f64())
            } else {
                String::new()
            };
            bail!("cannot connect to Postgres at {target}{after}: {text}");
        }
        let w = backoff.next_wait().min(left);
        tracing::warn!(
            "cannot connect to Postgres at {target}: {text}; retrying in {}s",
            w.as_secs_f64()
        );
        tokio::time::sleep(w).await;
    }
}

/// The one start-up wait every one-shot command (`migrate`, `replay`,
/// `dead-letters`) goes through before its work: [`connect_retrying`] for
/// `retryFor` (`None`: a single attempt), so each of them ends the same way
/// on a database that is unreachable or refusing, with the server's message.
/// Later outages are the store's retries' (same backoff, same limit).
pub async fn connect_one_shot(
    settings: &PgSettings,
    retry_for: Option<Duration>,
) -> anyhow::Result<Client> {
    match retry_for {
        Some(d) => connect_retrying(settings, d).await,
        None => connect(settings).await,
    }
}

/// A connection pool. Connections are opened on first use, so a database
/// that is still starting does not stop the process; the store retries.
/// Creating or waiting for a connection times out after 30s (retryable),
/// so a black-holed network cannot hang a write forever. The TLS files are
/// read here, once; `postgres.passwordFile` for each new connection.
pub fn pool(settings: &PgSettings, max_size: usize) -> anyhow::Result<Pool> {
    let c = settings.connector().with_context(|| {
        format!(
            "cannot set up Postgres connections to {}",
            settings.target()
        )
    })?;
    let base = c.configs[0].clone();
    let manager = Manager::from_connect(
        base,
        c,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let timeout = Some(Duration::from_secs(30));
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(Runtime::Tokio1)
        .create_timeout(timeout)
        .wait_timeout(timeout)
        .build()
        .context("cannot build Postgres connection pool")
}

/// A pool from a URL or key=value string (tests, tools).
pub async fn connect_pool(conninfo: &str, max_size: usize) -> anyhow::Result<Pool> {
    pool(&PgSettings::parse(conninfo)?, max_size)
}

/// Splits a URL or key=value string into libpq keyword/value pairs.
pub fn parse_conninfo(s: &str) -> anyhow::Result<Vec<(String, String)>> {
    let t = s.trim();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        parse_url(t)
    } else {
        parse_key_values(t)
    }
}

/// libpq's key=value form: spaces around `=` allowed; a value is
/// single-quoted (with `\'` and `\\`) or runs to the next space (with `\`
/// escaping the next character).
fn parse_key_values(s: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            bail!("missing \"=\" after {key:?} in connection info string");
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut value = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            loop {
                match it.next() {
                    None => bail!("unterminated quoted string in connection info string"),
                    Some('\\') => {
                        if let Some(c) = it.next() {
                            value.push(c);
                        }
                    }
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                it.next();
                if c == '\\' {
                    if let Some(n) = it.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| anyhow!("invalid percent-encoding in connection URL"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow!("percent-encoded connection URL is not UTF-8"))
}

/// libpq's URL form: `postgres://[user[:password]@][host[:port],…][/db][?k=v&…]`.
/// Errors never quote the URL (it may hold a password).
fn parse_url(s: &str) -> anyhow::Result<Vec<(String, String)>> {
    let rest = s.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut out = Vec::new();
    let hostspec = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((u, p)) => {
                    if !u.is_empty() {
                        out.push(("user".into(), percent_decode(u)?));
                    }
                    out.push(("password".into(), percent_decode(p)?));
                }
                None if !userinfo.is_empty() => {
                    out.push(("user".into(), percent_decode(userinfo)?))
                }
                None => {}
            }
            &authority[at + 1..]
        }
        None => authority,
    };
    if !hostspec.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for h in hostspec.split(',') {
            let (host, port) = if let Some(r) = h.strip_prefix('[') {
                let (ip, after) = r
                    .split_once(']')
                    .ok_or_else(|| anyhow!("unterminated [ in connection URL host"))?;
                (ip.to_string(), after.strip_prefix(':').unwrap_or(""))
            } else {
                match h.rsplit_once(':') {
                    Some((h, p)) => (percent_decode(h)?, p),
                    None => (percent_decode(h)?, ""),
                }
            };
            hosts.push(host);
            ports.push(port.to_string());
        }
        out.push(("host".into(), hosts.join(",")));
        if ports.iter().any(|p| !p.is_empty()) {
            out.push(("port".into(), ports.join(",")));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".into(), percent_decode(db)?));
    }
    for kv in query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
    {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("connection URL parameter without \"=\""))?;
        let k = percent_decode(k)?;
        // libpq: a parameter overrides the same one from the URL's body.
        out.retain(|(ok, _)| ok != &k);
        out.push((k, percent_decode(v)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(s: &str) -> anyhow::Result<PgSettings> {
        PgSettings::parse_with(s, None, &no_env)
    }

    #[test]
    fn key_values_with_quotes_and_escapes() {
        let p = parse_key_values(r"host = h  password='a \' b\\' user=u\ x dbname=").unwrap();
        assert_eq!(
            p,
            vec![
                ("host".into(), "h".into()),
                ("password".into(), r"a ' b\".into()),
                ("user".into(), "u x".into()),
                ("dbname".into(), "".into()),
            ]
        );
        assert!(parse_key_values("host").is_err());
        assert!(parse_key_values("password='x").is_err());
    }

    #[test]
    fn url_form() {
        let s = parse(
            "postgresql://us%40r:p%3Aw@db.example:6432/look%20out?sslmode=verify-full&sslrootcert=/ca.pem&application_name=ing&connect_timeout=1",
        )
        .unwrap();
        assert_eq!(s.hosts, vec!["db.example"]);
        assert_eq!(s.ports, vec![6432]);
        assert_eq!(s.user, "us@r");
        assert_eq!(s.password.as_deref(), Some("p:w"));
        assert_eq!(s.dbname, "look out");
        assert_eq!(s.sslmode, SslMode::VerifyFull);
        assert_eq!(s.sslrootcert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(s.application_name.as_deref(), Some("ing"));
        assert_eq!(s.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            s.target(),
            "db.example:6432/look out as us@r (sslmode=verify-full)"
        );
        let s = parse("postgres://u@[::1]:5,h2/d").unwrap();
        assert_eq!(s.hosts, vec!["::1", "h2"]);
        assert_eq!(s.ports, vec![5, 5432]);
    }

    #[test]
    fn defaults_and_rejections() {
        let s = parse("user=u").unwrap();
        assert_eq!(s.target(), "localhost:5432/u as u (sslmode=prefer)");
        let e = parse("user=u sslmode=verify").unwrap_err();
        assert!(format!("{e:#}").contains("invalid sslmode"), "{e:#}");
        let e = parse("user=u password=hunter2 sslcrl=/x").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("\"sslcrl\""), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(parse("user=u sslcert=/c").is_err());
        assert!(parse("user=u keepalives_idle=x").is_err());
        assert!(parse("user=u keepalives_idle=30 gssencmode=prefer").is_ok());
        let e = parse("postgres://u:hunter2@h:x/d").unwrap_err();
        assert!(!format!("{e:#}").contains("hunter2"));
        assert!(!format!("{:?}", parse("user=u password=hunter2").unwrap()).contains("hunter2"));
    }

    #[test]
    fn password_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let pgpass = dir.path().join("pgpass");
        std::fs::write(
            &pgpass,
            "# comment\nother:*:*:*:no\n*:5432:*:u:from\\:pass\\\\file\n",
        )
        .unwrap();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, "from-secret\n").unwrap();
        let pass = pgpass.display().to_string();
        let env = move |k: &str| match k {
            "PGPASSWORD" => Some("from-env".to_string()),
            "PGPASSFILE" => Some(pass.clone()),
            _ => None,
        };
        let env_nopw = {
            let pass = pgpass.display().to_string();
            move |k: &str| (k == "PGPASSFILE").then(|| pass.clone())
        };
        let p = |s: &str, f: Option<&Path>, e: EnvLookup| {
            let s = PgSettings::parse_with(s, f, e).unwrap();
            (s.password.clone(), s.password_source)
        };
        assert_eq!(
            p("user=u password=x", Some(&pwfile), &env),
            (
                Some("from-secret".into()),
                Some(PasswordSource::PasswordFile)
            )
        );
        assert_eq!(
            p("user=u password=x", None, &env),
            (Some("x".into()), Some(PasswordSource::Settings))
        );
        assert_eq!(
            p("user=u password=psw", None, &env),
            (Some("from-env".into()), Some(PasswordSource::Env))
        );
        assert_eq!(
            p("user=u password=psw", None, &env_nopw),
            (
                Some("from:pass\\file".into()),
                Some(PasswordSource::Passfile)
            )
        );
        assert_eq!(
            p("user=v password=psw", None, &env_nopw),
            (Some("psw".into()), Some(PasswordSource::Default))
        );
        assert_eq!(p("user=v", None, &no_env), (None, None));
        let e =
            PgSettings::parse_with("user=u", Some(&dir.path().join("nope")), &no_env).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
        let e = PgSettings::parse_with("user=u passfile=/nonexistent/pgpass", None, &no_env)
            .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/pgpass"), "{e:#}");
    }

    #[test]
    fn upstream_default_map_is_plain_with_its_password() {
        let s = PgSettings::from_config_with(&config::Postgres::default(), &no_env).unwrap();
        assert_eq!(
            s.target(),
            "127.0.0.1:5432/lookout as postgres (sslmode=disable)"
        );
        assert_eq!(s.attempts(), &[TpSslMode::Disable]);
        assert_eq!(s.password.as_deref(), Some(DEFAULT_PASSWORD));
        assert_eq!(s.password_source, Some(PasswordSource::Default));
        assert_eq!(s.application_name.as_deref(), Some("lookout-ingester"));
        let s = parse("host=/run/postgresql user=u sslmode=verify-full").unwrap();
        assert_eq!(s.attempts(), &[TpSslMode::Disable]);
    }

    #[test]
    fn pgpass_wildcards() {
        let t = "h:5432:db:u:one\n*:*:*:*:two\n";
        assert_eq!(
            pgpass_lookup(t, "h", "5432", "db", "u").as_deref(),
            Some("one")
        );
        assert_eq!(
            pgpass_lookup(t, "h", "5433", "db", "u").as_deref(),
            Some("two")
        );
        // An escaped "*" is a literal star, not a wildcard.
        assert_eq!(pgpass_lookup("\\*:*:*:*:x\n", "h", "1", "d", "u"), None);
        assert_eq!(pgpass_lookup("h:1:d:u\n", "h", "1", "d", "u"), None);
    }
}

//! Pulsar authentication providers. pulsar-rs asks its provider for the
//! auth data on every (re)connect, so both providers fetch fresh
//! credentials there: a rotated token file or credentials file is picked up
//! by the next connection without a restart.
//!
//! Secrets (the token, the client secret, the access token) never go into an
//! error or a log line; errors name the file or the endpoint and the cause.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pulsar::authentication::Authentication;
use pulsar::error::AuthenticationError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use url::Url;

/// How long one request to the OAuth2 issuer may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest issuer answer we read; discovery documents are a few KiB.
const HTTP_MAX_BODY: u64 = 1 << 20;

fn fail(msg: String) -> AuthenticationError {
    AuthenticationError::Custom(msg)
}

/// JWT from `pulsar.jwtTokenPath`, read again for every connection.
pub struct TokenFile {
    pub path: PathBuf,
}

#[async_trait]
impl Authentication for TokenFile {
    fn auth_method_name(&self) -> String {
        "token".into()
    }

    async fn initialize(&mut self) -> Result<(), AuthenticationError> {
        Ok(())
    }

    async fn auth_data(&mut self) -> Result<Vec<u8>, AuthenticationError> {
        read_token(&self.path).map_err(fail)
    }
}

/// The token in `path`, trimmed. The error names the path, never content.
pub fn read_token(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read pulsar.jwtTokenPath {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("pulsar.jwtTokenPath {} is empty", path.display()));
    }
    Ok(token.as_bytes().to_vec())
}

/// OAuth2 client-credentials grant, as Pulsar clients do it: the issuer's
/// discovery document names the token endpoint; the access token is sent to
/// the broker with the `token` method. The token is cached until shortly
/// before it expires; the credentials file is read again for each new token.
pub struct OAuth2 {
    pub issuer_url: Option<String>,
    pub audience: Option<String>,
    pub credentials: PathBuf,
    pub cached: Option<(Vec<u8>, Instant)>,
}

#[derive(serde::Deserialize)]
struct Credentials {
    client_id: String,
    client_secret: String,
    #[serde(default)]
    issuer_url: Option<String>,
}

#[async_trait]
impl Authentication for OAuth2 {
    fn auth_method_name(&self) -> String {
        "token".into()
    }

    async fn initialize(&mut self) -> Result<(), AuthenticationError> {
        Ok(())
    }

    async fn auth_data(&mut self) -> Result<Vec<u8>, AuthenticationError> {
        if let Some((token, until)) = &self.cached {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let (token, lifetime) = self.fetch().await.map_err(fail)?;
        // Renew a little early so a connection never presents a token that
        // expires while the broker checks it.
        if let Some(l) = lifetime {
            self.cached = Some((token.clone(), Instant::now() + l.mul_f64(0.9)));
        }
        Ok(token)
    }
}

impl OAuth2 {
    async fn fetch(&self) -> Result<(Vec<u8>, Option<Duration>), String> {
        let path = credentials_path(&self.credentials);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read pulsar.oauth2PrivateKey {}: {e}",
                path.display()
            )
        })?;
        // serde_json's error names line and column only, never the text.
        let creds: Credentials = serde_json::from_str(&text).map_err(|e| {
            format!(
                "pulsar.oauth2PrivateKey {}: not a client credentials file: {e}",
                path.display()
            )
        })?;
        let issuer = self
            .issuer_url
            .clone()
            .filter(|s| !s.is_empty())
            .or(creds.issuer_url.clone())
            .ok_or("OAuth2: no issuer URL (pulsar.oauth2IssuerUrl or issuer_url in the credentials file)")?;
        let issuer = Url::parse(&issuer)
            .map_err(|e| format!("OAuth2 issuer URL {}: {e}", shown(&issuer)))?;
        let discovery = issuer
            .join(&format!(
                "{}/.well-known/openid-configuration",
                issuer.path().trim_end_matches('/')
            ))
            .map_err(|e| format!("OAuth2 issuer URL {}: {e}", printable(&issuer)))?;
        let (status, body) = http(&discovery, None).await?;
        if status != 200 {
            return Err(format!(
                "OAuth2 discovery {} answered HTTP {status}",
                printable(&discovery)
            ));
        }
        #[derive(serde::Deserialize)]
        struct Discovery {
            token_endpoint: String,
        }
        let d: Discovery = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "OAuth2 discovery {}: no token_endpoint: {e}",
                printable(&discovery)
            )
        })?;
        let endpoint = Url::parse(&d.token_endpoint)
            .map_err(|e| format!("OAuth2 token endpoint {}: {e}", shown(&d.token_endpoint)))?;
        // Built in a block: the serializer is not Send and must not live
        // across the await below.
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials")
                .append_pair("client_id", &creds.client_id)
                .append_pair("client_secret", &creds.client_secret);
            if let Some(a) = self.audience.as_deref().filter(|a| !a.is_empty()) {
                form.append_pair("audience", a);
            }
            form.finish()
        };
        let (status, body) = http(&endpoint, Some(form)).await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            access_token: Option<String>,
            expires_in: Option<u64>,
            error: Option<String>,
            error_description: Option<String>,
        }
        let a: Answer = serde_json::from_slice(&body).map_err(|_| {
            format!(
                "OAuth2 token endpoint {} answered HTTP {status} without a JSON body",
                printable(&endpoint)
            )
        })?;
        match a.access_token {
            Some(t) if status == 200 && !t.is_empty() => {
                Ok((t.into_bytes(), a.expires_in.map(Duration::from_secs)))
            }
            _ => Err(format!(
                "OAuth2 token endpoint {} refused the client credentials grant: HTTP {status} {}{}",
                printable(&endpoint),
                a.error.as_deref().unwrap_or("no error code"),
                a.error_description
                    .map(|d| format!(" ({})", d.replace(['\n', '\r'], " ")))
                    .unwrap_or_default()
            )),
        }
    }
}

/// Pulsar's privateKey may be a plain path or a `file://` URL.
fn credentials_path(p: &Path) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_prefix("file://")) {
        Some(rest) => PathBuf::from(rest),
        None => p.to_path_buf(),
    }
}

/// scheme://host:port/path of a URL: no user info, no query (either could
/// carry a secret).
pub fn printable(u: &Url) -> String {
    format!(
        "{}://{}{}{}",
        u.scheme(),
        u.host_str().unwrap_or(""),
        u.port().map(|p| format!(":{p}")).unwrap_or_default(),
        u.path()
    )
}

fn shown(s: &str) -> String {
    Url::parse(s)
        .map(|u| printable(&u))
        .unwrap_or_else(|_| "(unparsable URL)".into())
}

/// One HTTP/1.1 request (GET, or POST of a form when `form` is given) with
/// `Connection: close`; returns the status and the (de-chunked) body. Small
/// on purpose: the issuer's two requests are all this client ever sends.
async fn http(u: &Url, form: Option<String>) -> Result<(u16, Vec<u8>), String> {
    let what = printable(u);
    let host = u
        .host_str()
        .ok_or_else(|| format!("OAuth2 URL {what} has no host"))?
        .to_string();
    let port = u
        .port_or_known_default()
        .ok_or_else(|| format!("OAuth2 URL {what} has no port"))?;
    let mut target = u.path().to_string();
    if let Some(q) = u.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut req = format!(
        "{} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\nConnection: close\r\n",
        if form.is_some() { "POST" } else { "GET" }
    );
    let body = form.unwrap_or_default();
    if !body.is_empty() {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    req.push_str(&body);
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        match u.scheme() {
            "https" => {
                let cx = native_tls::TlsConnector::new().map_err(std::io::Error::other)?;
                let mut s = tokio_native_tls::TlsConnector::from(cx)
                    .connect(&host, tcp)
                    .await
                    .map_err(std::io::Error::other)?;
                roundtrip(&mut s, req.as_bytes()).await
            }
            _ => {
                let mut s = tcp;
                roundtrip(&mut s, req.as_bytes()).await
            }
        }
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("OAuth2 request to {what} timed out after {HTTP_TIMEOUT:?}"))?
        .map_err(|e| format!("OAuth2 request to {what} failed: {e}"))?;
    parse_response(&raw).ok_or_else(|| format!("OAuth2: {what} sent a malformed HTTP answer"))
}

async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    req: &[u8],
) -> std::io::Result<Vec<u8>> {
    s.write_all(req).await?;
    s.flush().await?;
    let mut raw = Vec::new();
    s.take(HTTP_MAX_BODY).read_to_end(&mut raw).await?;
    Ok(raw)
}

fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Some((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some((status, out));
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Some((200, b"{}".to_vec())));
        let chunked =
            b"HTTP/1.1 401 No\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n2\r\n\"}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((401, b"{\"a\"}".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
    }

    #[tokio::test]
    async fn token_file_is_read_for_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let mut t = TokenFile { path: path.clone() };
        assert_eq!(t.auth_data().await.unwrap(), b"first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(t.auth_data().await.unwrap(), b"second");
        std::fs::write(&path, " \n").unwrap();
        let e = t.auth_data().await.unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = t.auth_data().await.unwrap_err().to_string();
        assert!(e.starts_with("cannot read pulsar.jwtTokenPath"), "{e}");
    }

    #[test]
    fn printable_urls_drop_user_info_and_query() {
        let u = Url::parse("https://me:secret@issuer.example:8443/realm?key=secret").unwrap();
        assert_eq!(printable(&u), "https://issuer.example:8443/realm");
        assert_eq!(
            credentials_path(Path::new("file:///etc/creds.json")),
            PathBuf::from("/etc/creds.json")
        );
    }
}

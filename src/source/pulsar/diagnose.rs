//! Why a connection failed. pulsar-rs reports a failed first connection as
//! "fatal error when connecting to the Pulsar server" and logs the cause
//! separately; an operator needs the cause on the one error line (the TLS
//! library's reason, or the broker's own error such as
//! `AuthenticationError: ...`). So after a failure we repeat the steps once
//! ourselves, with the same settings, and report the first that fails.

use std::time::Duration;

use prost::Message as _;
use pulsar::authentication::Authentication;
use pulsar::message::proto::{base_command, BaseCommand, CommandConnect, ServerError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::PulsarConfig;

const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// A CONNECTED or ERROR answer is small; refuse to buffer anything big.
const MAX_FRAME: usize = 1 << 20;

/// The first step of connecting to the service URL that fails, as one line
/// without secrets; `None` when every step works (the failure was later or
/// transient).
pub async fn probe(cfg: &PulsarConfig, auth: Option<Box<dyn Authentication>>) -> Option<String> {
    let url = url::Url::parse(&cfg.url).ok()?;
    let tls = url.scheme() == "pulsar+ssl";
    let host = url.host_str()?.to_string();
    let port = url.port().unwrap_or(if tls { 6651 } else { 6650 });
    let at = format!("{host}:{port}");
    let tcp = match tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Some(format!("cannot connect to {at}: {e}")),
        Err(_) => return Some(format!("cannot connect to {at}: timed out")),
    };
    if !tls {
        return handshake(tcp, &at, auth).await;
    }
    let mut b = native_tls::TlsConnector::builder();
    if let Some(path) = cfg
        .tls_trust_certs_file_path
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
    {
        let pem = match std::fs::read(path) {
            Ok(p) => p,
            Err(e) => {
                return Some(format!(
                    "cannot read pulsar.TLSTrustCertsFilePath {}: {e}",
                    path.display()
                ))
            }
        };
        for block in pem_blocks(&pem) {
            match native_tls::Certificate::from_pem(block.as_bytes()) {
                Ok(c) => {
                    b.add_root_certificate(c);
                }
                Err(e) => {
                    return Some(format!(
                        "pulsar.TLSTrustCertsFilePath {}: {e}",
                        path.display()
                    ))
                }
            }
        }
    }
    b.danger_accept_invalid_hostnames(
        cfg.tls_allow_insecure_connection || !cfg.tls_validate_hostname,
    );
    b.danger_accept_invalid_certs(cfg.tls_allow_insecure_connection);
    let cx = match b.build() {
        Ok(cx) => tokio_native_tls::TlsConnector::from(cx),
        Err(e) => return Some(format!("TLS setup failed: {e}")),
    };
    match tokio::time::timeout(STEP_TIMEOUT, cx.connect(&host, tcp)).await {
        Ok(Ok(s)) => handshake(s, &at, auth).await,
        Ok(Err(e)) => Some(format!("TLS handshake with {at} failed: {e}")),
        Err(_) => Some(format!("TLS handshake with {at} timed out")),
    }
}

/// Each `-----BEGIN CERTIFICATE-----` block of a PEM file.
fn pem_blocks(pem: &[u8]) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    String::from_utf8_lossy(pem)
        .split_inclusive(END)
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
        .map(str::to_string)
        .collect()
}

/// Sends CONNECT (with the auth data) and reads the broker's answer.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    at: &str,
    auth: Option<Box<dyn Authentication>>,
) -> Option<String> {
    let (auth_method_name, auth_data) = match auth {
        Some(mut a) => match a.auth_data().await {
            Ok(d) => (Some(a.auth_method_name()), Some(d)),
            // The providers' errors name files and endpoints, never secrets.
            Err(e) => return Some(e.to_string()),
        },
        None => (None, None),
    };
    let command = BaseCommand {
        r#type: base_command::Type::Connect as i32,
        connect: Some(CommandConnect {
            client_version: format!("lookout-ingester {}", env!("CARGO_PKG_VERSION")),
            protocol_version: Some(12),
            auth_method_name,
            auth_data,
            ..Default::default()
        }),
        ..Default::default()
    };
    let body = command.encode_to_vec();
    let mut frame = Vec::with_capacity(body.len() + 8);
    frame.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let exchange = async {
        s.write_all(&frame).await?;
        s.flush().await?;
        let total = s.read_u32().await? as usize;
        if !(4..=MAX_FRAME).contains(&total) {
            return Err(std::io::Error::other(format!("frame of {total} bytes")));
        }
        let mut rest = vec![0u8; total];
        s.read_exact(&mut rest).await?;
        let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let cmd = rest
            .get(4..4 + size)
            .ok_or_else(|| std::io::Error::other("truncated command"))?;
        BaseCommand::decode(cmd).map_err(std::io::Error::other)
    };
    match tokio::time::timeout(STEP_TIMEOUT, exchange).await {
        Err(_) => Some(format!("the broker at {at} did not answer CONNECT")),
        Ok(Err(e)) => Some(format!("the broker at {at} closed the connection: {e}")),
        Ok(Ok(answer)) => answer.error.map(|e| {
            let name = ServerError::try_from(e.error)
                .map(|k| k.as_str_name().to_string())
                .unwrap_or_else(|_| format!("error {}", e.error));
            format!(
                "the broker at {at} refused the connection: {name}: {}",
                e.message.replace(['\n', '\r'], " ")
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn splits_pem_bundles() {
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n\
                    -----BEGIN CERTIFICATE-----\nBB\n-----END CERTIFICATE-----\n";
        let blocks = super::pem_blocks(pem);
        assert_eq!(blocks.len(), 2);
        assert!(blocks[1].contains("BB") && !blocks[1].contains("AA"));
    }
}

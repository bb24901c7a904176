//! `pulsar-proxy` binary: the library's proxy plus a line-based control port
//! so shell scripts can inject faults.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use pulsar_proxy::ProxyHandle;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Proxy between pulsar-rs and pulsar-lite that adds the frame checksums
/// pulsar-rs requires, keeps lookups pointing at itself, and can cut, stall
/// or refuse connections on command.
///
/// Control port protocol: one command per line, one reply line each:
/// cut | stall | resume | refuse | accept | hangup | nohangup | status.
/// Replies are "ok connections=N stalled=B refusing=B ..." or "error ...".
/// Example: echo cut | nc -q1 127.0.0.1 6652
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to accept Pulsar clients on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:6651")]
    listen: SocketAddr,
    /// pulsar-lite (or any Pulsar broker) address, host:port.
    #[arg(long, default_value = "127.0.0.1:6650")]
    broker: String,
    /// Optional address for the line-based control port.
    #[arg(long)]
    control: Option<SocketAddr>,
    /// Terminate TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PKCS#8 private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Host name to put in rewritten broker URLs (default: the IP address).
    #[arg(long)]
    advertise_host: Option<String>,
    /// Require token authentication with the token in this file; a wrong
    /// or missing token gets the broker's AuthenticationError.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "pulsar_proxy=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();

    let broker = tokio::net::lookup_host(&args.broker)
        .await?
        .next()
        .ok_or_else(|| format!("cannot resolve broker address {:?}", args.broker))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some((std::fs::read(c)?, std::fs::read(k)?)),
        _ => None,
    };
    let token = match &args.token_file {
        Some(f) => Some(std::fs::read_to_string(f)?.trim().as_bytes().to_vec()),
        None => None,
    };
    let options = pulsar_proxy::Options {
        tls,
        advertise_host: args.advertise_host.clone(),
        token,
    };
    let proxy = Arc::new(pulsar_proxy::start_with(args.listen, broker, options).await?);

    let control = match args.control {
        Some(addr) => {
            let l = TcpListener::bind(addr).await?;
            let bound = l.local_addr()?;
            tokio::spawn(control_server(l, proxy.clone()));
            Some(bound)
        }
        None => None,
    };
    // One line on stdout once listening, so scripts can wait for it.
    match control {
        Some(c) => println!(
            "listening {} broker {} control {} url {}",
            proxy.addr(),
            broker,
            c,
            proxy.url()
        ),
        None => println!(
            "listening {} broker {} url {}",
            proxy.addr(),
            broker,
            proxy.url()
        ),
    }

    tokio::signal::ctrl_c().await?;
    info!("interrupted, shutting down");
    Ok(())
}

async fn control_server(listener: TcpListener, proxy: Arc<ProxyHandle>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "control accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut lines = BufReader::new(rd).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim().is_empty() {
                    continue;
                }
                let reply = proxy.control(&line).await;
                info!(%peer, command = line.trim(), %reply, "control");
                if wr.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

//! The TCP proxy: one task per client connection, frames parsed in both
//! directions, broker→client frames fixed up (see [`crate::frame`]), plus the
//! fault-injection switches tests use.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::flow::Flow;
use crate::frame::{self, Fixup};

/// How long we wait for pulsar-lite to accept a connection before giving up
/// on the client that triggered it.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `refuse(false)` keeps trying to re-bind the listen address.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters since start, for assertions and the `status` control command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client connections accepted and proxied.
    pub accepted: u64,
    /// Client connections closed at once because `hangup` was on.
    pub hung_up: u64,
    /// Connections closed by `cut_all`.
    pub cut: u64,
    /// Broker→client payload frames that got a magic + CRC32C inserted.
    pub checksums_added: u64,
    /// Broker→client commands re-encoded to point at the proxy.
    pub urls_rewritten: u64,
    /// Connections closed because a frame could not be parsed.
    pub malformed: u64,
    /// MESSAGE frames held now, waiting for their consumer's permits.
    pub held: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    hung_up: AtomicU64,
    cut: AtomicU64,
    checksums_added: AtomicU64,
    urls_rewritten: AtomicU64,
    malformed: AtomicU64,
    held: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    /// Set when the proxy terminates TLS.
    tls: Option<tokio_native_tls::TlsAcceptor>,
    /// Host name put into rewritten broker URLs instead of the IP address.
    advertise_host: Option<String>,
    /// When set, a CONNECT must carry `token` auth with exactly these bytes.
    token: Option<Vec<u8>>,
    counters_auth_rejected: AtomicU64,
    /// Desired state, set by `refuse`.
    refuse: watch::Sender<bool>,
    /// Actual state, reported by the accept loop.
    listening: watch::Sender<bool>,
    hangup: AtomicBool,
    stall: watch::Sender<bool>,
    /// Bumped by `cut_all`; every connection task watches it.
    cut: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    live: watch::Sender<usize>,
    counters: Counters,
}

/// A running proxy. Dropping it stops accepting and closes every connection
/// (asynchronously); [`ProxyHandle::shutdown`] does the same and waits.
pub struct ProxyHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: Option<JoinHandle<()>>,
}

/// Starts a proxy listening on `listen` (port 0 picks a free port; see
/// [`ProxyHandle::addr`]) that forwards to the Pulsar broker at `upstream`.
pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<ProxyHandle> {
    start_with(listen, upstream, Options::default()).await
}

/// Optional behaviour of a proxy started with [`start_with`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Terminate TLS with this server certificate chain and PKCS#8 key
    /// (both PEM); clients then use `pulsar+ssl://`.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Host name for rewritten broker URLs (default: the IP address the
    /// client reached), so a client checking host names sees the name its
    /// certificate is for.
    pub advertise_host: Option<String>,
    /// Check every CONNECT for token authentication with exactly this
    /// token; anything else gets the broker's `AuthenticationError` and the
    /// connection is closed, as a real broker does.
    pub token: Option<Vec<u8>>,
}

/// [`start`] with TLS termination and/or token checking.
pub async fn start_with(
    listen: SocketAddr,
    upstream: SocketAddr,
    options: Options,
) -> io::Result<ProxyHandle> {
    let tls = match &options.tls {
        Some((cert, key)) => {
            let id = native_tls::Identity::from_pkcs8(cert, key).map_err(io::Error::other)?;
            let acceptor = native_tls::TlsAcceptor::new(id).map_err(io::Error::other)?;
            Some(tokio_native_tls::TlsAcceptor::from(acceptor))
        }
        None => None,
    };
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        upstream,
        tls,
        advertise_host: options.advertise_host,
        token: options.token,
        counters_auth_rejected: AtomicU64::new(0),
        refuse: watch::Sender::new(false),
        listening: watch::Sender::new(true),
        hangup: AtomicBool::new(false),
        stall: watch::Sender::new(false),
        cut: watch::Sender::new(0),
        shutdown: watch::Sender::new(false),
        live: watch::Sender::new(0),
        counters: Counters::default(),
    });
    let accept_task = tokio::spawn(accept_loop(listener, addr, shared.clone()));
    info!(%addr, %upstream, "pulsar-proxy listening");
    Ok(ProxyHandle {
        addr,
        shared,
        accept_task: Some(accept_task),
    })
}

impl ProxyHandle {
    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Service URL for [`Self::addr`]: `pulsar+ssl://` when terminating
    /// TLS, with the advertised host name if one is set.
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "pulsar+ssl"
        } else {
            "pulsar"
        };
        match &self.shared.advertise_host {
            Some(h) => format!("{scheme}://{h}:{}", self.addr.port()),
            None => format!("{scheme}://{}", self.addr),
        }
    }

    /// CONNECTs rejected for a missing or wrong token.
    pub fn auth_rejected(&self) -> u64 {
        self.shared.counters_auth_rejected.load(Ordering::Relaxed)
    }

    /// Closes every live connection, both sides, as a network failure would.
    /// New connections are still accepted unless [`Self::refuse`] is on. The
    /// tasks finish shortly after; use [`Self::wait_connections`] to wait.
    pub fn cut_all(&self) {
        self.shared.cut.send_modify(|g| *g += 1);
    }

    /// While on, nothing is forwarded in either direction on any connection,
    /// old or new, but nothing is dropped either: bytes already read wait in
    /// the proxy and the rest back up in the kernel socket buffers, and all of
    /// it flows on resume. Connections stay open and silent, like a network
    /// partition; keepalive pings stall too, so clients may time out. Takes
    /// effect at frame boundaries.
    pub fn stall(&self, on: bool) {
        self.shared.stall.send_replace(on);
    }

    /// While on, the listening socket is closed, so new connections get
    /// ECONNREFUSED exactly as from a broker that is down; pulsar-rs retries
    /// those with backoff. Off binds the same address again. Existing
    /// connections are untouched; combine with [`Self::cut_all`]. Returns once
    /// the listener is actually closed / listening again.
    pub async fn refuse(&self, on: bool) -> io::Result<()> {
        self.shared.refuse.send_replace(on);
        let mut listening = self.shared.listening.subscribe();
        let waited = tokio::time::timeout(REBIND_TIMEOUT, listening.wait_for(|l| *l != on))
            .await
            .map(|r| r.map(drop));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::other("proxy stopped")),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("could not re-bind {}", self.addr),
            )),
        }
    }

    /// While on, new connections are accepted and closed at once, before any
    /// reply to CONNECT. Unlike [`Self::refuse`], pulsar-rs treats this as a
    /// fatal (non-retryable) connection error: a consumer whose reconnect
    /// hits it stops, and its stream ends (`None`).
    pub fn hangup(&self, on: bool) {
        self.shared.hangup.store(on, Ordering::SeqCst);
    }

    /// Number of client connections currently being proxied.
    pub fn connections(&self) -> usize {
        *self.shared.live.borrow()
    }

    /// Waits until the live connection count satisfies `pred`.
    pub async fn wait_connections(&self, pred: impl Fn(usize) -> bool) {
        let mut rx = self.shared.live.subscribe();
        // The sender lives in `self`, so this cannot fail while we hold it.
        let _ = rx.wait_for(|n| pred(*n)).await;
    }

    /// Whether [`Self::stall`] is on.
    pub fn is_stalled(&self) -> bool {
        *self.shared.stall.borrow()
    }

    /// Whether [`Self::refuse`] is on.
    pub fn is_refusing(&self) -> bool {
        *self.shared.refuse.borrow()
    }

    /// Whether [`Self::hangup`] is on.
    pub fn is_hanging_up(&self) -> bool {
        self.shared.hangup.load(Ordering::SeqCst)
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            accepted: c.accepted.load(Ordering::Relaxed),
            hung_up: c.hung_up.load(Ordering::Relaxed),
            cut: c.cut.load(Ordering::Relaxed),
            checksums_added: c.checksums_added.load(Ordering::Relaxed),
            urls_rewritten: c.urls_rewritten.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            held: c.held.load(Ordering::Relaxed),
        }
    }

    /// Runs one line of the text control protocol and returns the one-line
    /// reply. Commands: `cut`, `stall`, `resume`, `refuse`, `accept`,
    /// `hangup`, `nohangup`, `status`. Lives here rather than in the binary
    /// so it is tested with the rest.
    pub async fn control(&self, line: &str) -> String {
        let res = match line.trim() {
            "cut" => {
                self.cut_all();
                Ok(())
            }
            "stall" | "resume" => {
                self.stall(line.trim() == "stall");
                Ok(())
            }
            "refuse" => self.refuse(true).await,
            "accept" => self.refuse(false).await,
            "hangup" | "nohangup" => {
                self.hangup(line.trim() == "hangup");
                Ok(())
            }
            "status" => Ok(()),
            other => {
                return format!(
                    "error unknown command {other:?}; expected \
                     cut|stall|resume|refuse|accept|hangup|nohangup|status"
                )
            }
        };
        if let Err(e) = res {
            return format!("error {e}");
        }
        let s = self.stats();
        format!(
            "ok connections={} stalled={} refusing={} hangup={} accepted={} hung_up={} cut={} \
             checksums_added={} urls_rewritten={} malformed={} held={}",
            self.connections(),
            self.is_stalled(),
            self.is_refusing(),
            self.is_hanging_up(),
            s.accepted,
            s.hung_up,
            s.cut,
            s.checksums_added,
            s.urls_rewritten,
            s.malformed,
            s.held
        )
    }

    /// Stops accepting, closes every connection and waits for all tasks.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    let mut refuse = shared.refuse.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let mut conns = JoinSet::new();
    loop {
        let want_refuse = *refuse.borrow_and_update();
        if want_refuse && listener.take().is_some() {
            info!(%addr, "listener closed: refusing connections");
            shared.listening.send_replace(false);
        } else if !want_refuse && listener.is_none() {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    info!(%addr, "listening again");
                    listener = Some(l);
                    shared.listening.send_replace(true);
                }
                Err(e) => {
                    warn!(%addr, error = %e, "re-bind failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                }
            }
            continue;
        }
        let accepted = tokio::select! {
            r = accept_if_listening(listener.as_ref()) => r,
            _ = refuse.changed() => continue,
            _ = shutdown.wait_for(|s| *s) => break,
            // Reap finished tasks so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (client, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Typically EMFILE; back off rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shared.hangup.load(Ordering::SeqCst) {
            shared.counters.hung_up.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "hanging up on new connection");
            drop(client);
            continue;
        }
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        shared.live.send_modify(|n| *n += 1);
        // Subscribe before spawning so a cut issued right after accept()
        // returns still reaches this connection.
        let cut = shared.cut.subscribe();
        let shutdown = shared.shutdown.subscribe();
        let shared = shared.clone();
        conns.spawn(async move {
            let _live = LiveGuard(&shared.live);
            serve(client, peer, &shared, cut, shutdown).await;
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn accept_if_listening(l: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

struct LiveGuard<'a>(&'a watch::Sender<usize>);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    ToBroker,
    ToClient,
}

/// Why a pump stopped.
enum PumpEnd {
    Eof,
    Io(io::Error),
    Malformed(frame::FrameError),
}

async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    cut: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
) {
    // Advertise the address this client actually reached, which stays right
    // even when listening on 0.0.0.0.
    let advertised = match client.local_addr() {
        Ok(a) => match &shared.advertise_host {
            Some(h) => format!("{h}:{}", a.port()),
            None => a.to_string(),
        },
        Err(e) => {
            warn!(%peer, error = %e, "no local address");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    match &shared.tls {
        Some(acceptor) => {
            let handshake = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, acceptor.accept(client));
            match handshake.await {
                Ok(Ok(tls)) => serve_stream(tls, peer, advertised, shared, cut, shutdown).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        }
        None => serve_stream(client, peer, advertised, shared, cut, shutdown).await,
    }
}

/// Reads the client's first frame and, when a token is expected, checks
/// it. Returns the bytes read so far (the CONNECT frame first) to forward,
/// or `None` when the client was turned away or went away.
async fn check_connect<S>(client: &mut S, peer: SocketAddr, shared: &Shared) -> Option<BytesMut>
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    let mut buf = BytesMut::with_capacity(4096);
    let Some(expected) = &shared.token else {
        return Some(buf);
    };
    let first = loop {
        match frame::next_frame(&mut buf) {
            Ok(Some(f)) => break f,
            Ok(None) => {}
            Err(_) => return None,
        }
        match client.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    };
    let command = frame::decode_command(&first).ok()?;
    let ok = command.connect.as_ref().is_some_and(|c| {
        c.auth_method_name.as_deref() == Some("token")
            && c.auth_data.as_deref() == Some(expected.as_slice())
    });
    if !ok {
        shared
            .counters_auth_rejected
            .fetch_add(1, Ordering::Relaxed);
        info!(%peer, "CONNECT rejected: missing or wrong token");
        // What a broker sends for a failed CONNECT: an ERROR with request
        // id -1 and AuthenticationError, then it closes the connection.
        let error = frame::proto::BaseCommand {
            r#type: frame::proto::base_command::Type::Error as i32,
            error: Some(frame::proto::CommandError {
                request_id: u64::MAX,
                error: frame::proto::ServerError::AuthenticationError as i32,
                message: "Unable to authenticate: the token is not valid".into(),
            }),
            ..Default::default()
        };
        let _ = client.write_all(&frame::encode_simple(&error)).await;
        let _ = client.shutdown().await;
        return None;
    }
    let mut out = BytesMut::from(&first[..]);
    out.extend_from_slice(&buf);
    Some(out)
}

async fn serve_stream<S>(
    mut client: S,
    peer: SocketAddr,
    advertised: String,
    shared: &Shared,
    mut cut: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    let initial = tokio::select! {
        r = check_connect(&mut client, peer, shared) => match r {
            Some(b) => b,
            None => return,
        },
        _ = cut.changed() => return,
        _ = shutdown.wait_for(|s| *s) => return,
    };
    let connect = tokio::time::timeout(
        UPSTREAM_CONNECT_TIMEOUT,
        TcpStream::connect(shared.upstream),
    );
    let broker = tokio::select! {
        r = connect => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(%peer, upstream = %shared.upstream, error = %e, "broker connect failed");
                return;
            }
            Err(_) => {
                warn!(%peer, upstream = %shared.upstream, "broker connect timed out");
                return;
            }
        },
        _ = cut.changed() => return,
        _ = shutdown.wait_for(|s| *s) => return,
    };
    let _ = broker.set_nodelay(true);
    debug!(%peer, "proxying");

    let (client_rd, client_wr) = tokio::io::split(client);
    let (broker_rd, broker_wr) = broker.into_split();
    let flow = FlowLink::default();
    // What this connection holds is dropped with it, however it ends.
    let _uncount = Uncount(&flow, shared);
    let up = pump(
        client_rd,
        broker_wr,
        Direction::ToBroker,
        &advertised,
        shared,
        initial,
        &flow,
    );
    let down = pump(
        broker_rd,
        client_wr,
        Direction::ToClient,
        &advertised,
        shared,
        BytesMut::new(),
        &flow,
    );
    // Whichever side ends first ends the connection: a Pulsar connection is
    // useless half-open, and dropping both halves closes both sockets.
    let (dir, end) = tokio::select! {
        e = up => (Direction::ToBroker, e),
        e = down => (Direction::ToClient, e),
        _ = cut.changed() => {
            shared.counters.cut.fetch_add(1, Ordering::Relaxed);
            info!(%peer, "connection cut");
            return;
        }
        _ = shutdown.wait_for(|s| *s) => return,
    };
    match end {
        PumpEnd::Eof => debug!(%peer, ?dir, "closed by peer"),
        PumpEnd::Io(e) => debug!(%peer, ?dir, error = %e, "connection error"),
        PumpEnd::Malformed(e) => {
            shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, ?dir, error = %e, "malformed frame, closing connection");
        }
    }
}

/// A command-only frame with its lookup answer pointed at the TLS URL;
/// any other frame unchanged.
fn with_tls_url(f: bytes::Bytes, advertised: &str) -> bytes::Bytes {
    match frame::split_frame(&f) {
        Ok(parts) if parts.rest.is_empty() => match frame::decode_command(&f) {
            Ok(mut c) => {
                if frame::advertise_tls(&mut c, advertised) {
                    frame::encode_simple(&c)
                } else {
                    f
                }
            }
            Err(_) => f,
        },
        _ => f,
    }
}

/// A connection's flow control (see [`crate::flow`]): the client's FLOWs
/// grant permits, the broker's MESSAGEs are held until they allow them.
#[derive(Default)]
struct FlowLink {
    flow: std::sync::Mutex<Flow>,
    /// Permits were granted: the broker→client pump releases held frames.
    granted: tokio::sync::Notify,
    /// This connection's held frames as last added to the proxy's count.
    counted: std::sync::atomic::AtomicUsize,
}

impl FlowLink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the proxy's count of held frames by this connection's change.
    fn count_held(&self, now: usize, shared: &Shared) {
        let before = self.counted.swap(now, Ordering::Relaxed);
        let held = &shared.counters.held;
        if now >= before {
            held.fetch_add((now - before) as u64, Ordering::Relaxed);
        } else {
            held.fetch_sub((before - now) as u64, Ordering::Relaxed);
        }
    }
}

/// Takes a connection's held frames out of the proxy's count when dropped.
struct Uncount<'a>(&'a FlowLink, &'a Shared);

impl Drop for Uncount<'_> {
    fn drop(&mut self) {
        self.0.count_held(0, self.1);
    }
}

/// Copies frames from `src` to `dst`, fixing up broker→client frames,
/// holding messages until the client's permits allow them, and holding
/// everything while the proxy is stalled.
async fn pump<R, W>(
    mut src: R,
    mut dst: W,
    dir: Direction,
    advertised: &str,
    shared: &Shared,
    initial: BytesMut,
    link: &FlowLink,
) -> PumpEnd
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut stall = shared.stall.subscribe();
    let mut inbuf = initial;
    inbuf.reserve(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    // Bytes handed over by the CONNECT check are processed before reading.
    let mut pending = !inbuf.is_empty();
    loop {
        if !pending {
            // Broker→client also wakes when permits are granted (read_buf
            // is cancel safe: nothing is read when the other branch wins).
            let read = match dir {
                Direction::ToBroker => Some(src.read_buf(&mut inbuf).await),
                Direction::ToClient => tokio::select! {
                    r = src.read_buf(&mut inbuf) => Some(r),
                    _ = link.granted.notified() => None,
                },
            };
            match read {
                Some(Ok(0)) => return PumpEnd::Eof,
                Some(Err(e)) => return PumpEnd::Io(e),
                Some(Ok(_)) | None => {}
            }
        }
        pending = false;
        loop {
            let frame = match frame::next_frame(&mut inbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return PumpEnd::Malformed(e),
            };
            match dir {
                Direction::ToBroker => {
                    // Forwarded as they are (the client's frames are what
                    // pulsar-lite expects); FLOW and CLOSE_CONSUMER are
                    // also noted for the flow control.
                    match frame::split_frame(&frame) {
                        Err(e) => return PumpEnd::Malformed(e),
                        Ok(parts) if parts.rest.is_empty() => {
                            if let Ok(c) = frame::proto::BaseCommand::decode(parts.command) {
                                if link.lock().from_client(&c) {
                                    link.granted.notify_one();
                                }
                            }
                        }
                        Ok(_) => {}
                    }
                    out.extend_from_slice(&frame);
                }
                Direction::ToClient => match frame::fix_broker_frame(frame, advertised) {
                    Ok((mut fixed, how)) => {
                        if shared.tls.is_some() {
                            fixed = with_tls_url(fixed, advertised);
                        }
                        match how {
                            Fixup::Unchanged => {}
                            Fixup::ChecksumAdded | Fixup::EntryMetadataStripped => {
                                shared
                                    .counters
                                    .checksums_added
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                            Fixup::UrlRewritten => {
                                shared
                                    .counters
                                    .urls_rewritten
                                    .fetch_add(1, Ordering::Relaxed);
                                debug!(to = advertised, "rewrote broker URL");
                            }
                        }
                        match link.lock().from_broker(fixed) {
                            Ok(Some(f)) => out.extend_from_slice(&f),
                            Ok(None) => {}
                            Err(e) => return PumpEnd::Malformed(e),
                        }
                    }
                    Err(e) => return PumpEnd::Malformed(e),
                },
            }
        }
        if let Direction::ToClient = dir {
            let mut flow = link.lock();
            flow.release(&mut out);
            link.count_held(flow.held(), shared);
        }
        if out.is_empty() {
            continue;
        }
        // Not reading while stalled lets the kernel buffers apply
        // backpressure instead of growing ours.
        let _ = stall.wait_for(|s| !*s).await;
        if let Err(e) = dst.write_all(&out).await {
            return PumpEnd::Io(e);
        }
        out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_payload, encode_simple, payload_body, proto::*};

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// A fake broker that accepts one connection and hands it to the test.
    async fn fake_broker() -> (SocketAddr, tokio::sync::mpsc::Receiver<TcpStream>) {
        let l = TcpListener::bind(loopback()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                if tx.send(s).await.is_err() {
                    break;
                }
            }
        });
        (addr, rx)
    }

    async fn read_frame(s: &mut TcpStream) -> bytes::Bytes {
        let mut buf = BytesMut::new();
        loop {
            if let Some(f) = frame::next_frame(&mut buf).unwrap() {
                return f;
            }
            assert!(s.read_buf(&mut buf).await.unwrap() > 0, "eof");
        }
    }

    fn ping() -> bytes::Bytes {
        encode_simple(&BaseCommand {
            r#type: base_command::Type::Ping as i32,
            ping: Some(CommandPing {}),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn fixes_frames_rewrites_lookup_and_obeys_controls() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let (up, mut brokers) = fake_broker().await;
            let proxy = start(loopback(), up).await.unwrap();
            let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
            let mut broker = brokers.recv().await.unwrap();
            proxy.wait_connections(|n| n == 1).await;

            // client → broker: byte-exact.
            client.write_all(&ping()).await.unwrap();
            assert_eq!(read_frame(&mut broker).await, ping());

            // The client grants a permit (messages wait for one, see
            // crate::flow); the FLOW reaches the broker as it was.
            let grant = encode_simple(&BaseCommand {
                r#type: base_command::Type::Flow as i32,
                flow: Some(CommandFlow {
                    consumer_id: 0,
                    message_permits: 1,
                }),
                ..Default::default()
            });
            client.write_all(&grant).await.unwrap();
            assert_eq!(read_frame(&mut broker).await, grant);

            // broker → client: checksum inserted.
            let cmd = BaseCommand {
                r#type: base_command::Type::Message as i32,
                message: Some(CommandMessage::default()),
                ..Default::default()
            };
            let body = payload_body(&MessageMetadata::default(), b"data");
            broker
                .write_all(&encode_payload(&cmd, &body, false))
                .await
                .unwrap();
            assert_eq!(
                read_frame(&mut client).await,
                encode_payload(&cmd, &body, true)
            );

            // broker → client: lookup points at the proxy.
            let lookup = BaseCommand {
                r#type: base_command::Type::LookupResponse as i32,
                lookup_topic_response: Some(CommandLookupTopicResponse {
                    broker_service_url: Some(format!("pulsar://{up}")),
                    request_id: 1,
                    ..Default::default()
                }),
                ..Default::default()
            };
            broker.write_all(&encode_simple(&lookup)).await.unwrap();
            let got = frame::decode_command(&read_frame(&mut client).await).unwrap();
            assert_eq!(
                got.lookup_topic_response.unwrap().broker_service_url,
                Some(proxy.url())
            );

            // stall holds bytes, resume delivers them.
            proxy.stall(true);
            broker.write_all(&ping()).await.unwrap();
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_millis(300), client.read(&mut b)).await;
            assert!(r.is_err(), "nothing should arrive while stalled");
            proxy.stall(false);
            assert_eq!(read_frame(&mut client).await, ping());

            // cut closes both sides.
            proxy.cut_all();
            proxy.wait_connections(|n| n == 0).await;
            assert_eq!(client.read(&mut b).await.unwrap_or(0), 0);
            assert_eq!(broker.read(&mut b).await.unwrap_or(0), 0);

            // hangup closes new clients at once without dialling the broker.
            proxy.hangup(true);
            let mut c2 = TcpStream::connect(proxy.addr()).await.unwrap();
            assert_eq!(c2.read(&mut b).await.unwrap_or(0), 0);
            assert!(proxy.control("status").await.contains("hung_up=1"));
            assert!(proxy.control("nohangup").await.starts_with("ok "));

            // refuse closes the listener: connection refused, then back.
            assert!(proxy.control("refuse").await.contains("refusing=true"));
            let e = TcpStream::connect(proxy.addr()).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
            assert!(proxy.control("accept").await.contains("refusing=false"));
            let mut c3 = TcpStream::connect(proxy.addr()).await.unwrap();
            let mut broker3 = brokers.recv().await.unwrap();
            c3.write_all(&ping()).await.unwrap();
            assert_eq!(read_frame(&mut broker3).await, ping());
            assert!(proxy.control("bogus").await.starts_with("error"));

            let s = proxy.stats();
            assert_eq!((s.checksums_added, s.urls_rewritten, s.cut), (1, 1, 1));
            proxy.shutdown().await;
        })
        .await
        .expect("test timed out");
    }

    fn connect(token: &[u8]) -> bytes::Bytes {
        encode_simple(&BaseCommand {
            r#type: base_command::Type::Connect as i32,
            connect: Some(CommandConnect {
                client_version: "test".into(),
                auth_method_name: Some("token".into()),
                auth_data: Some(token.to_vec()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn token_check_rejects_like_a_broker_and_passes_the_right_one() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let (up, mut brokers) = fake_broker().await;
            let options = Options {
                token: Some(b"right".to_vec()),
                ..Default::default()
            };
            let proxy = start_with(loopback(), up, options).await.unwrap();

            // A rejected client never reaches the broker.
            let mut bad = TcpStream::connect(proxy.addr()).await.unwrap();
            bad.write_all(&connect(b"wrong")).await.unwrap();
            let answer = frame::decode_command(&read_frame(&mut bad).await).unwrap();
            let err = answer.error.expect("an ERROR frame");
            assert_eq!(err.error, ServerError::AuthenticationError as i32);
            let mut b = [0u8; 1];
            assert_eq!(bad.read(&mut b).await.unwrap_or(0), 0, "then closed");
            assert_eq!(proxy.auth_rejected(), 1);

            // The broker is dialled once CONNECT passed the check.
            let mut good = TcpStream::connect(proxy.addr()).await.unwrap();
            // CONNECT and a ping in one write: both must arrive, in order.
            let mut both = connect(b"right").to_vec();
            both.extend_from_slice(&ping());
            good.write_all(&both).await.unwrap();
            let mut broker = brokers.recv().await.unwrap();
            let mut expect = connect(b"right").to_vec();
            expect.extend_from_slice(&ping());
            let mut got = vec![0u8; expect.len()];
            broker.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expect);
            assert_eq!(proxy.auth_rejected(), 1);
            assert!(brokers.try_recv().is_err(), "one broker connection only");
            proxy.shutdown().await;
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn malformed_broker_frame_closes_connection() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let (up, mut brokers) = fake_broker().await;
            let proxy = start(loopback(), up).await.unwrap();
            let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
            let mut broker = brokers.recv().await.unwrap();
            broker
                .write_all(&[0, 0, 0, 6, 0, 0, 0, 9, 1, 2])
                .await
                .unwrap();
            let mut b = [0u8; 1];
            assert_eq!(client.read(&mut b).await.unwrap_or(0), 0);
            proxy.wait_connections(|n| n == 0).await;
            assert_eq!(proxy.stats().malformed, 1);
            proxy.shutdown().await;
        })
        .await
        .expect("test timed out");
    }
}

//! Test-support TCP proxy between a Pulsar client (pulsar-rs) and pulsar-lite.
//!
//! pulsar-lite sends MESSAGE frames without the optional magic + CRC32C that
//! pulsar-rs insists on, and its lookup answers name its own address, which
//! would lead clients around anything placed in between. The proxy fixes both
//! on the fly (see [`frame`]). pulsar-lite also counts a batched entry as one
//! permit; the proxy holds messages until the client's permits allow them, as
//! Pulsar's dispatcher does (see [`flow`]). It adds switches to cut, stall or refuse
//! connections so the ingester's failure handling can be tested (see
//! [`ProxyHandle`]: `cut_all`, `stall`, `refuse` (ECONNREFUSED, retried by
//! pulsar-rs) and `hangup` (accept-then-close, fatal to pulsar-rs)).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let proxy = pulsar_proxy::start(
//!     "127.0.0.1:0".parse().unwrap(),
//!     "127.0.0.1:6650".parse().unwrap(),
//! )
//! .await?;
//! let url = proxy.url(); // give this to pulsar-rs
//! proxy.cut_all();
//! proxy.shutdown().await;
//! # let _ = url; Ok(()) }
//! ```

pub mod flow;
pub mod frame;
pub mod proxy;

pub use proxy::{start, start_with, Options, ProxyHandle, Stats};

//! Pulsar binary-protocol framing, and the two fix-ups pulsar-rs needs to
//! talk to pulsar-lite: checksummed payload frames and lookup answers that
//! point back at the proxy.
//!
//! Wire layout (all integers big-endian):
//!
//! ```text
//! simple:  [totalSize u32][commandSize u32][BaseCommand]
//! payload: [totalSize u32][commandSize u32][BaseCommand]
//!          ([0x0e02 u16][size u32][BrokerEntryMetadata])?
//!          ([0x0e01 u16][crc32c u32])?
//!          [metadataSize u32][MessageMetadata][payload]
//! ```
//!
//! `totalSize` counts every byte after itself. The checksum covers everything
//! after the checksum field.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use pulsar::message::proto::BaseCommand;

pub use pulsar::message::proto;

/// Magic number that precedes a CRC32C checksum in payload frames.
pub const MAGIC_CRC32C: u16 = 0x0e01;
/// Magic number that precedes broker entry metadata in payload frames.
pub const MAGIC_BROKER_ENTRY_METADATA: u16 = 0x0e02;
/// Frames larger than this are treated as garbage rather than buffered: the
/// Pulsar default `maxMessageSize` is 5 MiB, so this leaves ample headroom
/// while stopping a corrupt size field from making us allocate gigabytes.
pub const MAX_FRAME_SIZE: usize = 64 * 1024 * 1024;

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// CRC32C (Castagnoli), the checksum Pulsar puts after [`MAGIC_CRC32C`].
pub fn crc32c(data: &[u8]) -> u32 {
    CASTAGNOLI.checksum(data)
}

/// Why a frame could not be handled. The proxy closes the connection on any
/// of these: once framing is lost there is no way to resynchronise.
#[derive(Debug)]
pub enum FrameError {
    /// `totalSize` is above [`MAX_FRAME_SIZE`] or below the 4-byte minimum.
    BadTotalSize(usize),
    /// A size field points past the end of the frame.
    Truncated(&'static str),
    /// The command bytes are not a valid `BaseCommand`.
    Decode(prost::DecodeError),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadTotalSize(n) => write!(f, "implausible frame totalSize {n}"),
            FrameError::Truncated(what) => write!(f, "truncated frame: {what}"),
            FrameError::Decode(e) => write!(f, "undecodable BaseCommand: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Removes the next complete frame (size prefix included) from `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, so callers
/// can read more and call again.
pub fn next_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(4..=MAX_FRAME_SIZE).contains(&total) {
        return Err(FrameError::BadTotalSize(total));
    }
    if buf.len() < total + 4 {
        buf.reserve(total + 4 - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(total + 4).freeze()))
}

/// A frame split into its command bytes and whatever follows them.
#[derive(Debug, Clone, Copy)]
pub struct FrameParts<'a> {
    /// The serialized `BaseCommand`.
    pub command: &'a [u8],
    /// Everything after the command (empty for simple commands).
    pub rest: &'a [u8],
}

/// Splits a whole frame (as returned by [`next_frame`]) into its parts,
/// checking that the sizes agree.
pub fn split_frame(frame: &[u8]) -> Result<FrameParts<'_>, FrameError> {
    if frame.len() < 8 {
        return Err(FrameError::Truncated("no commandSize"));
    }
    let total = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    if total + 4 != frame.len() {
        return Err(FrameError::Truncated(
            "totalSize disagrees with frame length",
        ));
    }
    let cmd_size = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    let body = &frame[8..];
    if cmd_size > body.len() {
        return Err(FrameError::Truncated("commandSize past end of frame"));
    }
    let (command, rest) = body.split_at(cmd_size);
    Ok(FrameParts { command, rest })
}

/// Decodes the `BaseCommand` of a whole frame.
pub fn decode_command(frame: &[u8]) -> Result<BaseCommand, FrameError> {
    let parts = split_frame(frame)?;
    BaseCommand::decode(parts.command).map_err(FrameError::Decode)
}

/// Encodes a simple (payload-less) frame.
pub fn encode_simple(command: &BaseCommand) -> Bytes {
    let cmd = command.encode_to_vec();
    let mut out = BytesMut::with_capacity(8 + cmd.len());
    out.put_u32((4 + cmd.len()) as u32);
    out.put_u32(cmd.len() as u32);
    out.put_slice(&cmd);
    out.freeze()
}

/// Encodes a payload frame. `body` is `[metadataSize][metadata][payload]`;
/// with `checksum` the magic and CRC32C are included, as a real broker (and
/// pulsar-rs) does; without, it is laid out the way pulsar-lite sends it.
pub fn encode_payload(command: &BaseCommand, body: &[u8], checksum: bool) -> Bytes {
    encode_raw_payload(&command.encode_to_vec(), body, checksum)
}

fn encode_raw_payload(cmd: &[u8], body: &[u8], checksum: bool) -> Bytes {
    let extra = if checksum { 6 } else { 0 };
    let mut out = BytesMut::with_capacity(8 + cmd.len() + extra + body.len());
    out.put_u32((4 + cmd.len() + extra + body.len()) as u32);
    out.put_u32(cmd.len() as u32);
    out.put_slice(cmd);
    if checksum {
        out.put_u16(MAGIC_CRC32C);
        out.put_u32(crc32c(body));
    }
    out.put_slice(body);
    out.freeze()
}

/// Builds `[metadataSize][metadata][payload]`, the checksummed part of a
/// payload frame.
pub fn payload_body(metadata: &proto::MessageMetadata, payload: &[u8]) -> Vec<u8> {
    let meta = metadata.encode_to_vec();
    let mut out = Vec::with_capacity(4 + meta.len() + payload.len());
    out.put_u32(meta.len() as u32);
    out.put_slice(&meta);
    out.put_slice(payload);
    out
}

/// What [`fix_broker_frame`] did to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixup {
    /// Forwarded byte-exact.
    Unchanged,
    /// A payload frame got the magic + CRC32C it lacked.
    ChecksumAdded,
    /// Broker entry metadata was removed (pulsar-rs cannot parse it), and
    /// a checksum added if it was missing.
    EntryMetadataStripped,
    /// A command naming the broker's URL was re-encoded to name the proxy.
    UrlRewritten,
}

/// Rewrites a broker→client frame so that pulsar-rs accepts it and keeps
/// talking through the proxy.
///
/// `advertised` is the proxy's `host:port` as the client reached it. Only
/// frames that need it are re-encoded; everything else is returned as is.
pub fn fix_broker_frame(frame: Bytes, advertised: &str) -> Result<(Bytes, Fixup), FrameError> {
    let parts = split_frame(&frame)?;
    if parts.rest.is_empty() {
        let mut command = BaseCommand::decode(parts.command).map_err(FrameError::Decode)?;
        if rewrite_broker_urls(&mut command, advertised) {
            return Ok((encode_simple(&command), Fixup::UrlRewritten));
        }
        return Ok((frame, Fixup::Unchanged));
    }

    let mut rest = parts.rest;
    let mut stripped = false;
    if peek_u16(rest) == Some(MAGIC_BROKER_ENTRY_METADATA) {
        let size = peek_u32(&rest[2..]).ok_or(FrameError::Truncated("broker entry metadata"))?;
        let skip = 6usize
            .checked_add(size as usize)
            .filter(|n| *n <= rest.len())
            .ok_or(FrameError::Truncated("broker entry metadata"))?;
        rest = &rest[skip..];
        stripped = true;
    }
    if peek_u16(rest) == Some(MAGIC_CRC32C) {
        if rest.len() < 10 {
            return Err(FrameError::Truncated("checksum"));
        }
        check_metadata_size(&rest[6..])?;
        if !stripped {
            return Ok((frame, Fixup::Unchanged));
        }
        let out = encode_raw_payload(parts.command, &rest[6..], true);
        return Ok((out, Fixup::EntryMetadataStripped));
    }
    // No magic: `rest` starts at metadataSize. A real metadataSize can never
    // look like the magic (it would mean >200 MiB of metadata), which is how
    // Pulsar itself tells the two layouts apart.
    check_metadata_size(rest)?;
    let out = encode_raw_payload(parts.command, rest, true);
    let fix = if stripped {
        Fixup::EntryMetadataStripped
    } else {
        Fixup::ChecksumAdded
    };
    Ok((out, fix))
}

/// Points every broker URL in `command` at `advertised`. Returns whether
/// anything changed. Only `CommandLookupTopicResponse` carries broker URLs in
/// the protocol version pulsar-rs 6.9 speaks.
pub fn rewrite_broker_urls(command: &mut BaseCommand, advertised: &str) -> bool {
    let mut changed = false;
    if let Some(lookup) = command.lookup_topic_response.as_mut() {
        changed |= rewrite_url(&mut lookup.broker_service_url, "pulsar", advertised);
        changed |= rewrite_url(&mut lookup.broker_service_url_tls, "pulsar+ssl", advertised);
    }
    changed
}

/// For a proxy that terminates TLS: makes a lookup answer name
/// `pulsar+ssl://advertised` as the TLS broker URL (pulsar-lite sets none),
/// which is the one a client on a `pulsar+ssl://` service URL follows.
pub fn advertise_tls(command: &mut BaseCommand, advertised: &str) -> bool {
    match command.lookup_topic_response.as_mut() {
        Some(lookup) => {
            let tls = Some(format!("pulsar+ssl://{advertised}"));
            let changed = lookup.broker_service_url_tls != tls;
            lookup.broker_service_url_tls = tls;
            changed
        }
        None => false,
    }
}

fn rewrite_url(url: &mut Option<String>, scheme: &str, advertised: &str) -> bool {
    match url {
        Some(u) => {
            let new = format!("{scheme}://{advertised}");
            if *u == new {
                false
            } else {
                *u = new;
                true
            }
        }
        None => false,
    }
}

fn check_metadata_size(body: &[u8]) -> Result<(), FrameError> {
    let size = peek_u32(body).ok_or(FrameError::Truncated("no metadataSize"))? as usize;
    if size > body.len() - 4 {
        return Err(FrameError::Truncated("metadataSize past end of frame"));
    }
    Ok(())
}

fn peek_u16(b: &[u8]) -> Option<u16> {
    (b.len() >= 2).then(|| (&b[..2]).get_u16())
}

fn peek_u32(b: &[u8]) -> Option<u32> {
    (b.len() >= 4).then(|| (&b[..4]).get_u32())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{command_lookup_topic_response::LookupType, *};

    fn message_command() -> BaseCommand {
        BaseCommand {
            r#type: base_command::Type::Message as i32,
            message: Some(CommandMessage {
                consumer_id: 7,
                message_id: MessageIdData {
                    ledger_id: 3,
                    entry_id: 42,
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn metadata() -> MessageMetadata {
        MessageMetadata {
            producer_name: "p".into(),
            sequence_id: 1,
            publish_time: 1_700_000_000_000,
            ..Default::default()
        }
    }

    fn lookup_response(url: Option<&str>, tls: Option<&str>) -> BaseCommand {
        BaseCommand {
            r#type: base_command::Type::LookupResponse as i32,
            lookup_topic_response: Some(CommandLookupTopicResponse {
                broker_service_url: url.map(str::to_string),
                broker_service_url_tls: tls.map(str::to_string),
                response: Some(LookupType::Connect as i32),
                request_id: 9,
                authoritative: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Decodes with pulsar-rs's own codec: the real acceptance criterion.
    fn pulsar_rs_decode(frame: &[u8]) -> Result<pulsar::message::Message, String> {
        use tokio_util::codec::Decoder;
        let mut buf = BytesMut::from(frame);
        match pulsar::message::Codec.decode(&mut buf) {
            Ok(Some(m)) if buf.is_empty() => Ok(m),
            Ok(Some(_)) => Err("trailing bytes".into()),
            Ok(None) => Err("incomplete".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn next_frame_waits_for_whole_frame_and_splits_back_to_back_frames() {
        let a = encode_simple(&lookup_response(Some("pulsar://x:1"), None));
        let b = encode_payload(&message_command(), &payload_body(&metadata(), b"hi"), false);
        let mut all = BytesMut::new();
        all.put_slice(&a);
        all.put_slice(&b);

        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in all.iter() {
            buf.put_u8(*byte);
            while let Some(f) = next_frame(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![a, b]);
        assert!(buf.is_empty());
    }

    #[test]
    fn next_frame_rejects_absurd_sizes() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0, 0][..]);
        assert!(matches!(
            next_frame(&mut buf),
            Err(FrameError::BadTotalSize(_))
        ));
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 0, 0][..]);
        assert!(next_frame(&mut buf).is_err());
    }

    #[test]
    fn inserts_magic_and_crc_into_unchecksummed_message() {
        let body = payload_body(&metadata(), b"hello world");
        let bare = encode_payload(&message_command(), &body, false);
        assert!(
            pulsar_rs_decode(&bare).is_err(),
            "pulsar-rs rejects bare frames"
        );

        let (fixed, how) = fix_broker_frame(bare.clone(), "127.0.0.1:1").unwrap();
        assert_eq!(how, Fixup::ChecksumAdded);
        assert_eq!(fixed.len(), bare.len() + 6);
        // Exactly what a real broker would have sent.
        assert_eq!(fixed, encode_payload(&message_command(), &body, true));

        let cmd_len = message_command().encoded_len();
        let at = 8 + cmd_len;
        assert_eq!(&fixed[at..at + 2], &[0x0e, 0x01]);
        let crc = u32::from_be_bytes(fixed[at + 2..at + 6].try_into().unwrap());
        assert_eq!(crc, crc32c(&body));
        let total = u32::from_be_bytes(fixed[..4].try_into().unwrap()) as usize;
        assert_eq!(total + 4, fixed.len());

        let msg = pulsar_rs_decode(&fixed).unwrap();
        let payload = msg.payload.unwrap();
        assert_eq!(payload.data, b"hello world");
        assert_eq!(payload.metadata.publish_time, 1_700_000_000_000);
        assert_eq!(msg.command.message.unwrap().message_id.entry_id, 42);
    }

    #[test]
    fn crc32c_matches_known_vector() {
        // RFC 3720 B.4 / the classic "123456789" check value.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn checksummed_and_simple_frames_pass_through_byte_exact() {
        let good = encode_payload(&message_command(), &payload_body(&metadata(), b"x"), true);
        let (out, how) = fix_broker_frame(good.clone(), "127.0.0.1:1").unwrap();
        assert_eq!(how, Fixup::Unchanged);
        assert_eq!(out, good);

        let ping = encode_simple(&BaseCommand {
            r#type: base_command::Type::Ping as i32,
            ping: Some(CommandPing {}),
            ..Default::default()
        });
        let (out, how) = fix_broker_frame(ping.clone(), "127.0.0.1:1").unwrap();
        assert_eq!(how, Fixup::Unchanged);
        assert_eq!(out, ping);
    }

    #[test]
    fn strips_broker_entry_metadata() {
        let body = payload_body(&metadata(), b"p");
        let cmd = message_command().encode_to_vec();
        let entry = BrokerEntryMetadata {
            broker_timestamp: Some(5),
            index: Some(6),
        }
        .encode_to_vec();
        let mut frame = BytesMut::new();
        frame.put_u32((4 + cmd.len() + 6 + entry.len() + body.len()) as u32);
        frame.put_u32(cmd.len() as u32);
        frame.put_slice(&cmd);
        frame.put_u16(MAGIC_BROKER_ENTRY_METADATA);
        frame.put_u32(entry.len() as u32);
        frame.put_slice(&entry);
        frame.put_slice(&body);
        let (out, how) = fix_broker_frame(frame.freeze(), "h:1").unwrap();
        assert_eq!(how, Fixup::EntryMetadataStripped);
        assert_eq!(out, encode_payload(&message_command(), &body, true));
    }

    #[test]
    fn rewrites_lookup_urls_to_the_proxy() {
        let frame = encode_simple(&lookup_response(
            Some("pulsar://10.1.2.3:6650"),
            Some("pulsar+ssl://10.1.2.3:6651"),
        ));
        let (out, how) = fix_broker_frame(frame, "127.0.0.1:7000").unwrap();
        assert_eq!(how, Fixup::UrlRewritten);
        let total = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(total + 4, out.len());
        let cmd = decode_command(&out).unwrap();
        let lookup = cmd.lookup_topic_response.unwrap();
        assert_eq!(
            lookup.broker_service_url.as_deref(),
            Some("pulsar://127.0.0.1:7000")
        );
        assert_eq!(
            lookup.broker_service_url_tls.as_deref(),
            Some("pulsar+ssl://127.0.0.1:7000")
        );
        // Everything else survives the re-encode.
        assert_eq!(lookup.request_id, 9);
        assert_eq!(lookup.authoritative, Some(true));
        assert_eq!(lookup.response, Some(LookupType::Connect as i32));
        assert!(pulsar_rs_decode(&out).is_ok());
    }

    #[test]
    fn lookup_without_urls_or_already_pointing_here_is_untouched() {
        let failed = encode_simple(&lookup_response(None, None));
        let (out, how) = fix_broker_frame(failed.clone(), "127.0.0.1:7000").unwrap();
        assert_eq!((out, how), (failed, Fixup::Unchanged));

        let here = encode_simple(&lookup_response(Some("pulsar://127.0.0.1:7000"), None));
        let (out, how) = fix_broker_frame(here.clone(), "127.0.0.1:7000").unwrap();
        assert_eq!((out, how), (here, Fixup::Unchanged));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let cmd = message_command().encode_to_vec();
        let cases: Vec<Vec<u8>> = vec![
            vec![0, 0, 0, 4, 0, 0, 0, 9],             // commandSize past end
            vec![0, 0, 0, 1, 0],                      // no commandSize
            vec![0, 0, 0, 6, 0, 0, 0, 2, 0xff, 0xff], // garbage command
            {
                // metadataSize past end
                let mut f = Vec::new();
                f.put_u32((4 + cmd.len() + 5) as u32);
                f.put_u32(cmd.len() as u32);
                f.put_slice(&cmd);
                f.put_u32(1000);
                f.put_u8(0);
                f
            },
            {
                // magic then truncated checksum
                let mut f = Vec::new();
                f.put_u32((4 + cmd.len() + 3) as u32);
                f.put_u32(cmd.len() as u32);
                f.put_slice(&cmd);
                f.put_u16(MAGIC_CRC32C);
                f.put_u8(0);
                f
            },
        ];
        for case in cases {
            assert!(
                fix_broker_frame(Bytes::from(case.clone()), "h:1").is_err(),
                "{case:?}"
            );
        }
    }
}

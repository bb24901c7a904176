//! Flow control by messages, as Apache Pulsar's broker does it.
//!
//! A consumer grants permits in messages (FLOW). Pulsar's dispatcher reads
//! while a consumer has permits, up to `min(permits, 100)` entries and 5 MiB
//! per read (`dispatcherMaxReadBatchSize`, `dispatcherMaxReadSizeBytes`),
//! and subtracts every message of a batched entry, so a consumer is sent
//! about as many messages as it asked for. pulsar-lite counts an entry as
//! one permit: on a topic published with producer batching it pushes a
//! whole backlog at once, and pulsar-rs, whose inbound queue is unbounded,
//! holds it all. The proxy holds MESSAGE frames instead and lets them go as
//! Pulsar's dispatcher would, so a client's memory here is what it would be
//! against Pulsar (the proxy's grows in its place, as a broker's storage).

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use prost::Message as _;

use crate::frame::{self, proto, FrameError, MAGIC_CRC32C};
use proto::base_command::Type;

/// Entries per dispatcher read (Pulsar's `dispatcherMaxReadBatchSize`).
pub const READ_ENTRIES: usize = 100;
/// Bytes per dispatcher read (Pulsar's `dispatcherMaxReadSizeBytes`).
pub const READ_BYTES: usize = 5 * 1024 * 1024;

/// One connection's consumers: their permits and the frames held for them.
#[derive(Default)]
pub struct Flow {
    consumers: BTreeMap<u64, Consumer>,
}

#[derive(Default)]
struct Consumer {
    permits: i64,
    held: VecDeque<(Bytes, i64)>,
}

impl Flow {
    /// Notes a client→broker command; true if it granted permits (held
    /// frames may go).
    pub fn from_client(&mut self, command: &proto::BaseCommand) -> bool {
        match Type::try_from(command.r#type) {
            Ok(Type::Flow) => match &command.flow {
                Some(f) => {
                    let c = self.consumers.entry(f.consumer_id).or_default();
                    c.permits += i64::from(f.message_permits);
                    true
                }
                None => false,
            },
            Ok(Type::CloseConsumer) => {
                if let Some(c) = &command.close_consumer {
                    self.consumers.remove(&c.consumer_id);
                }
                false
            }
            _ => false,
        }
    }

    /// Takes a broker→client frame (checksummed, as the proxy sends them):
    /// a MESSAGE is held for its consumer and `None` returned; any other
    /// frame is returned to be sent at once.
    pub fn from_broker(&mut self, frame: Bytes) -> Result<Option<Bytes>, FrameError> {
        let parts = frame::split_frame(&frame)?;
        if parts.rest.is_empty() {
            return Ok(Some(frame));
        }
        let command = proto::BaseCommand::decode(parts.command).map_err(FrameError::Decode)?;
        let Some(message) = command
            .message
            .filter(|_| command.r#type == Type::Message as i32)
        else {
            return Ok(Some(frame));
        };
        let messages = batch_messages(parts.rest)?;
        self.consumers
            .entry(message.consumer_id)
            .or_default()
            .held
            .push_back((frame, messages));
        Ok(None)
    }

    /// Appends to `out` what Pulsar's dispatcher would send now: for each
    /// consumer, reads of up to `min(permits, 100)` entries and 5 MiB (one
    /// entry at least) while it has permits, each entry costing its
    /// messages.
    pub fn release(&mut self, out: &mut BytesMut) {
        for c in self.consumers.values_mut() {
            while c.permits > 0 && !c.held.is_empty() {
                let entries = usize::try_from(c.permits)
                    .unwrap_or(usize::MAX)
                    .min(READ_ENTRIES);
                let mut bytes = 0;
                let mut read = Vec::new();
                while read.len() < entries {
                    let Some((f, _)) = c.held.front() else { break };
                    if !read.is_empty() && bytes + f.len() > READ_BYTES {
                        break;
                    }
                    bytes += f.len();
                    read.extend(c.held.pop_front());
                }
                for (f, messages) in read {
                    c.permits -= messages;
                    out.extend_from_slice(&f);
                }
            }
        }
    }

    /// Frames held for all consumers.
    pub fn held(&self) -> usize {
        self.consumers.values().map(|c| c.held.len()).sum()
    }
}

/// The messages in a payload frame's entry: `num_messages_in_batch`, or 1.
fn batch_messages(rest: &[u8]) -> Result<i64, FrameError> {
    let body = match rest.get(..2) {
        Some(m) if u16::from_be_bytes([m[0], m[1]]) == MAGIC_CRC32C => &rest[6.min(rest.len())..],
        _ => rest,
    };
    let size = body
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(FrameError::Truncated("metadataSize"))?;
    let meta = body
        .get(4..4 + size)
        .ok_or(FrameError::Truncated("metadata"))?;
    let meta = proto::MessageMetadata::decode(meta).map_err(FrameError::Decode)?;
    Ok(meta
        .num_messages_in_batch
        .map_or(1, |n| i64::from(n.max(1))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_payload, encode_simple, payload_body};

    fn message(consumer: u64, entry: u64, in_batch: Option<i32>, size: usize) -> Bytes {
        let command = proto::BaseCommand {
            r#type: Type::Message as i32,
            message: Some(proto::CommandMessage {
                consumer_id: consumer,
                message_id: proto::MessageIdData {
                    ledger_id: 1,
                    entry_id: entry,
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        let metadata = proto::MessageMetadata {
            num_messages_in_batch: in_batch,
            ..Default::default()
        };
        encode_payload(&command, &payload_body(&metadata, &vec![0; size]), true)
    }

    fn grant(consumer: u64, permits: u32) -> proto::BaseCommand {
        proto::BaseCommand {
            r#type: Type::Flow as i32,
            flow: Some(proto::CommandFlow {
                consumer_id: consumer,
                message_permits: permits,
            }),
            ..Default::default()
        }
    }

    /// The entry ids of the MESSAGE frames in `out`, in order.
    fn entries(out: &BytesMut) -> Vec<u64> {
        let mut buf = out.clone();
        let mut ids = Vec::new();
        while let Some(f) = frame::next_frame(&mut buf).expect("frame") {
            let c = frame::decode_command(&f).expect("command");
            ids.extend(c.message.map(|m| m.message_id.entry_id));
        }
        ids
    }

    #[test]
    fn batched_entries_cost_their_messages() {
        let mut flow = Flow::default();
        for e in 0..5 {
            assert!(flow
                .from_broker(message(7, e, Some(1000), 10))
                .expect("ok")
                .is_none());
        }
        let mut out = BytesMut::new();
        flow.release(&mut out);
        assert!(out.is_empty(), "nothing goes without permits");
        assert!(flow.from_client(&grant(7, 1000)));
        flow.release(&mut out);
        // One read of up to min(1000, 100) entries: all five go, 5,000
        // messages for 1,000 permits (Pulsar's dispatcher overshoots too).
        assert_eq!(entries(&out), [0, 1, 2, 3, 4]);
        out.clear();
        for e in 5..8 {
            flow.from_broker(message(7, e, Some(1000), 10)).expect("ok");
        }
        // -4,000 + 1,000 + 2,999: still none.
        flow.from_client(&grant(7, 1000));
        flow.from_client(&grant(7, 2999));
        flow.release(&mut out);
        assert!(out.is_empty(), "held until the permits are positive again");
        flow.from_client(&grant(7, 2));
        flow.release(&mut out);
        assert_eq!(entries(&out), [5], "one permit reads one entry");
        assert_eq!(flow.held(), 2);
    }

    #[test]
    fn single_messages_go_a_read_at_a_time_within_permits() {
        let mut flow = Flow::default();
        for e in 0..250 {
            flow.from_broker(message(1, e, None, 10)).expect("ok");
        }
        flow.from_client(&grant(1, 150));
        let mut out = BytesMut::new();
        flow.release(&mut out);
        assert_eq!(entries(&out), (0..150).collect::<Vec<_>>());
        assert_eq!(flow.held(), 100);
    }

    #[test]
    fn a_read_stops_at_five_mib_but_takes_one_entry_at_least() {
        let mut flow = Flow::default();
        for e in 0..4 {
            flow.from_broker(message(1, e, None, 3 << 20)).expect("ok");
        }
        flow.from_client(&grant(1, 2));
        let mut out = BytesMut::new();
        flow.release(&mut out);
        // Each read stops before 5 MiB: one 3 MiB entry per read, two
        // reads for two permits.
        assert_eq!(entries(&out), [0, 1]);
    }

    #[test]
    fn other_frames_pass_and_closed_consumers_are_forgotten() {
        let mut flow = Flow::default();
        let ping = encode_simple(&proto::BaseCommand {
            r#type: Type::Ping as i32,
            ping: Some(proto::CommandPing {}),
            ..Default::default()
        });
        assert_eq!(flow.from_broker(ping.clone()).expect("ok"), Some(ping));
        flow.from_broker(message(3, 0, None, 1)).expect("ok");
        assert_eq!(flow.held(), 1);
        flow.from_client(&proto::BaseCommand {
            r#type: Type::CloseConsumer as i32,
            close_consumer: Some(proto::CommandCloseConsumer {
                consumer_id: 3,
                request_id: 1,
            }),
            ..Default::default()
        });
        assert_eq!(flow.held(), 0);
    }

    #[test]
    fn a_truncated_payload_is_an_error() {
        let mut flow = Flow::default();
        let f = message(1, 0, None, 10);
        let cut = &f[..f.len() - 20];
        let mut broken = BytesMut::from(cut);
        let total = (broken.len() - 4) as u32;
        broken[..4].copy_from_slice(&total.to_be_bytes());
        assert!(flow.from_broker(broken.freeze()).is_err());
    }
}

//! Where event messages come from. Each message carries its [`Origin`] so
//! that problems can be reported precisely and, in live mode, exactly the
//! messages of a committed batch can be acknowledged.

pub mod file;
pub mod pulsar;

use std::fmt;
use std::sync::Arc;

use prost_types::Timestamp;

/// A Pulsar message id, as much of it as acknowledging needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PulsarId {
    pub ledger: u64,
    pub entry: u64,
    pub partition: i32,
    /// -1 when the message is not part of a batch.
    pub batch_index: i32,
    pub batch_size: Option<i32>,
}

impl PulsarId {
    /// Orders ids within one topic partition.
    pub fn position(&self) -> (u64, u64, i32) {
        (self.ledger, self.entry, self.batch_index)
    }
}

/// Where one message came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// Record `index` (0-based) of a recorded event file.
    File { path: Arc<str>, index: u64 },
    /// A message on a topic (partition topics have their own names).
    Pulsar { topic: Arc<str>, id: PulsarId },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, index } => write!(f, "{path} record {index}"),
            Origin::Pulsar { topic, id } => write!(
                f,
                "{topic} message {}:{}:{}:{}",
                id.ledger, id.entry, id.partition, id.batch_index
            ),
        }
    }
}

/// One serialized EventSequence and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub payload: Vec<u8>,
    pub origin: Origin,
    /// The broker's publish time, used for events without `created`.
    pub publish_time: Option<Timestamp>,
}

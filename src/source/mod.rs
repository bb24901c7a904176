//! Where event messages come from. Each message carries its [`Origin`] so
//! that problems can be reported precisely and, in live mode, exactly the
//! messages of a committed batch can be acknowledged.

pub mod file;

use std::fmt;
use std::sync::Arc;

use prost_types::Timestamp;

/// Where one message came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// Record `index` (0-based) of a recorded event file.
    File { path: Arc<str>, index: u64 },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, index } => write!(f, "{path} record {index}"),
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

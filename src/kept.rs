//! Pure: a converted batch's messages, kept until the batch is committed
//! (and longer while rows they asked for are held, see `hold`), with their
//! payloads compressed as the converter goes.
//!
//! Why: a payload is needed again only if a row it asked for fails or
//! matches nothing (its dead letter carries it byte for byte), or if the
//! schema generation changes before the write (it is converted again). Kept
//! as received, the payloads of the three converted batches in flight were
//! about a third of a replay's peak heap (60 MB of 156 MB at 1,000,000
//! events, heaptrack). zstd at level 1 makes them about a tenth, in chunks
//! of [`CHUNK`] bytes, each compressed as soon as it is full, so that a
//! payload leaves memory right after its message is converted. The last,
//! partly filled chunk of a batch stays as it is when smaller than [`TAIL`]
//! (so a steady load's small batches pay nothing).

use crate::convert::Problem;
use crate::source::Origin;
use prost_types::Timestamp;
use std::cell::RefCell;

/// Payload bytes compressed together.
const CHUNK: usize = 1024 * 1024;
/// The last, partly filled chunk of a batch is compressed from this size on.
const TAIL: usize = 64 * 1024;
const LEVEL: i32 = 1;

thread_local! {
    // One compression context per thread, reused: a new one allocates
    // about a megabyte.
    static ZSTD: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// One message after conversion, as the rest of the pipeline needs it back:
/// kept until its batch is committed, so that what could not be applied can
/// be dead-lettered byte for byte.
#[derive(Debug, Clone, Default)]
pub struct MessageOutcome {
    pub origin: Option<Origin>,
    pub payload: Vec<u8>,
    pub publish_time: Option<Timestamp>,
    pub problems: Vec<Problem>,
    /// The indexes of the events judged; `None`: all.
    pub only: Option<Vec<usize>>,
}

/// What is kept of a message besides its payload.
#[derive(Debug, Clone)]
pub struct Header {
    pub origin: Option<Origin>,
    pub publish_time: Option<Timestamp>,
    pub problems: Vec<Problem>,
    pub only: Option<Vec<usize>>,
    len: usize,
}

#[derive(Debug)]
enum Payloads {
    Zstd(Vec<u8>),
    /// Small, or compressing failed (out of memory): as they are.
    Raw(Vec<u8>),
}

/// Consecutive messages' payloads.
#[derive(Debug)]
struct Chunk {
    messages: usize,
    payloads: Payloads,
}

impl Chunk {
    fn bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.payloads {
            Payloads::Raw(raw) => std::borrow::Cow::Borrowed(raw.as_slice()),
            Payloads::Zstd(z) => match zstd::stream::decode_all(z.as_slice()) {
                Ok(all) => std::borrow::Cow::Owned(all),
                Err(e) => {
                    // Written by this process a moment ago: cannot happen
                    // short of memory corruption; say so loudly.
                    tracing::error!("kept messages cannot be read back: {e}");
                    std::borrow::Cow::Owned(Vec::new())
                }
            },
        }
    }
}

/// A batch's messages, in order.
#[derive(Debug, Default)]
pub struct Kept {
    chunks: Vec<Chunk>,
    headers: Vec<Header>,
}

impl Kept {
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// Every message without its payload, in order.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }
    /// Every message, with its problems.
    pub fn all(&self) -> Vec<MessageOutcome> {
        self.select(|_| true, true)
    }

    /// The messages numbered `numbers` (ascending; the first of the batch
    /// is `first`), without their problems: those were counted with their
    /// own batch.
    pub fn messages(&self, first: u64, numbers: &[u64]) -> Vec<MessageOutcome> {
        let mut wanted = numbers.iter().copied().peekable();
        self.select(
            |i| {
                let hit = wanted.peek() == Some(&(first + i as u64));
                if hit {
                    wanted.next();
                }
                hit
            },
            false,
        )
    }

    /// The messages whose index `wanted` says (asked in order, once each).
    fn select(&self, mut wanted: impl FnMut(usize) -> bool, problems: bool) -> Vec<MessageOutcome> {
        let mut out = Vec::new();
        let mut first = 0usize;
        for chunk in &self.chunks {
            let headers = self
                .headers
                .get(first..first + chunk.messages)
                .unwrap_or_default();
            let picked: Vec<bool> = (first..first + headers.len()).map(&mut wanted).collect();
            first += chunk.messages;
            if !picked.contains(&true) {
                continue;
            }
            let all = chunk.bytes();
            let mut at = 0usize;
            for (h, picked) in headers.iter().zip(picked) {
                let payload = all.get(at..at + h.len).unwrap_or_default();
                at += h.len;
                if picked {
                    out.push(MessageOutcome {
                        origin: h.origin.clone(),
                        payload: payload.to_vec(),
                        publish_time: h.publish_time,
                        problems: if problems {
                            h.problems.clone()
                        } else {
                            Vec::new()
                        },
                        only: h.only.clone(),
                    });
                }
            }
        }
        out
    }
}

impl crate::hold::Block for Kept {
    /// Payloads as kept, headers, and their problems' texts (an estimate:
    /// the rest of a header's heap is small).
    fn weight(&self) -> usize {
        let payloads: usize = (self.chunks.iter())
            .map(|c| match &c.payloads {
                Payloads::Zstd(b) | Payloads::Raw(b) => b.capacity(),
            })
            .sum();
        let problems: usize = (self.headers.iter())
            .flat_map(|h| &h.problems)
            .map(|p| std::mem::size_of::<Problem>() + p.detail.capacity())
            .sum();
        payloads + self.headers.capacity() * std::mem::size_of::<Header>() + problems
    }
}

/// Builds a [`Kept`] message by message.
#[derive(Debug, Default)]
pub struct Builder {
    kept: Kept,
    /// Payloads of the chunk being filled, and how many messages.
    staging: Vec<u8>,
    staged: usize,
}

impl Builder {
    pub fn len(&self) -> usize {
        self.kept.headers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.headers.is_empty()
    }

    /// Keeps `m`; its payload is dropped here (copied into the chunk).
    pub fn push(&mut self, m: MessageOutcome) {
        // Grown as needed (a steady load's batches are a few kilobytes),
        // and reused for the next chunk once one is compressed.
        self.staging.extend_from_slice(&m.payload);
        self.staged += 1;
        self.kept.headers.push(Header {
            origin: m.origin,
            publish_time: m.publish_time,
            problems: m.problems,
            only: m.only,
            len: m.payload.len(),
        });
        if self.staging.len() >= CHUNK {
            self.seal(true);
        }
    }

    /// Ends the chunk being filled, compressed or as it is.
    fn seal(&mut self, compress: bool) {
        if self.staged == 0 {
            return;
        }
        let payloads = match compress.then(|| zstd(&self.staging)) {
            Some(Ok(z)) => {
                self.staging.clear();
                Payloads::Zstd(z)
            }
            Some(Err(e)) => {
                tracing::warn!("kept messages are not compressed: {e}");
                Payloads::Raw(std::mem::take(&mut self.staging))
            }
            None => {
                let mut raw = std::mem::take(&mut self.staging);
                raw.shrink_to_fit();
                Payloads::Raw(raw)
            }
        };
        self.kept.chunks.push(Chunk {
            messages: std::mem::take(&mut self.staged),
            payloads,
        });
    }

    pub fn finish(mut self) -> Kept {
        let compress = self.staging.len() >= TAIL;
        self.seal(compress);
        self.kept
    }
}

/// `data` as one zstd frame, in a vector of its size.
fn zstd(data: &[u8]) -> std::io::Result<Vec<u8>> {
    ZSTD.with_borrow_mut(|slot| {
        let c = match slot {
            Some(c) => c,
            None => slot.insert(zstd::bulk::Compressor::new(LEVEL)?),
        };
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        c.compress_to_buffer(data, &mut out)?;
        out.shrink_to_fit();
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::Block as _;
    use std::sync::Arc;

    fn message(i: u64, len: usize) -> MessageOutcome {
        MessageOutcome {
            origin: Some(Origin::File {
                path: Arc::from("f"),
                index: i,
            }),
            // Compressible, and different per message.
            payload: (0..len).map(|b| (b % 7) as u8 + (i % 200) as u8).collect(),
            publish_time: Some(Timestamp {
                seconds: i as i64,
                nanos: 0,
            }),
            problems: Vec::new(),
            only: i.is_multiple_of(3).then(|| vec![i as usize]),
        }
    }

    fn kept(n: u64, len: usize) -> (Kept, Vec<MessageOutcome>) {
        let mut b = Builder::default();
        let all: Vec<_> = (0..n).map(|i| message(i, len)).collect();
        for m in all.clone() {
            b.push(m);
        }
        assert_eq!(b.len(), n as usize);
        (b.finish(), all)
    }

    fn same(a: &[MessageOutcome], b: &[MessageOutcome]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.origin, y.origin);
            assert_eq!(x.payload, y.payload);
            assert_eq!(x.publish_time, y.publish_time);
            assert_eq!(x.only, y.only);
        }
    }

    #[test]
    fn a_large_batch_is_compressed_chunk_by_chunk_and_read_back_whole() {
        // 3,000 messages of 1,000 bytes: two full chunks and a tail.
        let (k, all) = kept(3_000, 1_000);
        assert_eq!(k.chunks.len(), 3);
        assert!(k
            .chunks
            .iter()
            .all(|c| matches!(c.payloads, Payloads::Zstd(_))));
        assert!(k.weight() < 3_000 * 1_000 / 4, "{}", k.weight());
        same(&k.all(), &all);
    }

    #[test]
    fn a_small_batch_stays_as_it_is() {
        let (k, all) = kept(10, 500);
        assert_eq!(k.chunks.len(), 1);
        assert!(matches!(k.chunks[0].payloads, Payloads::Raw(_)));
        same(&k.all(), &all);
    }

    #[test]
    fn chosen_messages_come_back_across_chunks_without_problems() {
        let mut b = Builder::default();
        let mut all: Vec<_> = (0..2_500).map(|i| message(i, 1_000)).collect();
        all[1_500].problems.push(Problem {
            event_index: Some(0),
            reason: crate::convert::Reason::Decode,
            detail: "x".into(),
            skipped: true,
        });
        for m in all.clone() {
            b.push(m);
        }
        let k = b.finish();
        // Numbered from 100.
        let numbers = [100, 101, 1_148, 1_600, 2_599];
        let got = k.messages(100, &numbers);
        let want: Vec<_> = numbers
            .iter()
            .map(|n| all[(n - 100) as usize].clone())
            .collect();
        same(&got, &want);
        assert!(got.iter().all(|m| m.problems.is_empty()));
        assert_eq!(k.all()[1_500].problems.len(), 1);
        assert!(k.messages(100, &[]).is_empty());
    }

    #[test]
    fn empty_payloads_and_an_empty_batch() {
        let (k, all) = kept(5, 0);
        same(&k.all(), &all);
        let k = Builder::default().finish();
        assert!(k.is_empty());
        assert!(k.all().is_empty());
    }
}

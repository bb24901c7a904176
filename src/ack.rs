//! The acknowledger's plan: which acknowledgements release exactly the
//! messages of a committed batch. Pure, so the rule is unit-tested.
//!
//! Batches are committed in consumption order. In ordered subscriptions
//! (Failover, Exclusive) one cumulative acknowledgement per partition, at the
//! highest position committed, releases the batch; so after a crash the
//! unacknowledged messages are always a suffix of what was consumed, and an
//! older message can never be re-applied after a newer one was acknowledged.
//! Shared subscriptions cannot acknowledge cumulatively; every message is
//! acknowledged on its own, in order.
//!
//! A broker acknowledges whole entries, and a producer that batches (as
//! Armada's do, with zlib compression) puts many messages in one entry. An
//! acknowledgement naming a message inside a batch releases all of it (the
//! client sends no batch-index ack set), including messages not yet
//! committed, which a crash would then lose. So a batch's entry is only
//! named once its last message is committed; before that a cumulative
//! acknowledgement names the entry before it, as Pulsar's Java and Go
//! clients do without batch-index acknowledgement.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::source::pulsar::Ack;
use crate::source::{Origin, PulsarId};

pub fn plan(origins: &[Origin], ordered: bool) -> Vec<Ack> {
    if !ordered {
        return origins
            .iter()
            .filter_map(|o| match o {
                Origin::Pulsar { topic, id } if ends_its_entry(id) => Some(Ack::Individual {
                    topic: topic.clone(),
                    id: *id,
                }),
                _ => None,
            })
            .collect();
    }
    let mut highest: BTreeMap<Arc<str>, PulsarId> = BTreeMap::new();
    for o in origins {
        if let Origin::Pulsar { topic, id } = o {
            let e = highest.entry(topic.clone()).or_insert(*id);
            if id.position() > e.position() {
                *e = *id;
            }
        }
    }
    highest
        .into_iter()
        .filter_map(|(topic, id)| {
            Some(Ack::Cumulative {
                topic,
                id: whole_entries(id)?,
            })
        })
        .collect()
}

/// True when acknowledging `id` releases nothing uncommitted: it is not in
/// a producer's batch, or it is the batch's last message (messages are
/// committed in the order received, so the rest of its batch is too). An
/// unknown batch size counts as more to come.
fn ends_its_entry(id: &PulsarId) -> bool {
    id.batch_index < 0
        || id
            .batch_size
            .is_some_and(|n| id.batch_index.saturating_add(1) >= n)
}

/// What a cumulative acknowledgement up to `id` may name: `id` itself when
/// that releases nothing uncommitted, else the entry before its batch
/// (nothing when the batch opens its ledger: the entries before it were
/// acknowledged when their own batches were committed).
fn whole_entries(id: PulsarId) -> Option<PulsarId> {
    if ends_its_entry(&id) {
        return Some(id);
    }
    Some(PulsarId {
        entry: id.entry.checked_sub(1)?,
        batch_index: -1,
        batch_size: None,
        ..id
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(topic: &str, entry: u64) -> Origin {
        origin(topic, entry, -1, None)
    }

    /// Message `index` of a producer batch of `size` in `entry` (-1, None:
    /// not batched).
    fn origin(topic: &str, entry: u64, index: i32, size: Option<i32>) -> Origin {
        Origin::Pulsar {
            topic: Arc::from(topic),
            id: PulsarId {
                ledger: 1,
                entry,
                partition: -1,
                batch_index: index,
                batch_size: size,
            },
        }
    }

    #[test]
    fn ordered_acks_highest_per_topic() {
        let acks = plan(
            &[
                p("t-partition-1", 5),
                p("t-partition-0", 9),
                p("t-partition-1", 7),
                p("t-partition-0", 3),
            ],
            true,
        );
        let got: Vec<(String, u64)> = acks
            .iter()
            .map(|a| match a {
                Ack::Cumulative { topic, id } => (topic.to_string(), id.entry),
                Ack::Individual { .. } => panic!("ordered plans are cumulative"),
            })
            .collect();
        assert_eq!(
            got,
            vec![("t-partition-0".into(), 9), ("t-partition-1".into(), 7)]
        );
    }

    #[test]
    fn shared_acks_each_message_in_order() {
        let acks = plan(&[p("t", 5), p("t", 3)], false);
        assert_eq!(acks.len(), 2);
        assert!(matches!(&acks[0], Ack::Individual { id, .. } if id.entry == 5));
    }

    fn batched(topic: &str, entry: u64, index: i32, size: i32) -> Origin {
        origin(topic, entry, index, Some(size))
    }

    fn cumulative(acks: &[Ack]) -> Vec<(u64, i32)> {
        acks.iter()
            .map(|a| match a {
                Ack::Cumulative { id, .. } => (id.entry, id.batch_index),
                Ack::Individual { .. } => panic!("ordered plans are cumulative"),
            })
            .collect()
    }

    #[test]
    fn a_batch_entry_is_acknowledged_only_once_its_last_message_is_committed() {
        // Messages 0..=3 of entry 8's ten: the ack names entry 7, so that
        // messages 4..=9 are redelivered after a crash.
        let part: Vec<Origin> = (0..4).map(|i| batched("t", 8, i, 10)).collect();
        assert_eq!(cumulative(&plan(&part, true)), vec![(7, -1)]);
        // The whole batch committed: entry 8 itself.
        let rest: Vec<Origin> = (4..10).map(|i| batched("t", 8, i, 10)).collect();
        assert_eq!(cumulative(&plan(&rest, true)), vec![(8, 9)]);
        // A batch that opens its ledger: nothing yet.
        assert!(plan(&[batched("t", 0, 2, 5)], true).is_empty());
        // An unknown batch size is not taken as complete.
        let unknown = origin("t", 3, 4, None);
        assert_eq!(cumulative(&plan(&[unknown], true)), vec![(2, -1)]);
    }

    #[test]
    fn shared_acks_name_an_entry_once_its_batch_is_committed() {
        let acks = plan(
            &[
                batched("t", 8, 8, 10),
                batched("t", 8, 9, 10),
                batched("t", 9, 0, 3),
            ],
            false,
        );
        let got: Vec<(u64, i32)> = acks
            .iter()
            .map(|a| match a {
                Ack::Individual { id, .. } => (id.entry, id.batch_index),
                Ack::Cumulative { .. } => panic!("shared plans are individual"),
            })
            .collect();
        assert_eq!(got, vec![(8, 9)]);
    }

    #[test]
    fn file_origins_need_no_ack() {
        let f = Origin::File {
            path: Arc::from("x"),
            index: 0,
        };
        assert!(plan(std::slice::from_ref(&f), true).is_empty());
        assert!(plan(&[f], false).is_empty());
    }
}

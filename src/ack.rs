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

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::source::pulsar::Ack;
use crate::source::{Origin, PulsarId};

pub fn plan(origins: &[Origin], ordered: bool) -> Vec<Ack> {
    if !ordered {
        return origins
            .iter()
            .filter_map(|o| match o {
                Origin::Pulsar { topic, id } => Some(Ack::Individual {
                    topic: topic.clone(),
                    id: *id,
                }),
                Origin::File { .. } => None,
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
        .map(|(topic, id)| Ack::Cumulative { topic, id })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(topic: &str, entry: u64) -> Origin {
        Origin::Pulsar {
            topic: Arc::from(topic),
            id: PulsarId {
                ledger: 1,
                entry,
                partition: -1,
                batch_index: -1,
                batch_size: None,
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

//! How far behind the subscription is, per partition: the messages received
//! and not yet acknowledged, with their publish times. Pure (the clock is
//! passed in); `telemetry` keeps one for the live source and turns it into
//! the lag gauges and upstream's processed-messages counter.
//!
//! Bounded: an entry lives from the message entering the pipeline until the
//! acknowledgement that releases it, so there are never more entries than
//! the pipeline holds messages.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::source::pulsar::Ack;
use crate::source::PulsarId;

type Position = (u64, u64, i32);

/// Messages waiting, per topic (a partitioned topic's partitions have
/// their own names).
#[derive(Debug, Default)]
pub struct Progress {
    waiting: BTreeMap<Arc<str>, BTreeMap<Position, i64>>,
}

impl Progress {
    /// A message entered the pipeline; `publish_ms` is the broker's publish
    /// time in Unix milliseconds.
    pub fn received(&mut self, topic: &Arc<str>, id: &PulsarId, publish_ms: i64) {
        self.waiting
            .entry(topic.clone())
            .or_default()
            .insert(id.position(), publish_ms);
    }

    /// An acknowledgement was sent: the messages it releases stop waiting.
    /// Returns how many it released.
    pub fn acknowledged(&mut self, ack: &Ack) -> u64 {
        match ack {
            Ack::Cumulative { topic, id } => {
                let Some(w) = self.waiting.get_mut(topic) else {
                    return 0;
                };
                let p = id.position();
                let above = w.split_off(&(p.0, p.1, p.2.saturating_add(1)));
                let released = w.len() as u64;
                *w = above;
                released
            }
            Ack::Individual { topic, id } => self
                .waiting
                .get_mut(topic)
                .and_then(|w| w.remove(&id.position()))
                .map_or(0, |_| 1),
        }
    }

    /// Per topic seen: seconds since the oldest waiting message (by
    /// position, i.e. the first not yet committed) was published, or 0
    /// when nothing waits. Never negative (clocks differ).
    pub fn lag(&self, now_ms: i64) -> Vec<(Arc<str>, f64)> {
        self.waiting
            .iter()
            .map(|(topic, w)| {
                let lag = w
                    .values()
                    .next()
                    .map_or(0.0, |&p| (now_ms.saturating_sub(p)).max(0) as f64 / 1000.0);
                (topic.clone(), lag)
            })
            .collect()
    }

    /// Messages waiting, over all topics.
    pub fn waiting(&self) -> usize {
        self.waiting.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(entry: u64) -> PulsarId {
        PulsarId {
            ledger: 1,
            entry,
            partition: -1,
            batch_index: -1,
            batch_size: None,
        }
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_waiting_message() {
        let t: Arc<str> = Arc::from("t");
        let mut p = Progress::default();
        assert!(p.lag(0).is_empty());
        p.received(&t, &id(1), 1_000);
        p.received(&t, &id(2), 2_000);
        p.received(&t, &id(3), 4_000);
        assert_eq!(p.lag(5_000), vec![(t.clone(), 4.0)]);
        let cumulative = Ack::Cumulative {
            topic: t.clone(),
            id: id(2),
        };
        assert_eq!(p.acknowledged(&cumulative), 2);
        assert_eq!(p.lag(5_000), vec![(t.clone(), 1.0)]);
        assert_eq!(p.acknowledged(&cumulative), 0, "released once");
        let one = Ack::Individual {
            topic: t.clone(),
            id: id(3),
        };
        assert_eq!(p.acknowledged(&one), 1);
        // Nothing waits: 0, and the partition is still listed.
        assert_eq!(p.lag(9_000), vec![(t.clone(), 0.0)]);
        assert_eq!(p.waiting(), 0);
        // A publish time in the future (another clock) is no negative lag.
        p.received(&t, &id(4), 10_000);
        assert_eq!(p.lag(9_000), vec![(t, 0.0)]);
    }
}

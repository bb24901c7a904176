//! Hash maps and sets keyed by job and run ids, the hottest lookups of
//! holding, conflation and the store's bookkeeping. std's SipHash was 7% of
//! a replay's client samples; foldhash is several times faster on short
//! strings and, seeded per process, still keeps chosen ids from colliding
//! on purpose.

pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

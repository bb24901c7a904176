//! Capped exponential backoff, shared by the store's retries and the Pulsar
//! source's reconnects, so both wait the same way.

use std::time::Duration;

/// Waits of `first`, then doubling up to `max` (the first wait itself is not
/// capped: callers choose it).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            next: first,
            max,
        }
    }

    /// The wait before the next attempt.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    /// Starts again from the first wait (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let waits: Vec<u128> = (0..5).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(50));
        // A first wait above the cap is kept once, then capped.
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(2));
        assert_eq!(b.next_wait(), Duration::from_secs(5));
        assert_eq!(b.next_wait(), Duration::from_secs(2));
    }
}

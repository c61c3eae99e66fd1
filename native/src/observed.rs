//! The answers of a backend that scales to zero (Cloud Run), queued for the gateway's
//! warm-state estimator (`gateway/core/warmth.py`), which the Python plane feeds from every
//! answer (`ObservedWarmth`). Bounded: past `CAPACITY` the oldest go, and are counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::stats::Reported;

/// Answers kept between two drains (the gateway drains every 100 ms).
pub const CAPACITY: usize = 4096;

/// One successful answer: when it came, the round trip, and what the backend reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    pub at: Instant,
    pub backend: Duration,
    pub reported: Reported,
}

#[derive(Default)]
pub struct Observations {
    queue: Mutex<VecDeque<Observed>>,
    dropped: AtomicU64,
}

impl Observations {
    pub fn push(&self, observed: Observed) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= CAPACITY {
            queue.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back(observed);
    }

    /// The answers queued since the last call, oldest first, and how many were dropped.
    pub fn take(&self) -> (Vec<Observed>, u64) {
        let taken = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        (taken.into(), self.dropped.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_counts_the_dropped() {
        let o = Observations::default();
        let at = Instant::now();
        for ms in 0..CAPACITY as u64 + 2 {
            o.push(Observed {
                at,
                backend: Duration::from_millis(ms),
                reported: Reported::default(),
            });
        }
        let (taken, dropped) = o.take();
        assert_eq!((taken.len(), dropped), (CAPACITY, 2));
        assert_eq!(taken[0].backend, Duration::from_millis(2));
        assert_eq!(o.take(), (vec![], 0));
    }
}

//! Counters and latency histograms kept natively, per lane (each native backend, and the
//! python lane), read by Python at scrape time (`Plane.stats()`). Lock-free: atomics only.
//! The bucket bounds are the gateway's (`gateway/core/metrics.py` `BUCKETS`, seconds).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::grpc_status::CODES;

pub const BUCKETS_S: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// A cumulative-free histogram: `counts[i]` is the number of observations `<= BUCKETS_S[i]`
/// and above the previous bound; the last count is `+Inf`.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS_S.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS_S.partition_point(|&b| b < s);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let counts = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        (counts, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

/// One lane's counters: requests by final gRPC status, and histograms of `total`,
/// `queue` and `backend` (seconds).
#[derive(Default)]
pub struct LaneStats {
    pub by_status: [AtomicU64; CODES],
    pub total: Histogram,
    pub queue: Histogram,
    pub backend: Histogram,
}

impl LaneStats {
    pub fn count(&self, code: u8) {
        let i = usize::from(code).min(CODES - 1);
        self.by_status[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn statuses(&self) -> Vec<u64> {
        self.by_status
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// The phases of one native request, as its `server-timing` trailer names them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Phases {
    pub decode: Duration,
    pub queue: Option<Duration>,
    pub backend: Option<Duration>,
    pub total: Duration,
    /// What the answering backend reported of itself.
    pub reported: Reported,
}

/// The phases a backend reported in its own `server-timing` trailer (`coldstart`,
/// `backend_queue`, `compute`: `timing::REPORTED`'s order), each if it did.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Reported(pub [Option<Duration>; 3]);

impl Reported {
    pub fn coldstart(&self) -> Option<Duration> {
        self.0[0]
    }

    pub fn compute(&self) -> Option<Duration> {
        self.0[2]
    }
}

/// The requests of one model that ended with one status, and their phases: a series of
/// the gateway's `infergw_requests_total` and `infergw_phase_duration_seconds`.
#[derive(Default)]
pub struct Outcome {
    pub count: AtomicU64,
    pub decode: Histogram,
    pub queue: Histogram,
    pub backend: Histogram,
    pub total: Histogram,
    /// `coldstart`, `backend_queue`, `compute`, as the backends reported them.
    pub reported: [Histogram; 3],
}

/// A natively routed model's requests by final gRPC status (a fixed array: recording is
/// lock-free, and the label set is bounded by the configured routes).
pub struct ModelStats {
    outcomes: Box<[Outcome]>,
}

impl Default for ModelStats {
    fn default() -> Self {
        ModelStats {
            outcomes: (0..CODES).map(|_| Outcome::default()).collect(),
        }
    }
}

impl ModelStats {
    pub fn record(&self, code: u8, phases: &Phases) {
        let outcome = &self.outcomes[usize::from(code).min(CODES - 1)];
        outcome.count.fetch_add(1, Ordering::Relaxed);
        outcome.decode.observe(phases.decode);
        if let Some(queue) = phases.queue {
            outcome.queue.observe(queue);
        }
        if let Some(backend) = phases.backend {
            outcome.backend.observe(backend);
        }
        outcome.total.observe(phases.total);
        for (histogram, dur) in outcome.reported.iter().zip(phases.reported.0) {
            if let Some(dur) = dur {
                histogram.observe(dur);
            }
        }
    }

    /// The phases of an earlier attempt of a request that ended with `code` (a fallback's
    /// first try): the gateway observes every `queue` and `backend` entry of a request.
    pub fn observe_attempt(&self, code: u8, queue: Option<Duration>, backend: Option<Duration>) {
        let outcome = &self.outcomes[usize::from(code).min(CODES - 1)];
        if let Some(queue) = queue {
            outcome.queue.observe(queue);
        }
        if let Some(backend) = backend {
            outcome.backend.observe(backend);
        }
    }

    /// The statuses seen so far, with their outcomes.
    pub fn outcomes(&self) -> impl Iterator<Item = (usize, &Outcome)> {
        self.outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.count.load(Ordering::Relaxed) > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_like_bisect_left() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // == first bound: first bucket
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(100)); // +Inf
        let (counts, sum) = h.snapshot();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[BUCKETS_S.len()], 1);
        assert!((sum - 100.000201).abs() < 1e-9);
    }

    #[test]
    fn a_model_counts_by_status_and_only_the_phases_it_had() {
        let m = ModelStats::default();
        let ms = Duration::from_millis;
        let full = Phases {
            decode: ms(0),
            queue: Some(ms(1)),
            backend: Some(ms(2)),
            total: ms(3),
            reported: Reported([None, None, Some(ms(1))]), // compute only
        };
        m.record(0, &full);
        m.record(0, &full);
        m.record(
            3,
            &Phases {
                total: ms(1),
                ..Phases::default()
            },
        );
        m.record(200, &full); // out of range: the last code
        let seen: Vec<(usize, u64, u64, [u64; 3])> = m
            .outcomes()
            .map(|(code, o)| {
                let n = |h: &Histogram| h.snapshot().0.iter().sum::<u64>();
                let reported = [0, 1, 2].map(|i| n(&o.reported[i]));
                (code, o.count.load(Ordering::Relaxed), n(&o.queue), reported)
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (0, 2, 2, [0, 0, 2]),
                (3, 1, 0, [0; 3]),
                (CODES - 1, 1, 1, [0, 0, 1])
            ]
        );
    }
}

//! Admission per backend: a concurrency limit with a bounded FIFO queue in front of it,
//! the semantics of `gateway/core/policies.py`'s `Admission`:
//!
//! - a free slot and nobody waiting: admitted at once;
//! - `max_queue` already waiting: `QueueFull` at once;
//! - otherwise wait in FIFO order for at most `min(queue_timeout, remaining deadline)`;
//!   past it, `DeadlineExceeded` if the deadline was the shorter bound, else `QueueFull`.
//!
//! `QueueFull` carries `retry_after = max(1 s, queue_timeout)` rounded up, as the gateway's
//! `retry-after`. A slot is a tokio semaphore permit (fair, FIFO): it is given back when
//! the response has been sent or the request dropped (client gone), and a wait that is
//! given up never leaks a slot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::grpc_status::{Status, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED};

pub struct Admission {
    name: String,
    max_concurrency: usize,
    max_queue: usize,
    queue_timeout: Duration,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
}

/// One admitted request's slot; dropping it frees the slot.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// Counts a waiter for as long as it waits (also when its future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(
        name: &str,
        max_concurrency: usize,
        max_queue: usize,
        queue_timeout: Duration,
    ) -> Self {
        let max_concurrency = max_concurrency.max(1);
        Admission {
            name: name.to_owned(),
            max_concurrency,
            max_queue,
            queue_timeout,
            slots: Arc::new(Semaphore::new(max_concurrency)),
            queued: AtomicUsize::new(0),
        }
    }

    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    pub fn in_flight(&self) -> usize {
        self.max_concurrency - self.slots.available_permits()
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    fn queue_full(&self, message: String) -> Status {
        let seconds = self.queue_timeout.as_secs_f64().max(1.0).ceil() as u64;
        Status {
            code: RESOURCE_EXHAUSTED,
            message,
            retry_after_s: Some(seconds),
        }
    }

    /// Waits for a slot, bounded by the queue timeout and `deadline`.
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<Slot, Status> {
        if self.queued() == 0 {
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return Ok(Slot { _permit: permit });
            }
        }
        // Count ourselves in the queue first, then check the bound: two racing requests
        // cannot both take the last place.
        let waiting = Waiting(&self.queued);
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            drop(waiting);
            return Err(self.queue_full(format!(
                "backend '{}' is at its limit of {} in flight and {} queued",
                self.name, self.max_concurrency, self.max_queue
            )));
        }
        let now = Instant::now();
        let remaining = deadline.map(|d| d.saturating_duration_since(now));
        let wait = remaining.map_or(self.queue_timeout, |r| r.min(self.queue_timeout));
        let result = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await;
        drop(waiting);
        match result {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            Ok(Err(_closed)) => Err(Status::new(
                crate::grpc_status::UNAVAILABLE,
                "the plane is shutting down",
            )),
            Err(_elapsed) => {
                if remaining.is_some_and(|r| r <= self.queue_timeout) {
                    Err(Status::new(
                        DEADLINE_EXCEEDED,
                        "deadline exceeded while queued for the backend",
                    ))
                } else {
                    Err(self.queue_full(format!(
                        "waited {:.3}s in the queue for backend '{}'",
                        self.queue_timeout.as_secs_f64(),
                        self.name
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_is_resource_exhausted_with_retry_after() {
        let a = Admission::new("triton", 1, 0, Duration::from_millis(200));
        let held = a.acquire(None).await.unwrap();
        let err = a.acquire(None).await.err().unwrap();
        assert_eq!(err.code, RESOURCE_EXHAUSTED);
        assert_eq!(err.retry_after_s, Some(1));
        assert_eq!(a.in_flight(), 1);
        drop(held);
        assert_eq!(a.in_flight(), 0);
        assert!(a.acquire(None).await.is_ok());
    }

    #[tokio::test]
    async fn queued_waiters_get_the_slot_in_order_or_time_out() {
        let a = Arc::new(Admission::new("b", 1, 2, Duration::from_millis(50)));
        let held = a.acquire(None).await.unwrap();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.acquire(None).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(a.queued(), 1);
        drop(held);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(a.queued(), 0);
        // Now a wait that times out: QueueFull with retry-after = max(1 s, 50 ms).
        let held = a.acquire(None).await.unwrap();
        let err = a.acquire(None).await.err().unwrap();
        assert_eq!((err.code, err.retry_after_s), (RESOURCE_EXHAUSTED, Some(1)));
        // A deadline shorter than the queue timeout: DEADLINE_EXCEEDED.
        let deadline = Instant::now() + Duration::from_millis(5);
        let err = a.acquire(Some(deadline)).await.err().unwrap();
        assert_eq!(err.code, DEADLINE_EXCEEDED);
        assert_eq!(a.queued(), 0);
        drop(held);
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn retry_after_rounds_the_queue_timeout_up() {
        let a = Admission::new("b", 1, 0, Duration::from_millis(2200));
        assert_eq!(a.queue_full(String::new()).retry_after_s, Some(3));
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_no_trace() {
        let a = Arc::new(Admission::new("b", 1, 1, Duration::from_secs(5)));
        let held = a.acquire(None).await.unwrap();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.acquire(None).await.map(|_| ()) });
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(a.queued(), 0);
        drop(held);
        assert_eq!(a.in_flight(), 0);
    }
}

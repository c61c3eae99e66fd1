"""Budgets that keep extra attempts from multiplying load, and the backoff between tries.

- ``RetryBudget`` (Envoy's retry budget): a retry may start while the retries in flight
  stay below ``max(min_concurrent, budget_percent% of active requests)``. Under an outage
  every request fails and would retry; the budget caps the extra load at a fraction.
- ``HedgeBudget``: hedges at most ``percent``% of requests. Each request earns
  ``percent/100`` of a hedge, a hedge spends one (one in hand at start, at most
  ``cap`` saved), so a slow backend costs at most that share of extra requests.
- ``Backoff``: full-jitter exponential backoff that waits at least a backend's
  Retry-After and never sleeps past the deadline. ``policies.Retry._delay`` computes the
  same; it could call this (and hold a ``RetryBudget.retry()`` place per retry).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from infergw.vocab.errors import InferGWError, QueueFull, Throttled


class RetryBudget:
    """Concurrent retries against one backend, as a share of its active requests."""

    def __init__(self, budget_percent: float = 20.0, min_concurrent: int = 3) -> None:
        self.budget_percent = budget_percent
        self.min_concurrent = min_concurrent
        self.active = 0  # requests in flight to the backend (their retries included)
        self.retrying = 0  # retries in flight

    def limit(self) -> int:
        """The most retries that may be in flight now."""
        share = math.floor(self.active * self.budget_percent / 100.0)
        return max(self.min_concurrent, share)

    @contextmanager
    def request(self) -> Iterator[None]:
        """Count one request as active for as long as it runs."""
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def start_retry(self) -> bool:
        """Take a place for one retry if the budget has one (``end_retry`` gives it back)."""
        if self.retrying >= self.limit():
            return False
        self.retrying += 1
        return True

    def end_retry(self) -> None:
        self.retrying = max(0, self.retrying - 1)

    @contextmanager
    def retry(self) -> Iterator[bool]:
        """Whether a retry may start now; if so, it holds its place until the block ends."""
        allowed = self.start_retry()
        try:
            yield allowed
        finally:
            if allowed:
                self.end_retry()


class HedgeBudget:
    """Hedges as a share of requests: ``deposit`` per request, ``withdraw`` per hedge."""

    def __init__(self, percent: float = 10.0, initial: float = 1.0, cap: float = 10.0) -> None:
        self.per_request = percent / 100.0
        self.cap = max(1.0, cap)
        self.balance = min(initial, self.cap)

    def deposit(self) -> None:
        self.balance = min(self.cap, self.balance + self.per_request)

    def withdraw(self) -> bool:
        """Spend one hedge if the budget has one."""
        if self.balance < 1.0:
            return False
        self.balance -= 1.0
        return True


@dataclass(frozen=True)
class Backoff:
    """Try ``n`` (from 0) waits ``uniform(0, min(max_s, base_s * 2**n))``, at least the
    backend's Retry-After; a wait that would reach the deadline is not taken (None)."""

    base_s: float = 0.025
    max_s: float = 0.25
    uniform: Callable[[float, float], float] = random.uniform

    def delay(
        self, retries: int, retry_after_s: float | None, remaining_s: float | None
    ) -> float | None:
        delay = self.uniform(0.0, min(self.max_s, self.base_s * 2.0 ** min(retries, 64)))
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        if remaining_s is not None and delay >= remaining_s:
            return None
        return delay


def retry_after_s(exc: InferGWError) -> float | None:
    """The wait a backend asked for: its own Retry-After (throttling), the gateway's for a
    full queue, None when it said nothing."""
    if isinstance(exc, Throttled):
        return exc.retry_after_hint_s
    if isinstance(exc, QueueFull):
        return exc.retry_after_s
    return None

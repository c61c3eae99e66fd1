"""Recent service times of a backend, and the latency estimate an overflow target offers.

``LatencyWindow`` keeps the last ``capacity`` service times (seconds) of successful
attempts: the hedge delay ``"p95"`` is its 95th percentile, the spill-over's queue-wait
estimate its mean. ``LatencyEstimate`` is what a serverless backend's warm-state
estimator provides (built elsewhere); ``ObservedLatency`` stands in for one from the
window alone (never cold) for backends that have no estimator.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import numpy as np

DEFAULT_CAPACITY = 256
MIN_SAMPLES = 20  # fewer than this: a percentile is not yet a fact


class LatencyEstimate(Protocol):
    def expected_latency_s(self, now: float) -> float:
        """The time a request sent now would probably take (a cold start included)."""
        ...

    def probably_cold(self, now: float) -> bool:
        """Whether a request sent now would probably pay a cold start."""
        ...

    def warm_capacity(self, now: float) -> int | None:
        """Requests it can probably take at once without a cold start (None: no limit
        known, as for an always-on backend)."""
        ...

    def cold_latency_s(self) -> float:
        """The time a request that pays a cold start would probably take."""
        ...


class LatencyWindow:
    """The most recent service times, in seconds."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, min_samples: int = MIN_SAMPLES) -> None:
        self._samples: deque[float] = deque(maxlen=capacity)
        self.min_samples = min_samples

    def add(self, seconds: float) -> None:
        self._samples.append(max(0.0, seconds))

    def __len__(self) -> int:
        return len(self._samples)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of the window; None until ``min_samples`` are in."""
        if len(self._samples) < max(1, self.min_samples):
            return None
        return float(np.quantile(np.fromiter(self._samples, float), q))

    def mean(self) -> float | None:
        """The mean service time; None before the first sample."""
        if not self._samples:
            return None
        return sum(self._samples) / len(self._samples)


class ObservedLatency:
    """A ``LatencyEstimate`` from recent service times only: the mean (0 before any)."""

    def __init__(self, window: LatencyWindow) -> None:
        self.window = window

    def expected_latency_s(self, now: float) -> float:
        mean = self.window.mean()
        return 0.0 if mean is None else mean

    def probably_cold(self, now: float) -> bool:
        return False

    def warm_capacity(self, now: float) -> int | None:
        return None

    def cold_latency_s(self) -> float:
        return self.expected_latency_s(0.0)

"""Arrival traces as sorted numpy arrays of seconds from the first arrival.

A packaged trace (``azure-code``, ``azure-conv``) or a CSV of timestamps, read by the load
generator's ``loadgen.traces.load`` (so ``plan`` and ``bench`` replay the same arrivals);
``poisson:RATE:SECONDS`` makes a seeded synthetic trace instead. ``time_scale`` > 1
compresses time, ``rate_scale`` thins (< 1) or replicates (> 1) arrivals at random, as
``bench --rate-scale`` does (``loadgen.traces.scale_rate``); outputs say which were used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from infergw.loadgen import traces as recorded


@dataclass(frozen=True)
class Trace:
    """Arrival times (sorted, seconds, first at 0) and where they came from."""

    arrivals: np.ndarray
    source: str
    time_scale: float = 1.0
    rate_scale: float = 1.0

    @property
    def span_s(self) -> float:
        return float(self.arrivals[-1]) if len(self.arrivals) else 0.0

    def describe(self) -> dict[str, object]:
        span = self.span_s
        return {
            "source": self.source,
            "requests": len(self.arrivals),
            "span_s": round(span, 3),
            "mean_rate_per_s": round(len(self.arrivals) / span, 4) if span > 0 else None,
            "time_scale": self.time_scale,
            "rate_scale": self.rate_scale,
        }


def poisson(rate: float, duration_s: float, seed: int = 0) -> np.ndarray:
    """Poisson arrivals at ``rate`` per second over ``duration_s``, sorted."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("poisson trace: rate and duration must be > 0")
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate * duration_s)
    return np.sort(rng.uniform(0.0, duration_s, size=n))


def load(
    spec: str,
    *,
    time_scale: float = 1.0,
    rate_scale: float = 1.0,
    seed: int = 0,
    start_s: float = 0.0,
    duration_s: float | None = None,
) -> Trace:
    """A trace from ``FILE.csv`` or ``poisson:RATE:SECONDS``, its window [start, start +
    duration) in trace time (as ``bench --trace-start/--trace-duration``), then scaled."""
    if time_scale <= 0 or rate_scale <= 0:
        raise ValueError("--time-scale and --rate-scale must be > 0")
    if spec.startswith("poisson:"):
        try:
            _, rate, duration = spec.split(":")
            arrivals = poisson(float(rate), float(duration), seed)
        except ValueError as exc:
            raise ValueError(f"{spec!r}: expected poisson:RATE:SECONDS ({exc})") from exc
    else:  # a packaged trace's name or a CSV, read as the load generator reads it
        arrivals = recorded.load(spec)
    if start_s or duration_s is not None:
        arrivals = recorded.window(arrivals, start_s, duration_s)
    arrivals = arrivals / time_scale
    if rate_scale != 1.0:
        arrivals = recorded.scale_rate(arrivals, rate_scale, seed)
    return Trace(arrivals, spec, time_scale, rate_scale)

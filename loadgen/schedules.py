"""Arrival schedules for the open loop: lazy, seeded generators of send offsets.

Each generator yields non-decreasing offsets in seconds from the start of a run,
lazily, so a million-request schedule costs no memory. Randomness comes from a
``random.Random(seed)``: the same seed gives the same schedule on every machine.

- ``constant(rate)``: evenly spaced.
- ``poisson(rate, seed)``: exponential inter-arrivals (a memoryless stream of users).
- ``ramp(r0, r1, duration)``: rate rising linearly; arrivals placed by inverting the
  cumulative rate, so ``poisson=True`` gives an exact non-homogeneous Poisson process.
- recorded traces are read by ``loadgen.traces`` (timestamps, per-interval counts, the
  packaged Azure traces; MMPPs fitted to them), not here.
- ``onoff(...)`` and ``mmpp(...)``: bursty synthetic traces in the spirit of the
  Berkeley and WITS traces (which cannot be downloaded here), optionally with a
  diurnal sinusoid; see their docstrings for the parameters.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

__all__ = ["constant", "mmpp", "onoff", "poisson", "ramp"]


def constant(rate: float, start: float = 0.0) -> Iterator[float]:
    """``rate`` requests per second, evenly spaced, forever."""
    _positive(rate, "rate")
    k = 0
    while True:
        yield start + k / rate
        k += 1


def poisson(rate: float, seed: int = 0) -> Iterator[float]:
    """A Poisson process of ``rate`` per second: i.i.d. exponential gaps, forever."""
    _positive(rate, "rate")
    rng = random.Random(seed)
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t


def ramp(
    r0: float, r1: float, duration: float, *, poisson: bool = False, seed: int = 0
) -> Iterator[float]:
    """Rate rising (or falling) linearly from ``r0`` to ``r1`` over ``duration`` seconds.

    The k-th arrival is where the cumulative rate Lambda(t) = r0 t + (r1 - r0) t^2 / 2D
    reaches k (deterministic) or the k-th point of a unit-rate Poisson process (time
    rescaling theorem: then the arrivals form a Poisson process of rate r(t)).
    Stops at ``duration``.
    """
    if r0 < 0 or r1 < 0 or r0 + r1 == 0:
        raise ValueError("ramp rates must be >= 0 and not both 0")
    _positive(duration, "duration")
    slope = (r1 - r0) / duration
    total = r0 * duration + slope * duration**2 / 2
    rng = random.Random(seed)
    level = 0.0 if poisson else -0.5  # deterministic: at k + 1/2, so 1 rps sends at 0.5 s...
    while True:
        level += rng.expovariate(1.0) if poisson else 1.0
        if level > total:
            return
        yield _inverse_linear(level, r0, slope)


def _inverse_linear(level: float, r0: float, slope: float) -> float:
    """Solve r0 t + slope t^2 / 2 = level for t >= 0."""
    if abs(slope) < 1e-12:
        return level / r0
    return (math.sqrt(r0 * r0 + 2 * slope * level) - r0) / slope


def onoff(
    on_rate: float,
    mean_on_s: float,
    mean_off_s: float,
    *,
    off_rate: float = 0.0,
    diurnal_amplitude: float = 0.0,
    diurnal_period_s: float = 86_400.0,
    seed: int = 0,
) -> Iterator[float]:
    """An on/off source (a 2-state MMPP): bursts of Poisson traffic separated by silence.

    Periods alternate, starting ON; ON lasts Exp(mean ``mean_on_s``) with arrivals at
    ``on_rate``, OFF lasts Exp(mean ``mean_off_s``) with ``off_rate`` (default 0). The
    long-run mean rate is (on_rate*mean_on + off_rate*mean_off) / (mean_on + mean_off);
    counts per interval are over-dispersed (index of dispersion > 1), as in measured
    request traces. Diurnal modulation as in ``mmpp``.
    """
    return mmpp(
        [on_rate, off_rate],
        [mean_on_s, mean_off_s],
        diurnal_amplitude=diurnal_amplitude,
        diurnal_period_s=diurnal_period_s,
        seed=seed,
    )


def mmpp(
    rates: Sequence[float],
    mean_dwell_s: Sequence[float],
    *,
    transitions: Sequence[Sequence[float]] | None = None,
    diurnal_amplitude: float = 0.0,
    diurnal_period_s: float = 86_400.0,
    seed: int = 0,
) -> Iterator[float]:
    """A Markov-modulated Poisson process with an optional diurnal sinusoid.

    State i emits Poisson arrivals at ``rates[i]`` and lasts Exp(mean
    ``mean_dwell_s[i]``); it then moves to state j with probability
    ``transitions[i][j]`` (default: uniformly to any other state). The run starts in
    state 0. Every rate is multiplied by ``1 + diurnal_amplitude * sin(2 pi t /
    diurnal_period_s)`` (amplitude in [0, 1); a day by default, shorten it to see the
    shape in a short run), applied by thinning so the process stays exact.
    """
    n = len(rates)
    if n < 2 or len(mean_dwell_s) != n:
        raise ValueError("mmpp needs >= 2 states, one rate and one mean dwell time each")
    if any(r < 0 for r in rates) or not any(r > 0 for r in rates):
        raise ValueError("mmpp rates must be >= 0 and not all 0")
    for d in mean_dwell_s:
        _positive(d, "mean dwell time")
    if not 0.0 <= diurnal_amplitude < 1.0:
        raise ValueError("diurnal amplitude must be in [0, 1)")
    _positive(diurnal_period_s, "diurnal period")
    matrix = _transition_matrix(n, transitions)
    rng = random.Random(seed)
    state, t = 0, 0.0
    peak = 1.0 + diurnal_amplitude
    omega = 2 * math.pi / diurnal_period_s
    while True:
        end = t + rng.expovariate(1.0 / mean_dwell_s[state])
        rate = rates[state] * peak  # candidate rate for thinning
        if rate > 0:
            while True:
                t += rng.expovariate(rate)
                if t >= end:
                    break
                if rng.random() * peak <= 1.0 + diurnal_amplitude * math.sin(omega * t):
                    yield t
        t = end
        state = rng.choices(range(n), weights=matrix[state])[0]


def _transition_matrix(n: int, transitions: Sequence[Sequence[float]] | None) -> list[list[float]]:
    if transitions is None:
        return [[0.0 if i == j else 1.0 for j in range(n)] for i in range(n)]
    matrix = [list(map(float, row)) for row in transitions]
    if len(matrix) != n or any(len(row) != n for row in matrix):
        raise ValueError(f"transitions must be a {n}x{n} matrix")
    for i, row in enumerate(matrix):
        if any(p < 0 for p in row) or sum(row) - row[i] <= 0:
            raise ValueError(f"transitions row {i} must leave state {i} with some probability")
        row[i] = 0.0  # a dwell ends with a change of state
    return matrix


def _positive(value: float, what: str) -> None:
    if not value > 0:
        raise ValueError(f"{what} must be > 0, got {value}")

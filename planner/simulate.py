"""One run of one policy over one trace: per-request latency, backend, cold start, bill.

Every policy of a comparison draws the same random numbers (common random numbers): for
request ``i``, its always-on service time, its serverless service time and the cold start
it would pay are drawn up front from one seeded generator, so policies differ only by
their decisions, and a sweep's curve is not noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from heapq import heapreplace
from typing import Literal

import numpy as np

from infergw.planner.dists import Latencies
from infergw.planner.pools import Autoscale, FunctionPool, Serverless, SlotPool

PolicyName = Literal["always-on", "autoscaled", "serverless", "hybrid"]
POLICIES: tuple[PolicyName, ...] = ("always-on", "autoscaled", "serverless", "hybrid")
ALWAYS_ON, SERVERLESS, FAILED = 0, 1, -1


@dataclass(frozen=True)
class Policy:
    """A routing policy and its parameters. ``slots``: always-on slots (the autoscaler's
    starting count, raised to ``autoscale.min_slots``); ``autoscale`` on a hybrid makes its
    always-on part autoscaled. ``max_queue_wait_s``, ``prewarm``: the hybrid's spill-over."""

    name: PolicyName
    slots: int = 1
    max_queue: int | None = None
    queue_timeout_s: float | None = None
    autoscale: Autoscale | None = None
    serverless: Serverless = field(default_factory=Serverless)
    max_queue_wait_s: float = 0.020
    prewarm: bool = False

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy {self.name!r}")
        if self.slots < 0 or (self.slots == 0 and self.name == "always-on"):
            raise ValueError("slots must be >= 1 for always-on (>= 0 otherwise)")
        if self.max_queue is not None and self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if self.queue_timeout_s is not None and self.queue_timeout_s < 0:
            raise ValueError("queue_timeout_s must be >= 0")
        if self.name == "autoscaled" and self.autoscale is None:
            raise ValueError("the autoscaled policy needs autoscale parameters")
        if self.max_queue_wait_s < 0:
            raise ValueError("max_queue_wait_s must be >= 0")


@dataclass(frozen=True)
class Outcome:
    """What one run produced. Per request: ``latency`` (s, NaN when failed), ``backend``
    (0 always-on, 1 serverless, -1 failed), ``cold`` (paid a cold start), ``service`` (the
    service time it got, s) and ``billed_s`` (serverless billed duration before rounding,
    0 elsewhere). Totals: always-on slot-seconds, pre-warm invocations' billed seconds,
    keep-warm pings, the billing horizon, capacity peaks."""

    policy: Policy
    arrivals: np.ndarray
    latency: np.ndarray
    backend: np.ndarray
    cold: np.ndarray
    service: np.ndarray
    billed_s: np.ndarray
    slot_seconds: float
    prewarm_billed_s: tuple[float, ...]
    keep_warm_pings: int
    horizon_s: float
    peak_slots: int
    peak_instances: int


@dataclass(frozen=True)
class Draws:
    """Each request's would-be durations on each backend, seconds (see module docstring)."""

    always_on: np.ndarray
    serverless: np.ndarray
    coldstart: np.ndarray

    @classmethod
    def make(cls, n: int, latencies: Latencies, seed: int) -> Draws:
        rng = np.random.default_rng(seed)
        return cls(
            latencies.always_on.sample(rng, n),
            latencies.serverless.sample(rng, n),
            latencies.coldstart.sample(rng, n),
        )


def simulate(arrivals: np.ndarray, policy: Policy, latencies: Latencies, draws: Draws) -> Outcome:
    """Run ``policy`` over ``arrivals`` (sorted seconds) with the given ``draws``."""
    if len(draws.always_on) != len(arrivals):
        raise ValueError("draws do not match the trace")
    if len(arrivals) > 1 and np.any(np.diff(arrivals) < 0):
        raise ValueError("arrivals must be sorted")
    runs = {
        "always-on": _always_on,
        "autoscaled": _autoscaled,
        "serverless": _serverless,
        "hybrid": _hybrid,
    }
    return runs[policy.name](arrivals, policy, latencies, draws)


def _horizon(arrivals: np.ndarray) -> float:
    return float(arrivals[-1]) if len(arrivals) else 0.0


def _always_on(a: np.ndarray, p: Policy, lat: Latencies, d: Draws) -> Outcome:
    """Fixed slots, FIFO: a heap of slot free times (starts are non-decreasing in FIFO, so
    the queue at an arrival is the admitted requests not yet started: a deque)."""
    free = [0.0] * p.slots
    latency: list[float] = []
    nan = math.nan
    timeout = math.inf if p.queue_timeout_s is None else p.queue_timeout_s
    if p.max_queue is None:
        for t, s in zip(a.tolist(), d.always_on.tolist(), strict=True):
            first = free[0]
            start = t if first < t else first
            if start - t > timeout:  # gave up waiting, as the gateway's admission does
                latency.append(nan)
                continue
            heapreplace(free, start + s)
            latency.append(start + s - t)
    else:
        from collections import deque

        starts: deque[float] = deque()
        limit = p.max_queue
        for t, s in zip(a.tolist(), d.always_on.tolist(), strict=True):
            while starts and starts[0] <= t:
                starts.popleft()
            if len(starts) >= limit and free[0] > t:
                latency.append(nan)
                continue
            first = free[0]
            start = t if first < t else first
            if start - t > timeout:
                latency.append(nan)
                continue
            heapreplace(free, start + s)
            if start > t:
                starts.append(start)
            latency.append(start + s - t)
    end = max(_horizon(a), max(free) if free else 0.0)
    lat_arr = np.asarray(latency, dtype=float)
    backend = np.where(np.isnan(lat_arr), FAILED, ALWAYS_ON).astype(np.int8)
    n = len(a)
    return Outcome(
        p, a, lat_arr, backend, np.zeros(n, bool), d.always_on, np.zeros(n),
        p.slots * end, (), 0, end, p.slots, 0,
    )  # fmt: skip


def _slot_pool(p: Policy, lat: Latencies, latency: list[float]) -> SlotPool:
    slots = max(p.slots, p.autoscale.min_slots) if p.autoscale else p.slots
    return SlotPool(
        slots,
        latency,
        mean_service_s=lat.always_on.mean,
        max_queue=p.max_queue,
        queue_timeout_s=p.queue_timeout_s,
        autoscale=p.autoscale,
    )


def _autoscaled(a: np.ndarray, p: Policy, lat: Latencies, d: Draws) -> Outcome:
    n = len(a)
    latency = [math.nan] * n
    pool = _slot_pool(p, lat, latency)
    advance, submit, observe = pool.advance, pool.submit, pool.observe
    for i, (t, s) in enumerate(zip(a.tolist(), d.always_on.tolist(), strict=True)):
        advance(t)
        submit(i, t, s)  # a full queue leaves latency NaN: failed
        observe(t)
    end = pool.finish(_horizon(a))
    lat_arr = np.asarray(latency, dtype=float)
    backend = np.where(np.isnan(lat_arr), FAILED, ALWAYS_ON).astype(np.int8)
    return Outcome(
        p, a, lat_arr, backend, np.zeros(n, bool), d.always_on, np.zeros(n),
        pool.slot_seconds, (), 0, end, pool.peak_slots, 0,
    )  # fmt: skip


def _keep_warm_pings(config: Serverless, horizon: float) -> int:
    return config.keep_warm * int(horizon // config.keep_warm_interval_s)


def _serverless(a: np.ndarray, p: Policy, lat: Latencies, d: Draws) -> Outcome:
    n = len(a)
    pool = FunctionPool(p.serverless)
    latency = np.full(n, math.nan)
    cold = np.zeros(n, bool)
    advance, submit = pool.advance, pool.submit
    out: list[float] = []
    colds: list[bool] = []
    for t, s, c in zip(a.tolist(), d.serverless.tolist(), d.coldstart.tolist(), strict=True):
        advance(t)
        out.append(submit(t, s, c))
        colds.append(pool.last_cold)
    got = np.asarray(out, dtype=float)
    served = got >= 0
    latency[served] = got[served]
    cold[served] = np.asarray(colds, dtype=bool)[served]
    backend = np.where(served, SERVERLESS, FAILED).astype(np.int8)
    billed = np.where(served, got, 0.0)
    horizon = _horizon(a)
    return Outcome(
        p, a, latency, backend, cold, d.serverless, billed, 0.0, (),
        _keep_warm_pings(p.serverless, horizon), horizon, 0, pool.peak,
    )  # fmt: skip


def _hybrid(a: np.ndarray, p: Policy, lat: Latencies, d: Draws) -> Outcome:
    """Spill-over (docs/routing.md): always-on while its expected wait fits the bound;
    else a warm function; else a cold one unless its expected cold start is longer than
    the always-on wait (then queue); a throttled spill goes back to the always-on queue."""
    n = len(a)
    latency = [math.nan] * n
    pool = _slot_pool(p, lat, latency)
    functions = FunctionPool(p.serverless)
    backend = np.full(n, ALWAYS_ON, np.int8)
    cold = np.zeros(n, bool)
    billed = np.zeros(n)
    bound, half = p.max_queue_wait_s, p.max_queue_wait_s / 2
    expected_cold = lat.coldstart.mean
    prewarm = p.prewarm
    for i, (t, s, fs, c) in enumerate(
        zip(a.tolist(), d.always_on.tolist(), d.serverless.tolist(), d.coldstart.tolist(),
            strict=True)
    ):  # fmt: skip
        pool.advance(t)
        functions.advance(t)
        wait = pool.expected_wait()
        spilled = False
        if wait > bound and (functions.idle or expected_cold <= wait):
            got = functions.submit(t, fs, c)
            if got >= 0:
                spilled = True
                latency[i] = got
                billed[i] = got
                backend[i] = SERVERLESS
                cold[i] = functions.last_cold
        if not spilled and not pool.submit(i, t, s):
            got = functions.submit(t, fs, c)  # the always-on queue is full: last resort
            if got >= 0:
                latency[i], billed[i], backend[i] = got, got, SERVERLESS
                cold[i] = functions.last_cold
            else:
                backend[i] = FAILED
        if prewarm and wait > half:
            functions.prewarm(t, c)
        pool.observe(t, len(functions.busy) if p.autoscale else 0)
    end = pool.finish(_horizon(a))
    lat_arr = np.asarray(latency, dtype=float)
    backend[np.isnan(lat_arr)] = FAILED
    service = np.where(backend == SERVERLESS, d.serverless, d.always_on)
    return Outcome(
        p, a, lat_arr, backend, cold, service, billed, pool.slot_seconds,
        tuple(functions.prewarm_billed_s), _keep_warm_pings(p.serverless, end), end,
        pool.peak_slots, functions.peak,
    )  # fmt: skip

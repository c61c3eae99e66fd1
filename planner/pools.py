"""The two kinds of capacity the policies combine, advanced lazily from arrival to arrival.

Nothing happens between arrivals except slots finishing work, queued requests starting,
and idle capacity being released or reaped, so each pool catches up on those (a heap of
"free at" times) when the next arrival comes: ``advance(t)``. Idle capacity is a deque
sorted by idle-since time; new work takes the most recently idle one (LIFO), so the
oldest idle ones are the ones released, as a real scheduler's reaper would find them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from heapq import heappop, heappush


@dataclass(frozen=True)
class Autoscale:
    """Reactive slots, Spock's VM-only baseline: the desired count is the smoothed demand
    (busy + queued slots, an exponential average over ``window_s`` sampled at arrivals)
    over ``target_utilisation``; a slot asked for is usable after ``provision_delay_s``
    and billed from the ask; a slot idle for ``idle_release_s`` is released unless that
    would leave fewer than ``min_slots`` or than the current desired count."""

    min_slots: int = 1
    max_slots: int = 64
    provision_delay_s: float = 180.0
    idle_release_s: float = 180.0
    target_utilisation: float = 0.8
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_slots <= self.max_slots or self.max_slots < 1:
            raise ValueError("autoscale: need 0 <= min_slots <= max_slots, max_slots >= 1")
        if not 0 < self.target_utilisation <= 1:
            raise ValueError("autoscale: target_utilisation must be in (0, 1]")
        if min(self.provision_delay_s, self.idle_release_s) < 0 or self.window_s <= 0:
            raise ValueError("autoscale: delays must be >= 0 and window_s > 0")


class SlotPool:
    """Always-on slots (one request each), a FIFO queue, optional autoscaling.

    ``latency`` is the run's per-request latency list; the pool writes a queued request's
    latency when the request starts. ``slot_seconds`` accumulates -ask time at each slot
    ask and +release time at each release; :meth:`finish` closes the open ones.
    """

    def __init__(
        self,
        slots: int,
        latency: list[float],
        *,
        mean_service_s: float,
        max_queue: int | None = None,
        autoscale: Autoscale | None = None,
    ) -> None:
        self.latency = latency
        self.mean_service_s = mean_service_s
        self.max_queue = max_queue
        self.scale = autoscale
        self.total = slots
        self.free: list[float] = []  # when each busy or provisioning slot becomes free
        self.idle: deque[float] = deque([0.0] * slots)  # idle since, sorted
        self.queue: deque[tuple[int, float, float]] = deque()  # (index, arrival, service)
        self.provisioning: list[float] = []  # ready times of slots asked for
        self.slot_seconds = 0.0
        self.demand = 0.0  # smoothed busy + queued
        self.desired = slots
        self.last_t = 0.0
        self.peak_slots = slots
        self.released = 0
        self.asked = 0

    def advance(self, t: float) -> None:
        """Catch up to ``t``: completions start queued work or leave slots idle."""
        free, queue, idle = self.free, self.queue, self.idle
        while free and free[0] <= t:
            done = heappop(free)
            if queue:
                i, arrival, service = queue.popleft()
                self.latency[i] = done + service - arrival
                heappush(free, done + service)
            else:
                idle.append(done)
        if self.scale is not None:
            self._release(t)

    def _release(self, t: float) -> None:
        scale = self.scale
        assert scale is not None
        provisioning, idle = self.provisioning, self.idle
        while provisioning and provisioning[0] <= t:
            heappop(provisioning)
        keep = max(scale.min_slots, self.desired)
        after = scale.idle_release_s
        while idle and idle[0] + after <= t and self.total > keep:
            self.slot_seconds += idle.popleft() + after
            self.total -= 1
            self.released += 1

    def expected_wait(self) -> float:
        """The gateway's estimate: 0 with a slot idle, else (q + 1) x service / slots."""
        if self.idle:
            return 0.0
        active = self.total - len(self.provisioning)
        return (len(self.queue) + 1) * self.mean_service_s / max(active, 1)

    def submit(self, i: int, t: float, service: float) -> bool:
        """Start request ``i`` now or queue it; False when the queue is full."""
        if self.idle:
            self.idle.pop()
            self.latency[i] = service
            heappush(self.free, t + service)
            return True
        if self.max_queue is not None and len(self.queue) >= self.max_queue:
            return False
        self.queue.append((i, t, service))
        return True

    def observe(self, t: float, extra_demand: int = 0) -> None:
        """Autoscaling: sample demand at an arrival, ask for slots the average calls for."""
        scale = self.scale
        if scale is None:
            return
        busy = self.total - len(self.idle) - len(self.provisioning)
        weight = math.exp(-(t - self.last_t) / scale.window_s)
        self.last_t = t
        self.demand = self.demand * weight + (busy + len(self.queue) + extra_demand) * (
            1.0 - weight
        )
        want = math.ceil(self.demand / scale.target_utilisation - 1e-9)
        self.desired = min(scale.max_slots, max(scale.min_slots, want))
        while self.total < self.desired:
            ready = t + scale.provision_delay_s
            heappush(self.provisioning, ready)
            heappush(self.free, ready)
            self.slot_seconds -= t
            self.total += 1
            self.asked += 1
        self.peak_slots = max(self.peak_slots, self.total)

    def finish(self, horizon: float) -> float:
        """Serve what is queued, close the billing at ``horizon`` (or the last completion)
        and return the end of billing."""
        free, queue, idle = self.free, self.queue, self.idle
        end = horizon
        while free:
            done = heappop(free)
            end = max(end, done)
            if queue:
                i, arrival, service = queue.popleft()
                self.latency[i] = done + service - arrival
                heappush(free, done + service)
            else:
                idle.append(done)
        if self.scale is not None:
            self.desired = self.scale.min_slots
            self._release(end)
        self.slot_seconds += self.total * end
        return end


@dataclass(frozen=True)
class Serverless:
    """Function instances of concurrency 1: a request without a warm idle instance starts
    one (a cold start) unless ``concurrency_limit`` are running (then it is throttled);
    an instance idle ``idle_timeout_s`` is reaped, except the ``keep_warm`` last ones,
    which a ping every ``keep_warm_interval_s`` keeps warm (each ping billed ``ping_s``)."""

    concurrency_limit: int = 1000
    idle_timeout_s: float = 600.0
    keep_warm: int = 0
    keep_warm_interval_s: float = 300.0
    ping_s: float = 0.001

    def __post_init__(self) -> None:
        if self.concurrency_limit < 1 or self.keep_warm < 0:
            raise ValueError("serverless: concurrency_limit >= 1 and keep_warm >= 0")
        if self.keep_warm > self.concurrency_limit:
            raise ValueError("serverless: keep_warm exceeds the concurrency limit")
        if self.idle_timeout_s < 0 or self.keep_warm_interval_s <= 0 or self.ping_s < 0:
            raise ValueError("serverless: idle_timeout_s >= 0, keep_warm_interval_s > 0")


class FunctionPool:
    """Serverless instances: busy until a time, or idle since a time."""

    def __init__(self, config: Serverless) -> None:
        self.config = config
        self.busy: list[float] = []  # when each busy (or warming) instance becomes idle
        self.idle: deque[float] = deque([0.0] * config.keep_warm)
        self.warming: list[float] = []  # ready times of pre-warmed instances
        self.prewarm_billed_s: list[float] = []
        self.peak = config.keep_warm
        self.last_cold = False  # whether the last submit started an instance

    def advance(self, t: float) -> None:
        busy, idle = self.busy, self.idle
        while busy and busy[0] <= t:
            idle.append(heappop(busy))
        warming = self.warming
        while warming and warming[0] <= t:
            heappop(warming)
        timeout, keep = self.config.idle_timeout_s, self.config.keep_warm
        while idle and idle[0] + timeout <= t and len(idle) + len(busy) > keep:
            idle.popleft()

    def submit(self, t: float, service: float, coldstart: float) -> float:
        """Start a request: its latency (cold start included), or -1.0 if throttled."""
        if self.idle:
            self.idle.pop()
            heappush(self.busy, t + service)
            self.last_cold = False
            return service
        if len(self.busy) >= self.config.concurrency_limit:
            return -1.0
        self.last_cold = True
        heappush(self.busy, t + coldstart + service)
        self.peak = max(self.peak, len(self.busy) + len(self.idle))
        return coldstart + service

    def prewarm(self, t: float, coldstart: float) -> None:
        """Warm one more instance unless one is idle or already warming."""
        if self.idle or self.warming:
            return
        if len(self.busy) + len(self.idle) >= self.config.concurrency_limit:
            return
        heappush(self.busy, t + coldstart)
        heappush(self.warming, t + coldstart)
        self.prewarm_billed_s.append(coldstart + self.config.ping_s)
        self.peak = max(self.peak, len(self.busy) + len(self.idle))

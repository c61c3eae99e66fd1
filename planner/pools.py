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
    """Reactive slots, Spock's VM-only baseline, by the gateway's own rule
    (``gateway/core/autoscale.py``): every ``interval_s`` the peak demand since the last
    step (busy + queued slots, each arrival counted) wants ``ceil(peak /
    target_utilisation)`` slots (``min_slots``..``max_slots``); slots short of ready +
    ordered are ordered, usable after ``provision_delay_s`` and billed from the order;
    ready slots above the most any step wanted within ``idle_release_s`` are released (an
    idle one at once, a busy one when it finishes)."""

    min_slots: int = 1
    max_slots: int = 64
    provision_delay_s: float = 180.0
    idle_release_s: float = 180.0
    target_utilisation: float = 1.0
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_slots <= self.max_slots or self.max_slots < 1:
            raise ValueError("autoscale: need 0 <= min_slots <= max_slots, max_slots >= 1")
        if not 0 < self.target_utilisation <= 1:
            raise ValueError("autoscale: target_utilisation must be in (0, 1]")
        if min(self.provision_delay_s, self.idle_release_s) < 0 or self.interval_s <= 0:
            raise ValueError("autoscale: delays must be >= 0 and interval_s > 0")


class SlotPool:
    """Always-on slots (one request each), a FIFO queue (a request that would wait more
    than ``queue_timeout_s`` fails, as the gateway's admission gives up on it), optional
    autoscaling.

    ``latency`` is the run's per-request latency list; the pool writes a queued request's
    latency when the request starts (NaN stays: it failed). ``slot_seconds`` accumulates
    -order time at each slot order and +release time at each release; :meth:`finish`
    closes the open ones.
    """

    def __init__(
        self,
        slots: int,
        latency: list[float],
        *,
        mean_service_s: float,
        max_queue: int | None = None,
        queue_timeout_s: float | None = None,
        autoscale: Autoscale | None = None,
    ) -> None:
        self.latency = latency
        self.mean_service_s = mean_service_s
        self.max_queue = max_queue
        self.queue_timeout_s = math.inf if queue_timeout_s is None else queue_timeout_s
        self.scale = autoscale
        self.total = slots  # ready + ordered
        self.free: list[float] = []  # when each busy or provisioning slot becomes free
        self.idle: deque[float] = deque([0.0] * slots)  # idle since, sorted
        self.queue: deque[tuple[int, float, float]] = deque()  # (index, arrival, service)
        self.provisioning: list[float] = []  # ready times of slots ordered
        self.slot_seconds = 0.0
        self.peak_demand = 0  # since the last step
        self.next_step = autoscale.interval_s if autoscale else math.inf
        self.wanted: deque[tuple[float, int]] = deque()  # (step time, slots wanted)
        self.to_release = 0  # busy slots to release when they finish
        self.peak_slots = slots
        self.released = 0
        self.asked = 0

    def advance(self, t: float) -> None:
        """Catch up to ``t``: completions (start queued work, free a slot or release it)
        and the autoscaler's steps, in time order."""
        free = self.free
        while True:
            done = free[0] if free else math.inf
            step = self.next_step
            if done <= step and done <= t:
                self._complete(heappop(free))
            elif step <= t:
                self._step(step)
                self.next_step = step + self.scale.interval_s  # type: ignore[union-attr]
            else:
                return

    def _complete(self, done: float) -> None:
        provisioning = self.provisioning
        while provisioning and provisioning[0] <= done:
            heappop(provisioning)
        queue, timeout = self.queue, self.queue_timeout_s
        while queue:
            i, arrival, service = queue.popleft()
            if done - arrival > timeout:
                continue  # gave up waiting: failed (latency stays NaN)
            self.latency[i] = done + service - arrival
            heappush(self.free, done + service)
            return
        if self.to_release:
            self.to_release -= 1
            self._release_one(done)
        else:
            self.idle.append(done)

    def _release_one(self, t: float) -> None:
        self.slot_seconds += t
        self.total -= 1
        self.released += 1

    def _step(self, t: float) -> None:
        scale = self.scale
        assert scale is not None
        demand = self.busy + len(self.queue)
        peak, self.peak_demand = max(self.peak_demand, demand), demand
        want = math.ceil(peak / scale.target_utilisation - 1e-9)
        wanted = min(scale.max_slots, max(scale.min_slots, want))
        while self.total < wanted:
            ready = t + scale.provision_delay_s
            heappush(self.provisioning, ready)
            heappush(self.free, ready)
            self.slot_seconds -= t
            self.total += 1
            self.asked += 1
        self.peak_slots = max(self.peak_slots, self.total)
        history = self.wanted
        history.append((t, wanted))
        while history[0][0] < t - scale.idle_release_s:
            history.popleft()
        needed = max(max(w for _, w in history), scale.min_slots)
        excess = self.total - len(self.provisioning) - self.to_release - needed
        idle = self.idle
        while excess > 0 and idle:
            idle.popleft()  # the longest idle first
            self._release_one(t)
            excess -= 1
        self.to_release += max(excess, 0)

    @property
    def busy(self) -> int:
        """Slots serving a request now (ordered ones not counted)."""
        return self.total - len(self.idle) - len(self.provisioning)

    def expected_wait(self) -> float:
        """The gateway's estimate: 0 with a slot idle, else (q + 1) x service / slots."""
        if self.idle:
            return 0.0
        active = self.total - len(self.provisioning) - self.to_release
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
        """Autoscaling: the demand after an arrival, for the next step's peak."""
        if self.scale is not None:
            demand = self.busy + len(self.queue) + extra_demand
            if demand > self.peak_demand:
                self.peak_demand = demand

    def finish(self, horizon: float) -> float:
        """Serve what is queued (no more steps), close the billing at ``horizon`` (or the
        last completion) and return the end of billing."""
        self.next_step = math.inf
        end = horizon
        while self.free:
            done = heappop(self.free)
            end = max(end, done)
            self._complete(done)
        self.slot_seconds += self.total * end
        return end


@dataclass(frozen=True)
class Serverless:
    """Function instances of concurrency 1: a request without a warm idle instance starts
    one (a cold start) unless ``concurrency_limit`` are running (then it is throttled);
    an instance idle ``idle_timeout_s`` is reaped, except the ``keep_warm`` last ones,
    which a ping every ``keep_warm_interval_s`` keeps warm (each ping billed ``ping_s``).
    ``invoke_overhead_s`` of each request's service time is the invoke's round trip,
    which the platform does not bill."""

    concurrency_limit: int = 1000
    idle_timeout_s: float = 600.0
    keep_warm: int = 0
    keep_warm_interval_s: float = 300.0
    ping_s: float = 0.001
    invoke_overhead_s: float = 0.0

    def __post_init__(self) -> None:
        if self.concurrency_limit < 1 or self.keep_warm < 0:
            raise ValueError("serverless: concurrency_limit >= 1 and keep_warm >= 0")
        if self.keep_warm > self.concurrency_limit:
            raise ValueError("serverless: keep_warm exceeds the concurrency limit")
        if self.idle_timeout_s < 0 or self.keep_warm_interval_s <= 0 or self.ping_s < 0:
            raise ValueError("serverless: idle_timeout_s >= 0, keep_warm_interval_s > 0")
        if self.invoke_overhead_s < 0:
            raise ValueError("serverless: invoke_overhead_s >= 0")


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

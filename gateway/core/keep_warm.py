"""Keep-warm for serverless backends: pings at the times a policy says, within a budget.

``keep_warm: {mode, interval_s, max_cost_per_hour}`` on a serverless backend:

- ``off``: no pings (``prewarm()`` still works: spill-over asks for it);
- ``fixed``: a ping whenever ``interval_s`` passed without a call or a ping, from start;
- ``adaptive``: the hybrid-histogram policy of Shahrad et al. (ATC'20,
  ``warmth.IdleTimeHistogram``): after each call, an instance is kept warm from the
  idle-time histogram's 5th percentile to its 99th, pinged every ``interval_s`` inside
  that window (sooner when answers showed the platform reaps sooner), the first ping
  early by a cold start's length so the instance is warm when the window opens.

``interval_s`` must be shorter than the platform's own idle-to-cold time (Lambda
keeps an idle instance for minutes; the local stand-ins for their ``idle_timeout_s``).
Every ping is priced (``PingPricer``) and the spend in any hour stays within
``max_cost_per_hour``: scheduled pings are spaced so the cap spreads over the hour,
and a ping that would exceed it is skipped. Pings, skips and their cost are counted
(``KeepWarmCollector``). docs/keep_warm.md explains the modes and the adaptations.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from infergw.gateway.core.backend import Backend
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.routing.config import KeepWarmConfig
from infergw.gateway.core.routing.config import KeepWarmMode as Mode
from infergw.gateway.core.warmth import IdleTimeHistogram, Observation, WarmthEstimator, Window
from infergw.gateway.lifecycle import AsyncService
from infergw.vocab.datatypes import element_count, element_size, serialize_bytes
from infergw.vocab.errors import InferGWError
from infergw.vocab.prices import Rate
from infergw.vocab.types import InferRequest, ModelMetadata, Tensor

log = logging.getLogger(__name__)

HOUR_S = 3600.0
PREWARM_BACKOFF_S = 5.0  # after a failed pre-warm ping, the next waits this long
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Ping = Callable[[], Awaitable[Observation]]  # one tiny real inference; raises on failure


# Prices --------------------------------------------------------------------------------


class PingPricer(Protocol):
    """What a ping costs in USD: an estimate before it is sent, the bill after."""

    def estimate_usd(self) -> float: ...

    def cost_usd(self, answer: Observation | None) -> float:
        """The cost of a ping that answered (``None``: it failed; priced as estimated)."""
        ...


@dataclass(frozen=True, slots=True)
class FlatPingPrice:
    """Every ping costs the same."""

    usd: float

    def estimate_usd(self) -> float:
        return self.usd

    def cost_usd(self, answer: Observation | None) -> float:
        return self.usd


@dataclass(frozen=True, slots=True)
class DurationPingPrice:
    """Billed duration x a per-second rate, plus a per-request charge: the serverless
    formulas of loadgen/cost.py, per ping. Lambda: ``usd_per_second`` = memory in GB x
    the GB-second price; Cloud Run: vCPU and GiB-second prices, 100 ms granularity.
    The assembly layer derives these from loadgen/prices.json (core cannot import it).
    """

    usd_per_second: float
    usd_per_request: float
    granularity_ms: float = 1.0
    bills_coldstart: bool = True
    typical_ms: float = 10.0  # the estimate before any ping answered

    def estimate_usd(self) -> float:
        return self._price(self.typical_ms)

    @classmethod
    def of(cls, rate: Rate) -> DurationPingPrice:
        """A ping priced as the price list prices a request (``vocab.prices``)."""
        return cls(
            rate.usd_per_second, rate.usd_per_request, rate.granularity_ms, rate.bills_coldstart
        )

    def cost_usd(self, answer: Observation | None) -> float:
        if answer is None:
            return self.estimate_usd()
        billed = answer.compute_s if answer.compute_s is not None else answer.warm_s
        ms = (billed or 0.0) * 1000.0
        if self.bills_coldstart and answer.cold:
            ms += (answer.coldstart_s or 0.0) * 1000.0
        return self._price(ms)

    def _price(self, ms: float) -> float:
        billed_ms = max(math.ceil(ms / self.granularity_ms - 1e-9), 1) * self.granularity_ms
        return billed_ms / 1000.0 * self.usd_per_second + self.usd_per_request


@dataclass(slots=True)
class Spend:
    """One ping's charge in the budget: reserved at send, settled to the bill after."""

    at: float
    usd: float


class CostBudget:
    """USD spent in the trailing hour, held under a cap (None: no cap)."""

    def __init__(self, max_per_hour: float | None) -> None:
        self.max_per_hour = max_per_hour
        self._spent: deque[Spend] = deque()

    def spent(self, now: float) -> float:
        while self._spent and self._spent[0].at <= now - HOUR_S:
            self._spent.popleft()
        return sum(s.usd for s in self._spent)

    def allows(self, now: float, usd: float) -> bool:
        return self.max_per_hour is None or self.spent(now) + usd <= self.max_per_hour + 1e-12

    def reserve(self, now: float, usd: float) -> Spend:
        """Count ``usd`` now; the caller corrects it to the bill (``settle``) later."""
        spend = Spend(now, usd)
        self._spent.append(spend)
        return spend

    @staticmethod
    def settle(spend: Spend, usd: float) -> None:
        spend.usd = usd

    def spacing_s(self, usd: float) -> float:
        """The gap between pings of ``usd`` that spreads the cap evenly over an hour."""
        return 0.0 if self.max_per_hour is None else HOUR_S * usd / self.max_per_hour


# Schedules ----------------------------------------------------------------------------


class Schedule(Protocol):
    """Which window, after the last call, needs a warm instance (None: none now)."""

    needs_call: bool  # False: pings start with the runner, before any call
    learns_refresh: bool  # True: ping sooner when answers show the platform reaps sooner

    def window(self) -> Window | None: ...


class _Off:
    needs_call, learns_refresh = True, False

    def window(self) -> Window | None:
        return None


class _Fixed:
    needs_call, learns_refresh = False, False

    def window(self) -> Window | None:
        return Window(0.0, math.inf, "fixed keep-alive")


class _Adaptive:
    needs_call, learns_refresh = True, True

    def __init__(self, histogram: IdleTimeHistogram) -> None:
        self.histogram = histogram

    def window(self) -> Window | None:
        return self.histogram.window()


def _schedule(mode: Mode, histogram: IdleTimeHistogram) -> Schedule:
    schedules: dict[Mode, Callable[[], Schedule]] = {
        "off": _Off,
        "fixed": _Fixed,
        "adaptive": lambda: _Adaptive(histogram),
    }
    return schedules[mode]()


# Counters -----------------------------------------------------------------------------

Reason = Literal["keep_warm", "prewarm"]
Outcome = Literal["warm", "cold", "error"]


@dataclass(frozen=True, slots=True)
class KeepWarmStats:
    """Counts since start: pings by (reason, outcome), skipped ones by reason, USD spent."""

    pings: Mapping[tuple[Reason, Outcome], int]
    skipped: Mapping[Reason, int]
    cost_usd: float


# The runner ---------------------------------------------------------------------------


class KeepWarm(AsyncService):
    """One backend's keep-warm: an asyncio task pinging when the schedule says.

    Feed every real answer to ``observe`` (it also feeds ``estimator``, so the
    spill-over policy and this runner share one view of the backend). ``start`` and
    ``stop`` (or ``async with``) bracket the task; ``stop`` cancels it and any pre-warm
    pings in flight. ``clock`` and ``sleep`` are injectable: the tests drive them by hand.
    """

    def __init__(
        self,
        backend: str,
        config: KeepWarmConfig,
        ping: Ping,
        *,
        estimator: WarmthEstimator | None = None,
        pricer: PingPricer = FlatPingPrice(0.0),
        histogram: IdleTimeHistogram | None = None,
        max_prewarm: int = 8,
        refresh_safety: float = 0.8,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.backend = backend
        self.config = config
        self.estimator = estimator or WarmthEstimator()
        self.histogram = histogram or IdleTimeHistogram(bin_s=config.bin_s, bins=config.bins)
        self._ping_fn = ping
        self._pricer = pricer
        self._budget = CostBudget(config.max_cost_per_hour)
        self._schedule = _schedule(config.mode, self.histogram)
        self._max_prewarm = max_prewarm
        self._refresh_safety = refresh_safety
        self._clock, self._sleep = clock, sleep
        self._wake = asyncio.Event()
        self._waiting_for_change = False  # no ping due: only a call can change that
        self._task: asyncio.Task[None] | None = None
        self._prewarming: set[asyncio.Task[None]] = set()
        self._prewarm_after = -math.inf  # a failed pre-warm holds the next one back
        self._started_at: float | None = None
        self._last_attempt: float | None = None  # last scheduled ping, sent or skipped
        self._last_sent: float | None = None
        self._recent_costs: deque[float] = deque(maxlen=8)
        self._pings: dict[tuple[Reason, Outcome], int] = {}
        self._skipped: dict[Reason, int] = {}
        self._cost_usd = 0.0

    # Feeding ------------------------------------------------------------------------

    def observe(self, answer: Observation) -> None:
        """A real request's answer: learn from it and reconsider the next ping.

        The runner is woken only when the answer can bring the next ping forward (an
        idle gap ended, the histogram changed, or no ping was due at all): under steady
        traffic a call only pushes the next ping later, and a timer that fires early
        just waits again.
        """
        before, samples = self.estimator.last_activity, self.histogram.samples
        self.estimator.observe(answer)
        self.histogram.record_call(answer.started, answer.at)
        idle_ended = before is None or answer.started - before >= self.estimator.min_idle_s
        if idle_ended or self._waiting_for_change or self.histogram.samples != samples:
            self._wake.set()

    # Lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Start pinging (a no-op when running; with mode off only ``prewarm`` pings)."""
        if self._task is not None:
            return
        self._started_at = self._clock()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"keep-warm {self.backend}"
        )
        self._task.add_done_callback(self._report_crash)

    def _report_crash(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("keep-warm for %s stopped: %r", self.backend, task.exception())

    async def stop(self) -> None:
        """Cancel the task and the pre-warm pings in flight; wait until they ended."""
        tasks = [t for t in (self._task, *self._prewarming) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._prewarming.clear()

    # Spill-over's hook --------------------------------------------------------------

    def prewarm(self, instances: int = 1) -> int:
        """Warm up to ``instances`` instances now, in the background; the pings started.

        For spill-over, when the primary's queue grows and this backend is probably
        cold: pings go out only for instances not already warm or warming, at most
        ``max_prewarm`` at once, each within the cost cap.
        """
        if self._task is None:
            return 0
        now = self._clock()
        if now < self._prewarm_after:
            return 0  # the last pre-warm failed: not a ping per request while it is down
        warm = 0 if self.estimator.probably_cold(now) else self.estimator.warm_instances(now)
        wanted = min(instances, self._max_prewarm) - warm - len(self._prewarming)
        started = 0
        for _ in range(max(wanted, 0)):
            task = asyncio.get_running_loop().create_task(self._ping("prewarm"))
            self._prewarming.add(task)
            task.add_done_callback(self._prewarming.discard)
            started += 1
        return started

    # The schedule -------------------------------------------------------------------

    def next_ping_at(self, now: float) -> float | None:
        """When the next scheduled ping is due (None: none until something changes)."""
        window = self._schedule.window()
        if window is None:
            return None
        anchor = self.histogram.last_call_end
        if anchor is None:
            if self._schedule.needs_call or self._started_at is None:
                return None
            anchor = self._started_at
        opens = anchor + max(window.prewarm_s - self.estimator.coldstart_s(), 0.0)
        closes = anchor + window.keep_alive_s
        seen = [t for t in (self.estimator.last_activity, self._last_attempt) if t is not None]
        due = max(max(seen) + self._refresh_s(), opens) if seen else opens
        if self._last_sent is not None:
            due = max(due, self._last_sent + self._budget.spacing_s(self._expected_usd()))
        return due if due <= closes else None

    def _refresh_s(self) -> float:
        """``interval_s``, shortened (adaptive only) when answers showed the platform
        reaps idle instances sooner than that."""
        interval = self.config.interval_s
        if self._schedule.learns_refresh:
            warm_after, cold_after = self.estimator.idle_bounds()
            if cold_after is not None and cold_after < interval:
                floor = warm_after or self.estimator.min_idle_s
                return max(cold_after * self._refresh_safety, floor)
        return interval

    def _expected_usd(self) -> float:
        costs = self._recent_costs
        return sum(costs) / len(costs) if costs else self._pricer.estimate_usd()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            due = self.next_ping_at(now)
            if due is not None and due <= now:
                self._last_attempt = now
                await self._ping("keep_warm")
                continue
            self._waiting_for_change = due is None
            await self._wait(None if due is None else due - now)

    async def _wait(self, delay_s: float | None) -> None:
        """Until ``delay_s`` passed or ``observe`` (or a new call) woke the runner."""
        waits = {asyncio.ensure_future(self._woken())}
        if delay_s is not None:
            waits.add(asyncio.ensure_future(self._sleep(delay_s)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _woken(self) -> None:
        await self._wake.wait()

    async def _ping(self, reason: Reason) -> None:
        now = self._clock()
        expected = self._expected_usd()
        if not self._budget.allows(now, expected):
            self._skipped[reason] = self._skipped.get(reason, 0) + 1
            return
        spend = self._budget.reserve(now, expected)
        self._last_sent = now
        try:
            answer = await self._ping_fn()
        except Exception as exc:  # a background loop: count it, keep pinging later
            # The tree's messages are written for clients; anything else only by its type.
            said = exc.message if isinstance(exc, InferGWError) else type(exc).__name__
            log.warning("keep-warm ping to %s failed: %s", self.backend, said)
            self._count(reason, "error", spend, self._pricer.cost_usd(None))
            if reason == "prewarm":
                self._prewarm_after = self._clock() + PREWARM_BACKOFF_S
            return
        self.estimator.observe(answer)
        self._count(reason, "cold" if answer.cold else "warm", spend, self._pricer.cost_usd(answer))

    def _count(self, reason: Reason, outcome: Outcome, spend: Spend, usd: float) -> None:
        self._budget.settle(spend, usd)
        self._recent_costs.append(usd)
        self._cost_usd += usd
        self._pings[(reason, outcome)] = self._pings.get((reason, outcome), 0) + 1

    def stats(self) -> KeepWarmStats:
        return KeepWarmStats(dict(self._pings), dict(self._skipped), self._cost_usd)


class KeepWarmSet(AsyncService):
    """Every serverless backend's keep-warm, by backend name: what the gateway starts
    and stops, what spill-over calls to pre-warm (``routing.spillover.Prewarm``), and
    what its counters are collected from."""

    def __init__(self, runners: Mapping[str, KeepWarm]) -> None:
        self.runners = dict(runners)

    def estimators(self) -> dict[str, WarmthEstimator]:
        """Each backend's warm-state estimate (a routing ``LatencyEstimate``)."""
        return {name: runner.estimator for name, runner in self.runners.items()}

    def observe(self, backend: str, answer: Observation) -> None:
        """A real answer of ``backend`` (ignored for backends without keep-warm)."""
        runner = self.runners.get(backend)
        if runner is not None:
            runner.observe(answer)

    def prewarm(self, backend: str, instances: int = 1) -> None:
        """Warm ``backend`` now, in the background (a no-op when warm or warming)."""
        runner = self.runners.get(backend)
        if runner is not None:
            runner.prewarm(instances)

    async def start(self) -> None:
        for runner in self.runners.values():
            await runner.start()

    async def stop(self) -> None:
        await asyncio.gather(*(runner.stop() for runner in self.runners.values()))

    def collector(self) -> KeepWarmCollector:
        return KeepWarmCollector(self.runners)


def tiny_request(metadata: ModelMetadata) -> InferRequest:
    """The smallest request ``metadata`` allows: every variable dimension 1, numbers 0,
    strings ``b"warm"``. A ping is a real inference, so it warms what a request needs."""
    inputs = []
    for spec in metadata.inputs:
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        count = element_count(shape, f"input {spec.name!r}")
        size = element_size(spec.datatype)
        data = serialize_bytes([b"warm"] * count) if size is None else bytes(size * count)
        inputs.append(Tensor(spec.name, spec.datatype, shape, data))
    return InferRequest(model=metadata.name, inputs=tuple(inputs), id="infergw-keep-warm")


def backend_ping(
    backend: Backend,
    model: str,
    *,
    timeout_s: float = 30.0,
    clock: Clock = time.monotonic,
) -> Ping:
    """A ``Ping`` that sends ``model``'s ``tiny_request`` straight to ``backend``.

    It bypasses admission and retries: one request every few minutes, or a few to
    pre-warm. The request is made from the model's metadata at the first ping (asked
    again after a failure). Its answer is observed like any other (cold when it paid a
    cold start).
    """
    made: list[InferRequest] = []

    async def ping() -> Observation:
        ctx = RequestContext(protocol="keep_warm")
        ctx.with_timeout(timeout_s)
        t0 = time.perf_counter()
        async with asyncio.timeout(timeout_s):  # also for backends without native deadlines
            if not made:
                made.append(tiny_request(await backend.model_metadata(model)))
            await backend.infer(made[0], ctx)
        ctx.timings.add_since("backend", t0, f"backend={backend.name}")
        return Observation.from_entries(clock(), ctx.timings.entries, backend.name)

    return ping


class KeepWarmCollector(Collector):
    """``infergw_keep_warm_pings_total{backend, reason, outcome}``,
    ``infergw_keep_warm_skipped_total{backend, reason}`` (over the cost cap) and
    ``infergw_keep_warm_cost_usd_total{backend}``. Register it on the gateway's registry."""

    def __init__(self, runners: Mapping[str, KeepWarm]) -> None:
        self._runners = runners

    def collect(self) -> Iterator[Metric]:
        pings = CounterMetricFamily(
            "infergw_keep_warm_pings",
            "Keep-warm and pre-warm pings by outcome (cold: the ping paid a cold start)",
            labels=("backend", "reason", "outcome"),
        )
        skipped = CounterMetricFamily(
            "infergw_keep_warm_skipped",
            "Pings not sent because they would exceed max_cost_per_hour",
            labels=("backend", "reason"),
        )
        cost = CounterMetricFamily(
            "infergw_keep_warm_cost_usd",
            "What keep-warm and pre-warm pings cost (USD, from the price model)",
            labels=("backend",),
        )
        for name, runner in self._runners.items():
            stats = runner.stats()
            for (reason, outcome), count in sorted(stats.pings.items()):
                pings.add_metric([name, reason, outcome], count)
            for reason, count in sorted(stats.skipped.items()):
                skipped.add_metric([name, reason], count)
            cost.add_metric([name], stats.cost_usd)
        yield pings
        yield skipped
        yield cost

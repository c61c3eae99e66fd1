"""Keep-warm: config, fixed and adaptive schedules, the cost cap, pre-warm, clean stop.

A fake clock drives the runner: its ``sleep`` waits on futures that ``advance`` resolves
in time order, so an hour of schedule runs in milliseconds and no test sleeps.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.keep_warm import (
    CostBudget,
    DurationPingPrice,
    FlatPingPrice,
    KeepWarm,
    KeepWarmCollector,
    KeepWarmConfig,
    KeepWarmSet,
    backend_ping,
    tiny_request,
)
from infergw.gateway.core.warmth import IdleTimeHistogram, Observation, WarmthEstimator
from infergw.vocab.datatypes import serialize_bytes
from infergw.vocab.errors import ModelNotFound, Throttled
from infergw.vocab.prices import PriceError, packaged_prices, serverless_rate
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec
from tests.fakes import EchoBackend

T0 = 50_000.0


class FakeClock:
    """``now`` by hand; ``sleep`` returns when ``advance`` passes its deadline."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(delay, 0.0), next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        target = self.now + seconds
        await settle()
        while self._timers and self._timers[0][0] <= target:
            at, _, future = heapq.heappop(self._timers)
            if future.done():  # cancelled: the runner was woken otherwise
                continue
            self.now = max(self.now, at)
            future.set_result(None)
            await settle()
        self.now = target
        await settle()


async def settle() -> None:
    """Let every ready callback run (zero-length yields, not a timed wait)."""
    for _ in range(50):
        await asyncio.sleep(0)


class FakePing:
    """Records when it was called; answers warm (or as scripted), or holds until released."""

    def __init__(self, clock: FakeClock, *outcomes: str, hold: bool = False) -> None:
        self.clock = clock
        self.outcomes = list(outcomes)
        self.times: list[float] = []
        self.release = asyncio.Event()
        self.hold = hold
        self.cancelled = 0

    async def __call__(self) -> Observation:
        self.times.append(self.clock.now)
        if self.hold:
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        outcome = self.outcomes.pop(0) if self.outcomes else "warm"
        if outcome == "fail":
            raise Throttled("rate exceeded")
        is_cold = outcome == "cold"
        return Observation(
            self.clock.now, cold=is_cold, coldstart_s=1.0 if is_cold else None, backend_s=0.0
        )

    def since(self, start: float) -> list[float]:
        return [round(t - start, 6) for t in self.times]


def runner(clock: FakeClock, ping: FakePing, **config: object) -> KeepWarm:
    kwargs = {k: v for k, v in config.items() if k in ("pricer", "histogram", "estimator")}
    settings = {k: v for k, v in config.items() if k not in kwargs}
    return KeepWarm(
        "lambda",
        KeepWarmConfig.model_validate(settings),
        ping,
        clock=clock,
        sleep=clock.sleep,
        **kwargs,  # type: ignore[arg-type]
    )


def call(at: float) -> Observation:
    return Observation(at, cold=False, backend_s=0.0)


# Config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, KeepWarmConfig(mode="off", interval_s=240.0, max_cost_per_hour=None)),
        ({"mode": False}, KeepWarmConfig(mode="off")),  # YAML's reading of a bare `off`
        (
            {"mode": "fixed", "interval_s": 60, "max_cost_per_hour": 0.5},
            KeepWarmConfig(mode="fixed", interval_s=60.0, max_cost_per_hour=0.5),
        ),
        (
            {"mode": "adaptive", "bin_s": 1, "bins": 600},
            KeepWarmConfig(mode="adaptive", bin_s=1.0, bins=600),
        ),
    ],
)
def test_config_accepts(raw: dict[str, object], expected: KeepWarmConfig) -> None:
    assert KeepWarmConfig.model_validate(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        {"mode": "sometimes"},
        {"mode": True},  # YAML `on`: not a mode
        {"interval_s": "60"},  # strict: a string is not a number
        {"interval_s": 0},
        {"max_cost_per_hour": -1},
        {"bins": 1},
        {"interval": 60},  # unknown key
    ],
)
def test_config_refuses(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        KeepWarmConfig.model_validate(raw)


def test_config_is_frozen_and_yaml_off_reads_as_the_mode() -> None:
    config = KeepWarmConfig.model_validate(parse_yaml("mode: off"))
    assert config.mode == "off"
    with pytest.raises(ValidationError):
        config.interval_s = 1.0  # type: ignore[misc]


def parse_yaml(text: str) -> object:
    return yaml.safe_load(text)


# Prices and budget ----------------------------------------------------------------------


def test_duration_price_bills_like_lambda() -> None:
    # 3008 MB at $0.0000166667 per GB-s, $0.20 per million requests (vocab/prices.json).
    price = DurationPingPrice(usd_per_second=3008 / 1024 * 0.0000166667, usd_per_request=0.2e-6)
    warm = Observation(0.0, cold=False, compute_s=0.0123, backend_s=0.02)
    cold = Observation(0.0, cold=True, coldstart_s=1.5, compute_s=0.0123, backend_s=1.6)
    assert price.cost_usd(warm) == pytest.approx(0.013 * 3008 / 1024 * 0.0000166667 + 0.2e-6)
    assert price.cost_usd(cold) == pytest.approx(1.513 * 3008 / 1024 * 0.0000166667 + 0.2e-6)
    cloudrun = DurationPingPrice(usd_per_second=0.001, usd_per_request=0.0, granularity_ms=100)
    assert cloudrun.cost_usd(warm) == pytest.approx(0.1 * 0.001)
    assert cloudrun.cost_usd(None) == cloudrun.estimate_usd()


def test_budget_is_a_trailing_hour() -> None:
    budget = CostBudget(max_per_hour=1.0)
    spend = budget.reserve(T0, 0.4)
    budget.settle(spend, 0.6)
    assert budget.allows(T0 + 1, 0.4) and not budget.allows(T0 + 1, 0.5)
    assert budget.allows(T0 + 3600, 1.0)  # the first charge left the window
    assert budget.spacing_s(0.25) == 900.0
    assert CostBudget(None).allows(T0, 1e9) and CostBudget(None).spacing_s(1.0) == 0.0


# Fixed -------------------------------------------------------------------------------------


async def test_fixed_pings_at_start_then_every_interval_without_calls() -> None:
    clock = FakeClock()
    ping = FakePing(clock)
    keep = runner(clock, ping, mode="fixed", interval_s=60)
    await keep.start()
    try:
        await clock.advance(200)
        assert ping.since(T0) == [0, 60, 120, 180]
    finally:
        await keep.stop()
    assert keep.stats().pings == {("keep_warm", "warm"): 4}


async def test_fixed_counts_a_real_call_as_activity() -> None:
    clock = FakeClock()
    ping = FakePing(clock)
    keep = runner(clock, ping, mode="fixed", interval_s=60)
    await keep.start()
    try:
        await clock.advance(90)  # pings at 0 and 60
        keep.observe(call(clock.now))  # a call at 90: the next ping moves to 150
        await clock.advance(100)
        assert ping.since(T0) == [0, 60, 150]
    finally:
        await keep.stop()


async def test_mode_off_never_pings_on_its_own() -> None:
    clock = FakeClock()
    ping = FakePing(clock)
    keep = runner(clock, ping)
    await keep.start()
    try:
        keep.observe(call(clock.now))
        await clock.advance(10_000)
        assert ping.times == []
        assert keep.next_ping_at(clock.now) is None
    finally:
        await keep.stop()


# The cost cap -------------------------------------------------------------------------------


async def test_the_cap_spaces_scheduled_pings_over_the_hour() -> None:
    clock = FakeClock()
    ping = FakePing(clock)
    keep = runner(
        clock, ping, mode="fixed", interval_s=60, max_cost_per_hour=0.03, pricer=FlatPingPrice(0.01)
    )
    await keep.start()
    try:
        await clock.advance(3599)
        assert ping.since(T0) == [0, 1200, 2400]  # 3 x $0.01 fit in $0.03 an hour
        await clock.advance(1)
        assert ping.since(T0) == [0, 1200, 2400, 3600]
    finally:
        await keep.stop()
    assert keep.stats().cost_usd == pytest.approx(0.04)


class Underestimated:
    """Estimates a cent, bills a dollar: the measured cost must stop the pings."""

    def estimate_usd(self) -> float:
        return 0.01

    def cost_usd(self, answer: Observation | None) -> float:
        return 1.0


async def test_the_cap_stops_pings_once_the_bills_exceed_it() -> None:
    clock = FakeClock()
    ping = FakePing(clock)
    keep = runner(
        clock, ping, mode="fixed", interval_s=60, max_cost_per_hour=0.5, pricer=Underestimated()
    )
    await keep.start()
    try:
        # The bill ($1) paces the next ping 2 h out (1/$0.5 an hour); there it is refused,
        # since a ping now costs more than the whole cap, and so is every later one.
        await clock.advance(7199)
        assert ping.since(T0) == [0] and keep.stats().skipped == {}
        await clock.advance(601)
        assert ping.since(T0) == [0]
        stats = keep.stats()
        assert stats.skipped["keep_warm"] == 1 + 600 // 60
        assert stats.cost_usd == 1.0
        assert keep.prewarm(2) == 2  # started, but each is refused by the cap
        await settle()
        assert ping.since(T0) == [0] and keep.stats().skipped["prewarm"] == 2
    finally:
        await keep.stop()


# Adaptive -------------------------------------------------------------------------------


def trained(
    idle_s: float, samples: int = 40, bin_s: float = 10.0, bins: int = 60
) -> IdleTimeHistogram:
    histogram = IdleTimeHistogram(bin_s=bin_s, bins=bins)
    for _ in range(samples):
        histogram.add(idle_s)
    return histogram


async def test_adaptive_prewarms_before_the_5th_percentile_and_keeps_to_the_99th() -> None:
    # Calls every ~95 s: warm from 81 s (bin 9 less 10%) to 110 s after each call; a cold
    # start takes 1 s here, so the pre-warm goes 1 s early; interval_s refreshes inside.
    clock = FakeClock()
    ping = FakePing(clock, "cold")
    estimator = WarmthEstimator(assumed_coldstart_s=1.0)
    keep = runner(
        clock, ping, mode="adaptive", interval_s=20, histogram=trained(95.0), estimator=estimator
    )
    await keep.start()
    try:
        keep.observe(call(clock.now))
        assert keep.next_ping_at(clock.now) == pytest.approx(T0 + 80)
        await clock.advance(300)
        assert ping.since(T0) == [80, 100]  # then 120 > 110: the window closed
        stats = keep.stats()
        assert stats.pings == {("keep_warm", "cold"): 1, ("keep_warm", "warm"): 1}
    finally:
        await keep.stop()


async def test_adaptive_without_a_call_pings_nothing_and_a_new_call_restarts_the_window() -> None:
    clock = FakeClock()
    ping = FakePing(clock)
    keep = runner(clock, ping, mode="adaptive", interval_s=20, histogram=trained(95.0))
    await keep.start()
    try:
        await clock.advance(1000)
        assert ping.times == []
        keep.observe(call(clock.now))  # at +1000
        await clock.advance(50)
        keep.observe(call(clock.now))  # at +1050, before the window opened
        await clock.advance(300)
        # The pre-warm lead is the 2 s prior (no cold start measured yet).
        assert ping.since(T0) == [1050 + 79, 1050 + 99]
    finally:
        await keep.stop()


async def test_adaptive_falls_back_to_a_fixed_keep_alive_of_the_range() -> None:
    clock = FakeClock()
    ping = FakePing(clock)
    few = trained(95.0, samples=3, bin_s=1.0, bins=100)  # not representative: keep 100 s
    keep = runner(clock, ping, mode="adaptive", interval_s=30, histogram=few)
    await keep.start()
    try:
        keep.observe(call(clock.now))
        await clock.advance(500)
        assert ping.since(T0) == [30, 60, 90]
    finally:
        await keep.stop()


async def test_adaptive_pings_sooner_when_answers_show_the_platform_reaps_sooner() -> None:
    clock = FakeClock()
    ping = FakePing(clock)
    estimator = WarmthEstimator()
    estimator.observe(call(T0 - 100))
    estimator.observe(call(T0 - 90))  # warm after 10 s idle
    estimator.observe(
        Observation(T0 - 65, cold=True, coldstart_s=1.0, backend_s=0.0)
    )  # cold after 25 s
    few = trained(95.0, samples=3, bin_s=1.0, bins=100)
    keep = runner(clock, ping, mode="adaptive", interval_s=60, histogram=few, estimator=estimator)
    await keep.start()
    try:
        keep.observe(Observation(clock.now, cold=True, coldstart_s=1.0, backend_s=0.0))
        await clock.advance(100)
        assert ping.since(T0) == [20, 40, 60, 80, 100]  # 0.8 x 25 s, not 60 s
    finally:
        await keep.stop()


async def test_a_failed_ping_is_counted_and_the_schedule_goes_on() -> None:
    clock = FakeClock()
    ping = FakePing(clock, "fail")
    keep = runner(clock, ping, mode="fixed", interval_s=60, pricer=FlatPingPrice(0.001))
    await keep.start()
    try:
        await clock.advance(61)
        assert ping.since(T0) == [0, 60]
        assert keep.stats().pings == {("keep_warm", "error"): 1, ("keep_warm", "warm"): 1}
        assert keep.stats().cost_usd == pytest.approx(0.002)
    finally:
        await keep.stop()


# Pre-warm ----------------------------------------------------------------------------------


async def test_prewarm_sends_pings_only_for_instances_not_warm_or_warming() -> None:
    clock = FakeClock()
    ping = FakePing(clock, hold=True)
    keep = runner(clock, ping)  # mode off: pre-warm still works
    assert keep.prewarm() == 0  # not started
    await keep.start()
    try:
        assert keep.prewarm(3) == 3
        await settle()
        assert len(ping.times) == 3
        assert keep.prewarm(3) == 0  # all three warming
        ping.release.set()
        await settle()
        assert keep.estimator.warm_instances(clock.now) == 3
        assert keep.prewarm(4) == 1  # three are warm
        assert keep.prewarm(100) == 8 - 4  # at most max_prewarm at once
        await settle()
    finally:
        await keep.stop()
    assert keep.stats().pings[("prewarm", "warm")] == 3 + 5


# Stop ------------------------------------------------------------------------------------


async def test_stop_cancels_a_ping_in_flight_and_leaves_no_task() -> None:
    clock = FakeClock()
    ping = FakePing(clock, hold=True)
    keep = runner(clock, ping, mode="fixed", interval_s=60)
    await keep.start()
    await keep.start()  # idempotent
    await settle()
    keep.prewarm(2)
    await settle()
    assert len(ping.times) == 3 and keep.running
    await keep.stop()
    assert ping.cancelled == 3
    assert not keep.running
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_stop_while_waiting_cancels_the_sleep() -> None:
    clock = FakeClock()
    ping = FakePing(clock)
    keep = runner(clock, ping, mode="fixed", interval_s=60)
    await keep.start()
    await clock.advance(30)
    await keep.stop()
    await clock.advance(1000)
    assert ping.since(T0) == [0]
    assert asyncio.all_tasks() == {asyncio.current_task()}


# The real ping and the counters ----------------------------------------------------------------


class ColdOnceBackend(EchoBackend):
    """An echo backend that reports a cold start on its first call, like Lambda's Init."""

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        if not self.calls:
            ctx.timings.add("coldstart", 800.0, f"backend={self.name}")
        return await super().infer(request, ctx)


async def test_backend_ping_observes_the_backends_own_timings() -> None:
    backend = ColdOnceBackend("lambda")
    ping = backend_ping(backend, "identity", clock=lambda: T0)
    first, second = await ping(), await ping()
    assert first.cold and first.coldstart_s == pytest.approx(0.8) and first.at == T0
    assert first.backend_s is not None and first.backend_s >= 0
    assert not second.cold
    # The model's smallest request, made from its metadata (FP32 [-1, -1] -> [1, 1] of 0).
    assert [c.inputs for c in backend.calls] == [(Tensor("input", "FP32", (1, 1), bytes(4)),)] * 2


async def test_a_ping_to_a_model_the_backend_lacks_fails_and_asks_again_next_time() -> None:
    backend = ColdOnceBackend("lambda")
    ping = backend_ping(backend, "nope")
    for _ in range(2):
        with pytest.raises(ModelNotFound):
            await ping()
    assert backend.calls == []


WARM, WARM_2 = serialize_bytes([b"warm"]), serialize_bytes([b"warm"] * 2)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (TensorSpec("x", "FP32", (-1, 3)), Tensor("x", "FP32", (1, 3), bytes(12))),
        (TensorSpec("x", "INT64", (2,)), Tensor("x", "INT64", (2,), bytes(16))),
        (TensorSpec("x", "BOOL", (-1,)), Tensor("x", "BOOL", (1,), b"\x00")),
        (TensorSpec("t", "BYTES", (-1,)), Tensor("t", "BYTES", (1,), serialize_bytes([b"warm"]))),
        (
            TensorSpec("t", "BYTES", (2, -1)),
            Tensor("t", "BYTES", (2, 1), serialize_bytes([b"warm"] * 2)),
        ),
    ],
)
def test_tiny_request_is_the_smallest_request_the_metadata_allows(
    spec: TensorSpec, expected: Tensor
) -> None:
    request = tiny_request(ModelMetadata("m", ("1",), "p", (spec, spec), ()))
    assert request.model == "m" and request.inputs == (expected, expected)


def test_a_ping_is_priced_as_the_price_list_prices_a_request() -> None:
    rate = serverless_rate("lambda", packaged_prices())
    pricer = DurationPingPrice.of(rate)
    # 3008 MB at $0.0000166667 per GB-s for 10 ms (the estimate), plus $0.20 per million.
    assert pricer.estimate_usd() == pytest.approx(3008 / 1024 * 0.0000166667 * 0.010 + 0.20e-6)
    cloudrun = DurationPingPrice.of(serverless_rate("cloudrun", packaged_prices()))
    # 2 vCPU x $0.000024 + 2 GiB x $0.0000025 per second, 100 ms minimum, + $0.40 per million.
    assert cloudrun.estimate_usd() == pytest.approx((2 * 0.000024 + 2 * 0.0000025) * 0.1 + 0.4e-6)
    with pytest.raises(PriceError):
        serverless_rate("triton", packaged_prices())


async def test_collector_reports_pings_skips_and_cost() -> None:
    clock = FakeClock()
    ping = FakePing(clock, "cold")
    keep = runner(
        clock,
        ping,
        mode="fixed",
        interval_s=60,
        max_cost_per_hour=0.025,
        pricer=FlatPingPrice(0.01),
    )
    await keep.start()
    try:
        await clock.advance(1)
        assert keep.prewarm(1) == 0  # warm now (the ping answered): nothing to do
        registry = CollectorRegistry()
        registry.register(KeepWarmCollector({"lambda": keep}))
        text = generate_latest(registry).decode()
    finally:
        await keep.stop()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    pings = (
        "infergw_keep_warm_pings_total",
        (("backend", "lambda"), ("outcome", "cold"), ("reason", "keep_warm")),
    )
    assert samples[pings] == 1
    assert samples[("infergw_keep_warm_cost_usd_total", (("backend", "lambda"),))] == pytest.approx(
        0.01
    )


async def test_the_set_starts_stops_prewarms_and_observes_by_backend_name() -> None:
    clock = FakeClock()
    lambda_ping, cloudrun_ping = FakePing(clock), FakePing(clock)
    fleet = KeepWarmSet(
        {
            "lambda": runner(clock, lambda_ping, mode="fixed", interval_s=60),
            "cloudrun": runner(clock, cloudrun_ping),
        }
    )
    async with fleet:
        await settle()
        fleet.prewarm("cloudrun")
        fleet.prewarm("triton")  # no keep-warm there: nothing happens
        await settle()
        await clock.advance(30)
        fleet.observe("lambda", call(clock.now))
        fleet.observe("triton", call(clock.now))
        await clock.advance(30)
        assert lambda_ping.since(T0) == [0]  # the call at +30 moved the next ping to +90
        assert cloudrun_ping.since(T0) == [0]
        assert fleet.estimators()["cloudrun"].warm_instances(clock.now) == 1
    assert not any(r.running for r in fleet.runners.values())
    assert asyncio.all_tasks() == {asyncio.current_task()}

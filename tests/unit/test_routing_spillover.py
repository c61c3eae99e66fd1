"""Spill-over: the primary while it can start a request in time, else an overflow backend
that fits the deadline (warm first), else the primary's queue or a clear 429; spilling
starts within one service time of a burst and stops when it ends."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import pytest

from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.policies import Admission, Attempt
from infergw.gateway.core.routing.attempts import Target
from infergw.gateway.core.routing.config import OutlierConfig
from infergw.gateway.core.routing.decisions import Reason
from infergw.gateway.core.routing.outcomes import Outcome
from infergw.gateway.core.routing.outlier import OutlierDetector
from infergw.gateway.core.routing.queue_state import AdmissionQueue, expected_wait_s
from infergw.gateway.core.routing.spillover import Spillover
from infergw.vocab.errors import InvalidArgument, QueueFull, Throttled, Unavailable
from tests.unit.routing_fakes import (
    Decisions,
    FakeClock,
    Gate,
    attempts,
    backend_descs,
    request,
    window,
)

BOUND_S = 0.020  # max_queue_wait_ms: 20


@dataclass
class Queue:
    wait_s: float = 0.0

    def expected_wait_s(self) -> float:
        return self.wait_s


@dataclass
class Estimate:
    latency_s: float
    cold: bool = False

    def expected_latency_s(self, now: float) -> float:
        return self.latency_s

    def probably_cold(self, now: float) -> bool:
        return self.cold

    def warm_capacity(self, now: float) -> int | None:
        return None

    def cold_latency_s(self) -> float:
        return self.latency_s


class Prewarmer:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def prewarm(self, backend: str, instances: int = 1) -> None:
        self.asked.append(backend)


def member(name: str, estimate: Estimate | None = None, **kw: Any) -> Target:
    return Target(name, Gate(name, hold=False), estimate=estimate, **kw)


def route(
    clock: FakeClock, queue: Queue, *overflow: Target, primary: Target | None = None, **kw: Any
) -> Spillover:
    first = primary or member("triton")
    return Spillover(first, overflow, queue, BOUND_S, attempts(clock), **kw)


def ctx_with(clock: FakeClock, left_s: float | None) -> RequestContext:
    return RequestContext("test", deadline=None if left_s is None else clock.now() + left_s)


@pytest.mark.parametrize(
    ("wait_s", "left_s", "lambda_s", "cloudrun_s", "expected"),
    [
        (0.0, 1.0, 0.1, 0.1, ("triton", Reason.PRIMARY)),
        (0.020, 1.0, 0.1, 0.1, ("triton", Reason.PRIMARY)),  # at the bound: still starts
        (0.021, 1.0, 0.1, 0.1, ("lambda", Reason.SPILL)),
        (0.5, 1.0, 2.0, 0.3, ("cloudrun", Reason.SPILL)),  # lambda cannot make the deadline
        (0.5, None, 2.0, 0.3, ("lambda", Reason.SPILL)),  # no deadline: any fits
        (0.5, 1.0, 2.0, 3.0, ("triton", Reason.PRIMARY)),  # none fits: the primary's queue
        (math.inf, 1.0, 2.0, 3.0, ("triton", Reason.PRIMARY)),  # wait unknown: its queue
    ],
)
def test_decisions(
    wait_s: float,
    left_s: float | None,
    lambda_s: float,
    cloudrun_s: float,
    expected: tuple[str, Reason],
) -> None:
    clock = FakeClock()
    overflow = (member("lambda", Estimate(lambda_s)), member("cloudrun", Estimate(cloudrun_s)))
    target, reason = route(clock, Queue(wait_s), *overflow).decide(ctx_with(clock, left_s))
    assert (target.name, reason) == expected


def test_none_fits_and_the_queue_would_outlast_the_deadline_is_a_clear_429() -> None:
    clock = FakeClock()
    spill = route(clock, Queue(wait_s=3.2), member("lambda", Estimate(5.0)))
    with pytest.raises(QueueFull, match="cannot start the request within its deadline") as caught:
        spill.decide(ctx_with(clock, 1.0))
    assert caught.value.retry_after_s == pytest.approx(3.2)


def test_a_probably_cold_overflow_is_passed_over_for_a_warm_one_that_fits() -> None:
    clock = FakeClock()
    cold = member("lambda", Estimate(0.4, cold=True))
    warm = member("cloudrun", Estimate(0.6))
    target, _ = route(clock, Queue(1.0), cold, warm).decide(ctx_with(clock, 1.0))
    assert target.name == "cloudrun"
    only_cold = route(clock, Queue(1.0), cold).decide(ctx_with(clock, 1.0))
    assert only_cold[0].name == "lambda"  # it fits, cold start included: better than waiting


def test_a_cold_start_longer_than_the_primarys_wait_is_not_paid_while_it_warms() -> None:
    clock = FakeClock()
    warmer = Prewarmer()
    queue = Queue(0.5)  # past the bound, but shorter than the 2 s cold start
    spill = route(clock, queue, member("lambda", Estimate(2.0, cold=True)), prewarm=warmer)
    assert spill.decide(ctx_with(clock, None)) == (spill.primary, Reason.PRIMARY)
    assert warmer.asked == ["lambda"]  # warming meanwhile
    queue.wait_s = 2.5  # now the cold start is the shorter wait
    target, reason = spill.decide(ctx_with(clock, None))
    assert (target.name, reason) == ("lambda", Reason.SPILL)


def test_an_ejected_primary_spills_whatever_the_queue_says() -> None:
    clock = FakeClock()
    config = OutlierConfig(consecutive_failures=1, max_ejected_percent=50)
    detector = OutlierDetector("triton", config, clock)
    primary = member("triton", outlier=detector)
    detector.record(Outcome.OUTAGE)
    slow = member("lambda", Estimate(5.0))
    target, reason = route(clock, Queue(0.0), slow, primary=primary).decide(ctx_with(clock, 1.0))
    assert (target.name, reason) == ("lambda", Reason.SPILL)


def test_probably_cold_overflow_is_prewarmed_as_the_queue_grows() -> None:
    clock = FakeClock()
    warmer = Prewarmer()
    queue = Queue(0.005)
    overflow = (member("lambda", Estimate(0.1, cold=True)), member("cloudrun", Estimate(0.1)))
    spill = route(clock, queue, *overflow, prewarm=warmer)
    spill.decide(ctx_with(clock, 1.0))
    assert warmer.asked == []  # a short queue: no pressure
    queue.wait_s = 0.015  # past half the bound, still on the primary
    assert spill.decide(ctx_with(clock, 1.0))[1] is Reason.PRIMARY
    assert warmer.asked == ["lambda"]  # only the cold one


@pytest.mark.parametrize(
    ("in_flight", "queued", "slots", "service_s", "wait_s"),
    [
        (1, 0, 2, 0.010, 0.0),
        (2, 0, 2, 0.010, 0.005),
        (2, 3, 2, 0.010, 0.020),
        (2, 4, 2, 0.010, 0.025),
        (2, 0, 2, None, math.inf),
        (0, 0, 2, None, 0.0),
    ],
)
def test_expected_wait_from_the_queue_and_service_times(
    in_flight: int, queued: int, slots: int, service_s: float | None, wait_s: float
) -> None:
    assert expected_wait_s(in_flight, queued, slots, service_s) == pytest.approx(wait_s)


async def test_a_burst_spills_within_one_service_time_and_stops_after() -> None:
    clock = FakeClock()
    sink = Decisions()
    service = window(*[0.009] * 20)  # the primary's recent service times: 9 ms
    primary_gate = Gate("triton", clock=clock)
    admission = Admission(
        Attempt(primary_gate), max_concurrency=2, max_queue=64, queue_timeout_s=60
    )
    primary = Target("triton", admission, service_times=service)
    overflow = Target("lambda", Attempt(Gate("lambda", hold=False)), estimate=Estimate(0.05))
    spill = Spillover(
        primary, [overflow], AdmissionQueue(admission, service), BOUND_S, attempts(clock, sink)
    )
    contexts = [RequestContext("test", deadline=clock.now() + 1) for _ in range(10)]
    tasks = [asyncio.create_task(spill.infer(request(), c)) for c in contexts]
    while sum(t.done() for t in tasks) < 4:  # the spilled ones answer at once
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    assert primary_gate.calls == 2 and admission.queued == 4  # no primary request finished
    reasons = [r for _, _, r in sink.seen]
    # 2 start, 4 queue (expected waits 4.5, 9, 13.5, 18 ms), the rest spill: 22.5 > 20 ms.
    assert reasons == [Reason.PRIMARY] * 6 + [Reason.SPILL] * 4
    assert [backend_descs(c) for c in contexts[6:]] == [
        ["backend=lambda;attempt=1;reason=spill"]
    ] * 4
    primary_gate.service_s = 0.009
    primary_gate.open()
    responses = await asyncio.gather(*tasks)  # none rejected
    assert [r.version for r in responses] == ["triton"] * 6 + ["lambda"] * 4
    sink.seen.clear()
    for _ in range(10):  # after the burst: one at a time, each finishing
        await spill.infer(request(), RequestContext("test", deadline=clock.now() + 1))
    assert {r for _, _, r in sink.seen} == {Reason.PRIMARY}  # the spill fraction is back to 0


@pytest.mark.parametrize(
    ("error", "back_to_primary"),
    [
        (Throttled("backend 'lambda': Rate Exceeded."), True),  # the overflow is full too
        (QueueFull("gateway admission is full"), True),
        (Unavailable("down"), True),
        (InvalidArgument("bad input"), False),  # the client's own: its answer
    ],
    ids=["throttled", "queue-full", "unavailable", "client-error"],
)
async def test_a_spilled_request_the_overflow_cannot_take_goes_back_to_the_primary(
    error: Exception, back_to_primary: bool
) -> None:
    clock = FakeClock()
    overflow = Target(
        "lambda", Attempt(Gate("lambda", hold=False, error=error)), estimate=Estimate(0.05)
    )
    primary = Target("triton", Attempt(Gate("triton", hold=False)))
    spill = route(clock, Queue(wait_s=0.5), overflow, primary=primary)  # it would wait 500 ms
    c = ctx_with(clock, 1.0)
    if not back_to_primary:
        with pytest.raises(type(error)):
            await spill.infer(request(), c)
        return
    response = await spill.infer(request(), c)
    assert response.version == "triton"  # queued at the primary, not refused
    assert backend_descs(c) == [
        "backend=lambda;attempt=1;reason=spill",
        "backend=triton;attempt=2;reason=fallback",
    ]

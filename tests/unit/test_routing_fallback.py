"""Fallback: what moves on and what does not; every attempt visible with its reason; each
attempt gets the request's remaining deadline, not the one before's per-try timeout."""

from __future__ import annotations

import asyncio

import pytest

from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.policies import Attempt, Retry
from infergw.gateway.core.routing.attempts import Target
from infergw.gateway.core.routing.config import OutlierConfig
from infergw.gateway.core.routing.decisions import Reason
from infergw.gateway.core.routing.fallback import Fallback
from infergw.gateway.core.routing.outcomes import Outcome
from infergw.gateway.core.routing.outlier import OutlierDetector
from infergw.vocab import errors
from infergw.vocab.errors import InferGWError
from tests.unit.routing_fakes import (
    Decisions,
    FakeClock,
    Gate,
    attempts,
    backend_descs,
    request,
)

MOVES_ON = [
    errors.Unavailable("connection refused"),
    errors.QueueFull("queue full", 1.0),
    errors.Throttled("429 from lambda", 2.0),
    errors.ResourceExhausted("quota"),
    errors.DeadlineExceeded("per-try timeout"),
]
STAYS = [
    errors.InvalidArgument("bad shape"),
    errors.ModelNotFound("m"),
    errors.PayloadTooLarge("body", 10, 5),
    errors.BackendError("model raised"),
    errors.Cancelled("client went away"),
]


def route(clock: FakeClock, *backends: Gate, sink: Decisions | None = None) -> Fallback:
    return Fallback([Target(b.name, Attempt(b)) for b in backends], attempts(clock, sink))


@pytest.mark.parametrize("error", MOVES_ON, ids=lambda e: type(e).__name__)
async def test_moves_on_for_what_another_backend_may_serve(error: InferGWError) -> None:
    clock = FakeClock()
    sink = Decisions()
    first, second = Gate("triton", hold=False, error=error), Gate("cloudrun", hold=False)
    ctx = RequestContext("test", deadline=clock.now() + 60)
    response = await route(clock, first, second, sink=sink).infer(request(), ctx)
    assert response.version == "cloudrun" and ctx.backend_name == "cloudrun"
    assert backend_descs(ctx) == [
        "backend=triton;attempt=1",
        "backend=cloudrun;attempt=2;reason=fallback",
    ]
    assert sink.seen == [("m", "triton", Reason.PRIMARY), ("m", "cloudrun", Reason.FALLBACK)]


@pytest.mark.parametrize("error", STAYS, ids=lambda e: type(e).__name__)
async def test_never_moves_on_for_the_clients_own_errors(error: InferGWError) -> None:
    clock = FakeClock()
    first, second = Gate("triton", hold=False, error=error), Gate("cloudrun", hold=False)
    with pytest.raises(type(error)):
        await route(clock, first, second).infer(request(), RequestContext("test"))
    assert second.calls == 0


async def test_the_clients_deadline_ends_the_request() -> None:
    clock = FakeClock()
    first = Gate("triton", hold=False, error=errors.DeadlineExceeded("out of time"))
    second = Gate("cloudrun", hold=False)
    ctx = RequestContext("test", deadline=clock.now() + 1)
    first.clock, first.service_s = clock, 1.0  # the whole deadline goes on the first try
    with pytest.raises(errors.DeadlineExceeded):
        await route(clock, first, second).infer(request(), ctx)
    assert second.calls == 0


async def test_after_a_per_try_timeout_the_next_gets_the_requests_deadline() -> None:
    clock = FakeClock()
    timed_out = Gate("triton", hold=False, error=errors.DeadlineExceeded("per-try timeout"))
    answers = Gate("cloudrun", hold=False)
    deadline = clock.now() + 60
    ctx = RequestContext("test", deadline=deadline)
    # The first member's Attempt tightens its context to its per-try timeout of 5 s.
    members = [Target("triton", Attempt(timed_out, 5.0)), Target("cloudrun", Attempt(answers))]
    response = await Fallback(members, attempts(clock)).infer(request(), ctx)
    assert response.version == "cloudrun"
    first = timed_out.deadlines[0]
    assert first is not None and first < deadline - 50  # its per-try timeout
    assert answers.deadlines == [deadline]  # not the first's: the request's
    assert ctx.deadline == deadline  # the request's own deadline is untouched


async def test_all_failing_gives_the_last_error_and_every_attempt() -> None:
    clock = FakeClock()
    a = Gate("a", hold=False, error=errors.Unavailable("a down"))
    b = Gate("b", hold=False, error=errors.QueueFull("b full", 3.0))
    ctx = RequestContext("test")
    with pytest.raises(errors.QueueFull, match="b full"):
        await route(clock, a, b).infer(request(), ctx)
    assert backend_descs(ctx) == ["backend=a;attempt=1", "backend=b;attempt=2;reason=fallback"]
    assert ctx.attempts == 2


async def test_ejected_members_are_passed_over_and_the_rest_is_a_fallback() -> None:
    clock = FakeClock()
    config = OutlierConfig(consecutive_failures=2, max_ejected_percent=50)
    down = Gate("triton", hold=False, error=errors.Unavailable("refused"))
    up = Gate("cloudrun", hold=False)
    detector = OutlierDetector("triton", config, clock)
    members = [Target("triton", Attempt(down), detector), Target("cloudrun", Attempt(up))]
    fallback = Fallback(members, attempts(clock))
    for _ in range(2):
        await fallback.infer(request(), RequestContext("test"))
    assert detector.ejected() and down.calls == 2
    ctx = RequestContext("test")
    await fallback.infer(request(), ctx)
    assert down.calls == 2  # skipped while ejected
    assert backend_descs(ctx) == ["backend=cloudrun;attempt=1;reason=fallback"]
    clock.advance(30)
    down.error = None
    ctx = RequestContext("test")
    assert (await fallback.infer(request(), ctx)).version == "triton"  # back in service
    assert not detector.ejected() and detector.consecutive == 0


async def test_all_ejected_is_unavailable_with_the_soonest_return() -> None:
    clock = FakeClock()
    config = OutlierConfig(consecutive_failures=1, base_ejection_s=30, max_ejected_percent=100)
    detectors = [OutlierDetector(n, config, clock) for n in ("a", "b")]
    members = [Target(d.name, Gate(d.name, hold=False), d) for d in detectors]
    detectors[0].record(Outcome.OUTAGE)
    clock.advance(10)
    detectors[1].record(Outcome.OUTAGE)
    with pytest.raises(errors.Unavailable, match=r"'a' is ejected .* retry after 20 s"):
        await Fallback(members, attempts(clock)).infer(request(), RequestContext("test"))
    assert all(m.backend.calls == 0 for m in members if isinstance(m.backend, Gate))


async def test_a_members_own_retries_show_as_retry_attempts() -> None:
    clock = FakeClock()
    throttled = Gate("lambda", hold=False, error=errors.Throttled("429", 0.0))
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        throttled.error = None  # the backend has capacity again

    stack = Retry(Attempt(throttled), 2, 0.025, 0.25, uniform=lambda lo, hi: hi, sleep=no_sleep)
    fallback = Fallback([Target("lambda", stack)], attempts(clock))
    ctx = RequestContext("test")
    await fallback.infer(request(), ctx)
    assert backend_descs(ctx) == [
        "backend=lambda;attempt=1",
        "backend=lambda;attempt=2;reason=retry",
    ]
    assert len(sleeps) == 1


async def test_a_cancelled_request_keeps_its_attempt_in_the_timings() -> None:
    clock = FakeClock()
    hangs = Gate("triton")
    ctx = RequestContext("test")
    task = asyncio.create_task(route(clock, hangs).infer(request(), ctx))
    await hangs.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend_descs(ctx) == ["backend=triton;attempt=1"]

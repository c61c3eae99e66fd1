"""Hedging: the next backend after the delay, first success wins, the loser sees the
cancellation; the adaptive p95 delay; the hedge budget; failures before the delay."""

from __future__ import annotations

import asyncio

import pytest

from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.policies import Attempt
from infergw.gateway.core.routing.attempts import Target
from infergw.gateway.core.routing.budget import HedgeBudget
from infergw.gateway.core.routing.decisions import Reason
from infergw.gateway.core.routing.hedge import Hedge
from infergw.vocab import errors
from infergw.vocab.types import InferResponse
from tests.unit.routing_fakes import (
    Decisions,
    FakeClock,
    Gate,
    attempts,
    backend_descs,
    request,
    wait_for,
    window,
)

DELAY_S = 0.05


def hedge(
    clock: FakeClock,
    *backends: Gate,
    delay_s: float | None = DELAY_S,
    budget: HedgeBudget | None = None,
    sink: Decisions | None = None,
    first_times: tuple[float, ...] = (),
) -> Hedge:
    members = [Target(b.name, Attempt(b)) for b in backends]
    if first_times:
        members[0] = Target(
            backends[0].name, Attempt(backends[0]), service_times=window(*first_times)
        )
    return Hedge(members, delay_s, attempts(clock, sink), budget)


def start(route: Hedge, ctx: RequestContext) -> asyncio.Task[InferResponse]:
    return asyncio.create_task(route.infer(request(), ctx))


async def test_no_answer_within_the_delay_hedges_and_the_loser_is_cancelled() -> None:
    clock = FakeClock()
    sink = Decisions()
    slow, fast = Gate("lambda"), Gate("sagemaker")
    ctx = RequestContext("test")
    task = start(hedge(clock, slow, fast, sink=sink), ctx)
    await wait_for(slow.started)
    await wait_for(clock.sleep_started)
    assert fast.calls == 0
    clock.advance(DELAY_S)
    await wait_for(fast.started)
    fast.open()
    response = await task
    assert response.version == "sagemaker" and ctx.backend_name == "sagemaker"
    await wait_for(slow.was_cancelled)  # the loser's backend saw the cancellation
    assert slow.cancelled == 1
    assert sorted(backend_descs(ctx)) == [
        "backend=lambda;attempt=1",
        "backend=sagemaker;attempt=2;reason=hedge",
    ]
    assert sink.seen == [("m", "lambda", Reason.PRIMARY), ("m", "sagemaker", Reason.HEDGE)]


async def test_an_answer_within_the_delay_sends_no_hedge() -> None:
    clock = FakeClock()
    first, second = Gate("lambda"), Gate("sagemaker")
    task = start(hedge(clock, first, second), RequestContext("test"))
    await wait_for(clock.sleep_started)
    first.open()
    assert (await task).version == "lambda"
    clock.advance(DELAY_S)
    assert second.calls == 0 and clock.sleeping == 0  # the hedge timer was cancelled


async def test_the_first_to_answer_wins_even_if_it_was_the_first_sent() -> None:
    clock = FakeClock()
    first, second = Gate("lambda"), Gate("sagemaker")
    task = start(hedge(clock, first, second), RequestContext("test"))
    await wait_for(clock.sleep_started)
    clock.advance(DELAY_S)
    await wait_for(second.started)
    first.open()
    assert (await task).version == "lambda"
    await wait_for(second.was_cancelled)


async def test_p95_waits_for_the_first_backends_observed_p95() -> None:
    clock = FakeClock()
    first, second = Gate("lambda"), Gate("sagemaker")
    times = (*[0.010] * 19, 0.200)  # p95 between 10 and 200 ms
    route = hedge(clock, first, second, delay_s=None, first_times=times)
    p95 = route.delay_s(route.targets[0])
    assert p95 is not None and 0.010 < p95 < 0.200
    task = start(route, RequestContext("test"))
    await wait_for(clock.sleep_started)
    clock.advance(p95 * 0.9)
    await asyncio.sleep(0)
    assert second.calls == 0
    clock.advance(p95 * 0.1 + 1e-9)
    await wait_for(second.started)
    second.open()
    assert (await task).version == "sagemaker"


async def test_p95_does_not_hedge_before_it_has_samples() -> None:
    clock = FakeClock()
    first, second = Gate("lambda"), Gate("sagemaker")
    route = hedge(clock, first, second, delay_s=None)
    assert route.delay_s(route.targets[0]) is None
    task = start(route, RequestContext("test"))
    await wait_for(first.started)
    assert clock.sleeping == 0  # no hedge timer at all
    first.open()
    await task
    assert second.calls == 0
    assert len(route.targets[0].service_times) == 1  # the success is a sample for next time


async def test_out_of_budget_no_hedge_is_sent() -> None:
    clock = FakeClock()
    first, second = Gate("lambda"), Gate("sagemaker")
    route = hedge(clock, first, second, budget=HedgeBudget(percent=0, initial=0))
    task = start(route, RequestContext("test"))
    await wait_for(clock.sleep_started)
    clock.advance(DELAY_S)
    await asyncio.sleep(0)
    assert second.calls == 0 and clock.sleeping == 0
    first.open()
    assert (await task).version == "lambda"


async def test_a_fast_outage_moves_on_at_once_outside_the_budget() -> None:
    clock = FakeClock()
    down = Gate("lambda", hold=False, error=errors.Unavailable("refused"))
    up = Gate("sagemaker", hold=False)
    route = hedge(clock, down, up, budget=HedgeBudget(percent=0, initial=0))
    ctx = RequestContext("test")
    assert (await route.infer(request(), ctx)).version == "sagemaker"
    assert backend_descs(ctx) == [
        "backend=lambda;attempt=1",
        "backend=sagemaker;attempt=2;reason=fallback",
    ]


async def test_the_clients_error_ends_the_request_and_cancels_the_rest() -> None:
    clock = FakeClock()
    first, second = Gate("lambda"), Gate("sagemaker")
    task = start(hedge(clock, first, second), RequestContext("test"))
    await wait_for(clock.sleep_started)
    clock.advance(DELAY_S)
    await wait_for(second.started)
    first.open(errors.InvalidArgument("bad shape"))
    with pytest.raises(errors.InvalidArgument):
        await task
    assert second.cancelled == 1


async def test_an_internal_error_waits_for_the_others_and_all_failing_raises_the_last() -> None:
    clock = FakeClock()
    first, second = Gate("lambda"), Gate("sagemaker")
    task = start(hedge(clock, first, second), RequestContext("test"))
    await wait_for(clock.sleep_started)
    clock.advance(DELAY_S)
    await wait_for(second.started)
    first.open(errors.BackendError("model raised"))
    await wait_for(first.answered)
    for _ in range(5):
        await asyncio.sleep(0)  # the route takes the error in
    assert not task.done()  # the hedge may still succeed
    second.open(errors.Unavailable("sagemaker down"))
    with pytest.raises(errors.Unavailable, match="sagemaker down"):
        await task


async def test_a_cancelled_request_cancels_every_attempt() -> None:
    clock = FakeClock()
    first, second = Gate("lambda"), Gate("sagemaker")
    ctx = RequestContext("test")
    task = start(hedge(clock, first, second), ctx)
    await wait_for(clock.sleep_started)
    clock.advance(DELAY_S)
    await wait_for(second.started)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (first.cancelled, second.cancelled) == (1, 1)
    assert len(backend_descs(ctx)) == 2  # both attempts are in the timings

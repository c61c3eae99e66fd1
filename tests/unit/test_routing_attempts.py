"""One attempt on its own context: Server-Timing entries joined with their reason, a
span per attempt, attempt numbers across concurrent attempts, service times recorded."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.policies import Attempt
from infergw.gateway.core.routing.attempts import Target
from infergw.gateway.core.routing.decisions import Reason
from infergw.gateway.core.routing.fallback import Fallback
from infergw.vocab.errors import Unavailable
from infergw.vocab.types import InferRequest, InferResponse
from tests.unit.routing_fakes import FakeClock, Gate, attempts, backend_descs, request


async def test_each_reason_is_in_the_timing_but_a_first_choice_adds_none() -> None:
    clock = FakeClock()
    runner = attempts(clock)
    member = Target("lambda", Attempt(Gate("lambda", hold=False)))
    ctx = RequestContext("test")
    for reason in Reason:
        await runner.run(member, request(), ctx, reason)
    assert backend_descs(ctx) == [
        "backend=lambda;attempt=1",
        "backend=lambda;attempt=2",
        "backend=lambda;attempt=3;reason=spill",
        "backend=lambda;attempt=4;reason=fallback",
        "backend=lambda;attempt=5;reason=hedge",
        "backend=lambda;attempt=6;reason=retry",
    ]
    assert [e.name for e in ctx.timings.entries].count("compute") == 6  # the rest is kept


async def test_the_attempt_sees_its_own_headers_and_the_request_keeps_its_own() -> None:
    seen: list[dict[str, str]] = []

    class Injects(Gate):
        async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
            ctx.headers["traceparent"] = "00-attempt"
            seen.append(dict(ctx.headers))
            return await super().infer(request, ctx)

    ctx = RequestContext("test", headers={"traceparent": "00-request"})
    await attempts(FakeClock()).run(
        Target("b", Injects("b", hold=False)), request(), ctx, Reason.PRIMARY
    )
    assert seen == [{"traceparent": "00-attempt"}]
    assert ctx.headers == {"traceparent": "00-request"}


async def test_service_times_exclude_the_wait_for_a_slot() -> None:
    clock = FakeClock()

    class Queued(Gate):
        async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
            clock.advance(0.015)  # waits 15 ms for a slot, as Admission records it
            ctx.timings.add("queue", 15.0, "backend=b")
            return await super().infer(request, ctx)

    member = Target("b", Queued("b", hold=False, clock=clock, service_s=0.040))
    ctx = RequestContext("test")
    ctx.timings.add("queue", 500.0)  # the request's own earlier entry: not this attempt's
    await attempts(clock).run(member, request(), ctx, Reason.PRIMARY)
    assert member.service_times.mean() == pytest.approx(0.040)


async def test_a_span_per_attempt_with_its_reason(span_exporter: InMemorySpanExporter) -> None:
    clock = FakeClock()
    down = Gate("triton", hold=False, error=Unavailable("refused"))
    members = [
        Target("triton", Attempt(down)),
        Target("lambda", Attempt(Gate("lambda", hold=False))),
    ]
    await Fallback(members, attempts(clock, route="minilm")).infer(request(), RequestContext("t"))
    routed = [s for s in span_exporter.get_finished_spans() if s.name == "route minilm"]
    assert [(s.attributes or {}).get("infergw.reason") for s in routed] == ["primary", "fallback"]
    assert [(s.attributes or {}).get("infergw.backend") for s in routed] == ["triton", "lambda"]
    clients = [s for s in span_exporter.get_finished_spans() if s.name.startswith("backend ")]
    assert {c.parent.span_id for c in clients if c.parent} == {s.context.span_id for s in routed}

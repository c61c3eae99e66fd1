"""One attempt of a route on one member, on a context of its own.

Why a context of its own: the member's stack tightens ``ctx.deadline`` to its per-try
timeout (``policies.Attempt``) and injects its own ``traceparent``; the next attempt (a
fallback after that timeout, a concurrent hedge) must start from the route's deadline and
headers again. Every attempt gets the request's remaining deadline, no more.

Its Server-Timing entries join the request's when it ends, won or lost, so every attempt
is visible: the member's first ``backend`` entry gets ``;reason=R`` for why the route made
it (``Reason.in_timing``), any further one (the member's own retries) ``;reason=retry``::

    backend;dur=31.2;desc="backend=triton;attempt=1"
    backend;dur=20.4;desc="backend=lambda;attempt=2;reason=fallback"

Each attempt is also a span, ``route MODEL`` with ``infergw.reason``, parent of the
member's own ``backend NAME`` client span. This keeps ``policies.Attempt`` unchanged; the
smaller alternative in core would be a ``RequestContext.attempt_reason`` that ``Attempt``
appends to its ``desc`` and span attributes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from infergw.gateway.core import tracing
from infergw.gateway.core.backend import Backend
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.routing.clock import SYSTEM_CLOCK, Clock, remaining_s
from infergw.gateway.core.routing.decisions import NO_DECISIONS, DecisionSink, Reason
from infergw.gateway.core.routing.latency import LatencyEstimate, LatencyWindow, ObservedLatency
from infergw.gateway.core.routing.outcomes import outcome_of
from infergw.gateway.core.routing.outlier import OutlierDetector
from infergw.vocab.errors import InferGWError
from infergw.vocab.timing import Timings
from infergw.vocab.types import InferRequest, InferResponse

BACKEND_PHASE = "backend"
WAIT_PHASE = "queue"  # admission and throttling waits: not service time


@dataclass(eq=False)
class Load:
    """Attempts in flight on a member (mutable, inside the frozen ``Target``)."""

    in_flight: int = 0


@dataclass(frozen=True, eq=False)
class Target:
    """A route member: a configured backend with its policies (no ``OutlierGate``), its
    ejection state (shared with other routes), and what is known of its latency."""

    name: str
    backend: Backend
    outlier: OutlierDetector | None = None
    estimate: LatencyEstimate | None = None  # a warm-state estimator; None: service times
    service_times: LatencyWindow = field(default_factory=LatencyWindow)
    load: Load = field(default_factory=lambda: Load())  # its attempts in flight (any route)

    def saturated(self, now: float) -> bool:
        """Whether every probably-warm instance is busy with an attempt of ours: the next
        request would start another, cold (a Lambda instance serves one at a time)."""
        capacity = self._estimate().warm_capacity(now)
        return capacity is not None and self.load.in_flight >= capacity

    def expected_latency_s(self, now: float) -> float:
        estimate = self._estimate()
        return (
            estimate.cold_latency_s() if self.saturated(now) else estimate.expected_latency_s(now)
        )

    def probably_cold(self, now: float) -> bool:
        return self._estimate().probably_cold(now) or self.saturated(now)

    def _estimate(self) -> LatencyEstimate:
        return self.estimate or ObservedLatency(self.service_times)


@dataclass(frozen=True)
class Attempts:
    """Runs a route's attempts: counts each decision, records each outcome."""

    route: str
    clock: Clock = SYSTEM_CLOCK
    sink: DecisionSink = NO_DECISIONS

    async def run(
        self, target: Target, request: InferRequest, ctx: RequestContext, reason: Reason
    ) -> InferResponse:
        self.sink.record(self.route, target.name, reason)
        child = dataclasses.replace(
            ctx, timings=Timings(started=ctx.timings.started), headers=dict(ctx.headers)
        )
        ctx.attempts += 1  # reserved now: a concurrent hedge takes the next number
        ctx.backend_name = target.name
        started = self.clock.now()
        span = tracing.phase_span(
            f"route {self.route}",
            **{
                "infergw.route": self.route,
                "infergw.backend": target.name,
                "infergw.reason": reason,
            },
        )
        target.load.in_flight += 1
        try:
            with span:
                response = await target.backend.infer(request, child)
        except InferGWError as exc:
            if target.outlier is not None:
                target.outlier.record(outcome_of(exc, remaining_s(ctx.deadline, self.clock)))
            raise
        finally:
            target.load.in_flight -= 1
            _join(child.timings, ctx.timings, reason)
            ctx.attempts = max(ctx.attempts, child.attempts)
        waited_s = sum(e.duration_ms for e in child.timings.entries if e.name == WAIT_PHASE)
        target.service_times.add(self.clock.now() - started - waited_s / 1000.0)
        if target.outlier is not None:
            target.outlier.record(None)
        ctx.backend_name = child.backend_name or target.name
        return response


def _join(attempt: Timings, request: Timings, reason: Reason) -> None:
    tries = 0
    for entry in attempt.entries:
        description = entry.description
        if entry.name == BACKEND_PHASE:
            why = reason if tries == 0 else Reason.RETRY
            tries += 1
            if why.in_timing:
                description = f"{description};reason={why}" if description else f"reason={why}"
        request.add(entry.name, entry.duration_ms, description)

"""``spillover``: the always-on primary while it can start a request in time; else overflow.

For each request, in order:

1. the primary, if it is not ejected and its admission would start the request within
   ``max_queue_wait_ms`` (``QueueState.expected_wait_s``: the queue and recent service
   times, so spilling starts with the first request that would wait too long, not when
   the queue is full, and stops as soon as the queue is short again);
2. else the first overflow member, not ejected, whose expected latency (its warm-state
   estimate, a cold start included) fits the request's remaining deadline, warm ones
   first (a probably-cold member is passed over for a warm one that fits, and taken only
   when its cold start is shorter than the wait at the primary: a cold start the
   primary's queue would beat is not one to pay);
3. else the primary's queue; or, when its expected wait is known to exceed the remaining
   deadline, RESOURCE_EXHAUSTED at once with a Retry-After of that wait (the client is
   told now, instead of at its deadline). With the primary ejected, the first overflow
   member not ejected, warm first (an estimate is no promise; the primary is out).

While the primary's expected wait is past ``prewarm_fraction`` of the bound, probably-cold
overflow members are named to ``Prewarm`` (the keep-warm machinery), so they are warm
before the first request spills. A member whose warm instances are all busy with our
attempts (``Target.saturated``) counts as cold: the next request would start an instance,
so it is pre-warmed for one instance more and the cold start is judged as above.

A spilled request the overflow member cannot serve for capacity or availability
(throttled, its queue full, unavailable: ``Outcome.moves_on``) goes back to the primary's
queue while the deadline leaves time (``reason=fallback``): a burst that also fills the
overflow is queued, not refused. Other failures are the client's answer; the members'
own stacks (retries, ejection) handle theirs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.routing.attempts import Attempts, Target
from infergw.gateway.core.routing.clock import remaining_s
from infergw.gateway.core.routing.decisions import Reason
from infergw.gateway.core.routing.outcomes import outcome_of
from infergw.gateway.core.routing.queue_state import QueueState
from infergw.gateway.core.routing.route import Route
from infergw.vocab.errors import InferGWError, QueueFull
from infergw.vocab.types import InferRequest, InferResponse

PREWARM_FRACTION = 0.5


class Prewarm(Protocol):
    def prewarm(self, backend: str, instances: int = 1) -> None:
        """Start warming ``instances`` of ``backend`` (returns at once; repeated calls
        are cheap)."""
        ...


class Spillover(Route):
    def __init__(
        self,
        primary: Target,
        overflow: Sequence[Target],
        queue: QueueState,
        max_queue_wait_s: float,
        attempts: Attempts,
        *,
        prewarm: Prewarm | None = None,
        prewarm_fraction: float = PREWARM_FRACTION,
    ) -> None:
        super().__init__([primary, *overflow], attempts)
        self.primary = primary
        self.overflow = tuple(overflow)
        self.queue = queue
        self.max_queue_wait_s = max_queue_wait_s
        self.prewarm = prewarm
        self.prewarm_fraction = prewarm_fraction

    def decide(self, ctx: RequestContext) -> tuple[Target, Reason]:
        """Where a request goes now, and why (raises QueueFull / Unavailable as above)."""
        clock = self.attempts.clock
        now = clock.now()
        usable = self.usable()
        primary_in = self.primary in usable
        wait = self.queue.expected_wait_s() if primary_in else math.inf
        if primary_in:
            self._prewarm_if_pressed(wait, now)
            if wait <= self.max_queue_wait_s:
                return self.primary, Reason.PRIMARY
        left = remaining_s(ctx.deadline, clock)
        overflow = [t for t in usable if t is not self.primary]
        fits = [t for t in overflow if left is None or t.expected_latency_s(now) <= left]
        if primary_in:
            # A cold start is worth waiting for only when it is shorter than the wait at
            # the primary: else the request queues there while the member warms up. An
            # unknown wait (no service time seen yet) is not known to be longer.
            at_primary = wait + self.primary.expected_latency_s(now) if math.isfinite(wait) else 0.0
            fits = [
                t
                for t in fits
                if not t.probably_cold(now) or t.expected_latency_s(now) < at_primary
            ]
        else:
            fits = fits or overflow
        warm = [t for t in fits if not t.probably_cold(now)]
        if warm or fits:
            return (warm or fits)[0], Reason.SPILL
        if left is not None and math.isfinite(wait) and wait > left:
            raise QueueFull(
                f"backend {self.primary.name!r} cannot start the request within its deadline "
                "and no overflow backend is expected to answer in time",
                retry_after_s=max(1.0, wait),
            )
        return self.primary, Reason.PRIMARY

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        target, reason = self.decide(ctx)
        if target is self.primary or self.primary not in self.usable():
            return await self.attempts.run(target, request, ctx, reason)
        try:
            return await self.attempts.run(target, request, ctx, reason)
        except InferGWError as exc:
            if not outcome_of(exc, remaining_s(ctx.deadline, self.attempts.clock)).moves_on:
                raise
        return await self.attempts.run(self.primary, request, ctx, Reason.FALLBACK)

    def _prewarm_if_pressed(self, wait: float, now: float) -> None:
        if self.prewarm is None or wait <= self.prewarm_fraction * self.max_queue_wait_s:
            return
        for target in self.overflow:
            if target.probably_cold(now):  # cold, or every warm instance busy
                self.prewarm.prewarm(target.name, target.load.in_flight + 1)

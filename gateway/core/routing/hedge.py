"""``hedge``: the first member; if it has not answered within the delay, the next as well.

The delay is ``delay_ms``, or with ``"p95"`` the first member's observed 95th percentile
of service time (no hedging until ``LatencyWindow.min_samples`` are known). First success
wins; the others are cancelled and awaited, so their backends see the cancellation (gRPC
cancel, aiohttp close) and their Server-Timing entries are kept. A member that fails for
what another may serve starts the next at once (``reason=fallback``, outside the budget);
an internal error waits for the others still running; the client's own error ends the
request. Hedges are at most ``budget_percent`` of requests (``HedgeBudget``).

Beyond peers: Envoy hedges only on a per-try timeout (its unconditional hedging is not
implemented, envoy#20036) and Python grpcio cannot hedge at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.routing.attempts import Attempts, Target
from infergw.gateway.core.routing.budget import HedgeBudget
from infergw.gateway.core.routing.clock import remaining_s
from infergw.gateway.core.routing.decisions import Reason
from infergw.gateway.core.routing.outcomes import Outcome, outcome_of
from infergw.gateway.core.routing.route import Route
from infergw.vocab.errors import InferGWError
from infergw.vocab.types import InferRequest, InferResponse

P95 = 0.95
_KEEP_WAITING = (Outcome.OUTAGE, Outcome.OVERLOAD, Outcome.FAULT)


class Hedge(Route):
    def __init__(
        self,
        targets: Sequence[Target],
        delay_s: float | None,
        attempts: Attempts,
        budget: HedgeBudget | None = None,
    ) -> None:
        """``delay_s`` None: the first member's observed p95."""
        super().__init__(targets, attempts)
        self.fixed_delay_s = delay_s
        self.budget = budget or HedgeBudget()

    def delay_s(self, first: Target) -> float | None:
        """How long to wait for ``first`` before hedging (None: do not hedge)."""
        if self.fixed_delay_s is not None:
            return self.fixed_delay_s
        return first.service_times.quantile(P95)

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        waiting = list(self.usable())
        delay = self.delay_s(waiting[0])
        self.budget.deposit()
        running: dict[asyncio.Task[InferResponse], int] = {}  # -> the member's place
        timer: asyncio.Task[None] | None = None
        failed: dict[int, InferGWError] = {}
        members = len(waiting)

        def start(reason: Reason) -> None:
            target = waiting.pop(0)
            attempt = self.attempts.run(target, request, ctx, reason)
            running[asyncio.get_running_loop().create_task(attempt)] = members - len(waiting) - 1

        start(Reason.PRIMARY)
        try:
            while running:
                if timer is None and waiting and delay is not None:
                    timer = asyncio.get_running_loop().create_task(self.attempts.clock.sleep(delay))
                pending: set[asyncio.Task[InferResponse] | asyncio.Task[None]] = set(running)
                if timer is not None:
                    pending.add(timer)
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in running.keys() & done:
                    place = running.pop(task)
                    error = task.exception()
                    if error is None:
                        return task.result()
                    if not isinstance(error, InferGWError):
                        raise error
                    outcome = outcome_of(error, remaining_s(ctx.deadline, self.attempts.clock))
                    if outcome not in _KEEP_WAITING:
                        raise error
                    failed[place] = error
                    if outcome.moves_on and waiting:
                        start(Reason.FALLBACK)
                        _cancel(timer)  # the next hedge waits from this start
                        timer = None
                if timer is not None and timer in done:
                    timer = None
                    if waiting and self.budget.withdraw():
                        start(Reason.HEDGE)
                    else:
                        delay = None  # out of budget: no more hedges for this request
            raise failed[max(failed)]  # as fallback: the last member's error
        finally:
            _cancel(timer)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)


def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()

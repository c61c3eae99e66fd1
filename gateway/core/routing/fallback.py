"""``fallback``: the members in order; the next one only for what it may serve instead.

Moves on for UNAVAILABLE, RESOURCE_EXHAUSTED (throttling, a full queue) and a per-try
DEADLINE_EXCEEDED (``Outcome.moves_on``), and past ejected members; never for the
client's own errors, nor once the request's deadline has passed. Retries of one member
are its own retry policy's (inside its stack, within its budget). When every member
failed, the client gets the last member's error.
"""

from __future__ import annotations

from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.routing.attempts import Target
from infergw.gateway.core.routing.clock import remaining_s
from infergw.gateway.core.routing.decisions import Reason
from infergw.gateway.core.routing.outcomes import outcome_of
from infergw.gateway.core.routing.route import Route
from infergw.vocab.errors import InferGWError
from infergw.vocab.types import InferRequest, InferResponse


class Fallback(Route):
    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        *earlier, final = self.usable()
        for target in earlier:
            try:
                return await self.attempts.run(target, request, ctx, self._reason(target))
            except InferGWError as exc:
                left = remaining_s(ctx.deadline, self.attempts.clock)
                if not outcome_of(exc, left).moves_on:
                    raise
        return await self.attempts.run(final, request, ctx, self._reason(final))

    def _reason(self, target: Target) -> Reason:
        return Reason.PRIMARY if target is self.targets[0] else Reason.FALLBACK

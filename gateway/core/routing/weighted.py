"""``weighted``: a split by weight over the members not ejected.

A request with an id goes where its id hashes (weighted rendezvous hashing: the member
with the highest ``-weight / ln(u)``, ``u`` uniform from a hash of id and member), so a
client's retries of one request land on the same backend, and ejecting a member moves
only that member's share. A request without an id is split at random (``rng``).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence

from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.routing.attempts import Attempts, Target
from infergw.gateway.core.routing.decisions import Reason
from infergw.gateway.core.routing.route import Route
from infergw.vocab.errors import InvalidArgument
from infergw.vocab.types import InferRequest, InferResponse


class Weighted(Route):
    def __init__(
        self,
        targets: Sequence[Target],
        weights: Mapping[str, int],
        attempts: Attempts,
        rng: random.Random | None = None,
    ) -> None:
        weighted = [t for t in targets if weights.get(t.name, 0) > 0]
        if not weighted:
            raise InvalidArgument(f"route {attempts.route!r}: no backend has a weight > 0")
        super().__init__(weighted, attempts)
        self.weights = {t.name: weights[t.name] for t in weighted}
        self.rng = rng or random.Random()

    def choose(self, request_id: str) -> Target:
        """The member for a request with ``request_id`` ("": none) among the usable ones."""
        usable = self.usable()
        if not request_id:
            weights = [self.weights[t.name] for t in usable]
            return self.rng.choices(usable, weights=weights)[0]
        return max(usable, key=lambda t: _score(request_id, t.name, self.weights[t.name]))

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        target = self.choose(request.id)
        return await self.attempts.run(target, request, ctx, Reason.WEIGHTED)


def _score(request_id: str, member: str, weight: int) -> float:
    digest = hashlib.blake2b(f"{member}\0{request_id}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 2.0**64  # in (0, 1)
    return -weight / math.log(u)

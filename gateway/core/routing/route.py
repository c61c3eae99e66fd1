"""What every route policy shares: the ``Backend`` contract over its members.

A route policy is a backend (the router calls it like one) over named members that are
backends with their own policies. Inference is the policy's own; the other calls go to
the members: ready when one is, metadata from the first that answers. Members belong to
the router, which closes them; closing a route closes nothing.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

from infergw.gateway.core.backend import Backend, StreamingBackend
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.routing.attempts import Attempts, Target
from infergw.gateway.core.routing.outlier import ejected_error, eligible
from infergw.vocab.errors import InferGWError, InvalidArgument, Unavailable
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata, ModelStatistics


class Route(Backend):
    def __init__(self, targets: Sequence[Target], attempts: Attempts) -> None:
        if not targets:
            raise InvalidArgument(f"route {attempts.route!r} has no backends")
        self.targets = tuple(targets)
        self.attempts = attempts
        self.name = attempts.route

    @property
    def native_deadline(self) -> bool:
        return True  # each member's own stack enforces the deadline

    @property
    def streaming(self) -> StreamingBackend | None:
        """A stream is not replayable once sent: it goes to the first member, unrouted."""
        return self.targets[0].backend.streaming

    def usable(self, targets: Sequence[Target] | None = None) -> list[Target]:
        """``targets`` (default: all) without the ejected ones the route skips; none left
        is UNAVAILABLE saying when the first returns."""
        members = self.targets if targets is None else targets
        used, skipped = eligible(members, [t.outlier for t in members])
        if not used:
            raise ejected_error(min(skipped, key=lambda d: d.ejection_left_s()))
        return used

    @abstractmethod
    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        """The policy's decision and its attempts."""

    async def ready(self) -> bool:
        for target in self.targets:
            if await target.backend.ready():
                return True
        return False

    async def model_ready(self, model: str, version: str = "") -> bool:
        for target in self.targets:
            if await target.backend.model_ready(model, version):
                return True
        return False

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        error: InferGWError = Unavailable(f"route {self.name!r} has no backend to ask")
        for target in self.usable():
            try:
                return await target.backend.model_metadata(model, version)
            except Unavailable as exc:
                error = exc
        raise error

    async def model_statistics(self, model: str, version: str = "") -> list[ModelStatistics]:
        return await self.targets[0].backend.model_statistics(model, version)

    async def close(self) -> None:
        return None

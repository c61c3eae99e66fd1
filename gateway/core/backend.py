"""The backend contract, and the registry that finds backend kinds by entry point.

A backend is one small async object. Policies (admission, deadline, retry...)
wrap a backend and are backends themselves, so they compose::

    Admission(Attempt(TritonBackend(...)))

Backend kinds register under the ``infergw.backends`` entry-point group
(``triton = infergw.backends.triton:TritonBackend``); core never imports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from infergw.gateway.core.context import RequestContext
from infergw.vocab.errors import InvalidArgument, Unimplemented
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata, ModelStatistics

ENTRY_POINT_GROUP = "infergw.backends"


@runtime_checkable
class Backend(Protocol):
    name: str

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        """Run one inference. Raises only ``InferGWError`` subclasses."""
        ...

    async def ready(self) -> bool:
        """Whether the backend can take requests now."""
        ...

    async def model_ready(self, model: str, version: str = "") -> bool: ...

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata: ...

    async def close(self) -> None: ...


class BackendBase:
    """Defaults for the optional parts of the contract; subclasses override."""

    name: str

    async def model_statistics(self, model: str, version: str = "") -> list[ModelStatistics]:
        raise Unimplemented(f"backend {self.name!r} does not report statistics")

    async def close(self) -> None:
        return None


class BackendFactory(Protocol):
    """What an entry point must resolve to (usually the backend class itself)."""

    def from_config(cls, name: str, options: Mapping[str, Any]) -> Backend: ...


def load_backend_kind(kind: str) -> BackendFactory:
    """Resolve a backend kind (``triton``...) through the entry-point registry."""
    found = entry_points(group=ENTRY_POINT_GROUP).select(name=kind)
    for ep in found:
        factory: BackendFactory = ep.load()
        return factory
    known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    raise InvalidArgument(f"unknown backend kind {kind!r}; installed kinds: {', '.join(known)}")


def create_backend(name: str, kind: str, options: Mapping[str, Any]) -> Backend:
    return load_backend_kind(kind).from_config(name, options)

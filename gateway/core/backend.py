"""The backend contract, and the registry that finds backend kinds by entry point.

A backend is one small async object. Policies (admission, retry, deadline...)
wrap a backend and are backends themselves, so they compose::

    Admission(Retry(Attempt(TritonBackend(...))))

Backend kinds register under the ``infergw.backends`` entry-point group
(``triton = infergw.backends.triton:TritonBackend``); core never imports them.

Streaming is an optional capability: a backend whose server carries an inference
stream itself (Triton's ModelStreamInfer, where a decoupled model answers one request
with any number of responses) implements ``StreamingBackend``; ``Backend.streaming``
hands it out (``BackendBase``: the backend itself if it implements the Protocol), and
policies pass it on with their own part added (admission holds a slot per request).

A call credential that expires (Cloud Run's Google ID token) is another: a backend that
implements ``CredentialedBackend`` hands out the current one, so that a data plane
sending the calls itself (the native plane) can put it on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from infergw.gateway.core.context import RequestContext
from infergw.vocab.errors import InvalidArgument, Unimplemented
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata, ModelStatistics

ENTRY_POINT_GROUP = "infergw.backends"

Release = Callable[[], None]
"""Gives back what ``StreamingBackend.admit`` granted; called once per admitted request."""


class InferStream(Protocol):
    """One upstream stream a backend opened for a client's stream: messages both ways.

    Messages are serialized in the capability's ``encoding``; a response does not say
    which request it answers but by its content (the frontend reads it).
    """

    async def send(self, message: bytes) -> bool:
        """Write one request; False once the stream has ended (``responses`` says how)."""
        ...

    async def close_sending(self) -> None:
        """No more requests (half-close); responses to those in flight still come."""
        ...

    def responses(self) -> AsyncIterator[bytes]:
        """Each response as it arrives; ends with the stream, raises ``InferGWError`` if
        the stream fails."""
        ...

    def cancel(self) -> None:
        """End the stream now (the client went away); the server stops its requests."""
        ...


@runtime_checkable
class StreamingBackend(Protocol):
    """The optional capability to carry a client's inference stream upstream as a stream.

    ``encoding`` is the ``RawMessage.encoding`` of its messages (``oip-grpc``); a
    frontend forwards a client's stream only to a backend speaking the client's wire.
    """

    name: str
    encoding: str

    async def open_stream(self, ctx: RequestContext) -> InferStream:
        """A new stream carrying ``ctx.headers``, bounded by ``ctx.deadline``."""
        ...

    async def admit(self, ctx: RequestContext) -> Release:
        """Admit one request into a stream (policies: a slot, held until its last response)."""
        ...

    async def needs_stream(self, model: str) -> bool:
        """Whether ``model``'s requests must travel on a stream (a decoupled model answers
        any number of responses); the others go as ModelInfer calls."""
        ...


@dataclasses.dataclass(frozen=True)
class CallCredential:
    """What every call to a backend carries in ``header``: ``value`` (never shown) until
    ``good_until`` (unix time)."""

    header: str
    value: str = dataclasses.field(repr=False)
    good_until: float


@runtime_checkable
class CredentialedBackend(Protocol):
    """The optional capability of a backend whose calls carry a credential that expires."""

    name: str

    async def call_credential(self) -> CallCredential:
        """The credential to send now, fetched or refreshed as needed (before it expires,
        so that asking now and then keeps it fresh); ``Unavailable`` if none can be had."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Everything the router (and through it the frontends) calls on a backend.

    Every method raises only ``InferGWError`` subclasses: a backend maps its
    dependency's errors into the tree once, at its own boundary.
    """

    name: str
    """The configured name: metric and span labels, ``x-infergw-backend`` pins."""

    @property
    def native_deadline(self) -> bool:
        """True when the transport enforces ``ctx.deadline`` itself (a gRPC deadline
        cancels the call), so ``Attempt`` needs no event-loop timer on top."""
        ...

    @property
    def streaming(self) -> StreamingBackend | None:
        """The streaming capability, through the policies; None: one request at a time."""
        ...

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        """Run one inference within ``ctx.deadline``, recording phases in ``ctx.timings``."""
        ...

    async def ready(self) -> bool:
        """Whether the backend can take requests now (server readiness)."""
        ...

    async def model_ready(self, model: str, version: str = "") -> bool:
        """Whether ``model`` can be served now."""
        ...

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        """Inputs/outputs of ``model``; ``ModelNotFound`` if the backend does not serve it."""
        ...

    async def model_statistics(self, model: str, version: str = "") -> list[ModelStatistics]:
        """Aggregate statistics (Triton's extension); ``Unimplemented`` where there are none."""
        ...

    async def close(self) -> None:
        """Release connections and clients; the backend is not used afterwards."""
        ...


class BackendBase(Backend):
    """Defaults for the optional parts of the contract; subclasses implement the rest."""

    name: str
    native_deadline: bool = False
    # Serverless: instances scale to zero and start cold. The router keeps a warm-state
    # estimate (``warmth.WarmthEstimator``) for such a backend; always-on ones need none.
    scales_to_zero: bool = False

    @property
    def streaming(self) -> StreamingBackend | None:
        return self if isinstance(self, StreamingBackend) else None

    async def model_statistics(self, model: str, version: str = "") -> list[ModelStatistics]:
        raise Unimplemented(f"backend {self.name!r} does not report statistics")

    async def close(self) -> None:
        return None


class BackendFactory(Protocol):
    """What an entry point must resolve to (usually the backend class itself)."""

    def from_config(self, name: str, options: Mapping[str, Any]) -> Backend: ...


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

"""The inference service every frontend drives; frontends only convert wire formats.

One request lifecycle serves every gRPC inference path (OIP ModelInfer, each message
of ModelStreamInfer, TF Serving Predict): a frontend builds a context, hands over the
request's bytes with its codec's ``decode``/``encode``, and renders the outcome::

    ctx = service.new_context(protocol, headers, timeout_s)
    result, entries = await service.serve(ctx, payload, decode, encode)
    # result: the encoded response, or the InferGWError to answer with;
    # entries: the Server-Timing breakdown (``total`` included), on every outcome

``serve`` never raises but for cancellation: an unexpected exception becomes a
generic INTERNAL error carrying an id that is also logged (``error_of``), and every
request is counted in the metrics once, with its status (``finish``). The REST
frontend reads its body asynchronously and times phases as spans, so it runs the same
steps itself (``new_context``, ``validate``, ``infer``, ``error_of``, ``finish``).
Calls other than inference are guarded by each frontend's boundary, which maps errors
with ``error_of`` and counts the failed ones with ``count_failed``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TypeAlias, TypeVar

from infergw.gateway.core import tracing
from infergw.gateway.core.backend import StreamingBackend
from infergw.gateway.core.config import LimitsConfig
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.control import ControlPlane
from infergw.gateway.core.metrics import GatewayMetrics
from infergw.gateway.core.router import Router
from infergw.vocab.datatypes import validate_tensor
from infergw.vocab.errors import InferGWError, InvalidArgument, PayloadTooLarge
from infergw.vocab.timing import TimingEntry, Timings
from infergw.vocab.types import SHARED_MEMORY_REGION, InferRequest, InferResponse

log = logging.getLogger(__name__)

PIN_HEADER = "x-infergw-backend"
VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data", "statistics", "model_repository", "server_timing")
OTHER_MODEL = "_other"  # the metric label of every model without a route of its own
NO_BACKEND = "none"  # the backend label of a call no backend answered

T = TypeVar("T")


# What ``serve`` hands back: (the encoded response or the error to answer with, the
# Server-Timing entries). A plain tuple: it is made once per request on the hot path.
Outcome: TypeAlias = tuple[T | InferGWError, tuple[TimingEntry, ...]]


class InferenceService:
    def __init__(
        self,
        router: Router,
        metrics: GatewayMetrics | None = None,
        limits: LimitsConfig | None = None,
        server_name: str = "infergw",
    ) -> None:
        self.router = router
        self.metrics = metrics or GatewayMetrics()
        self.limits = limits or LimitsConfig()
        self.server_name = server_name
        self.version = VERSION
        self.extensions = EXTENSIONS
        self.draining = False  # set on shutdown: not ready, while in-flight calls finish

    def new_context(
        self,
        protocol: str,
        headers: Mapping[str, str],
        timeout_s: float | None = None,
        timings: Timings | None = None,
    ) -> RequestContext:
        """``headers`` are the request's lower-cased metadata/HTTP headers."""
        ctx = RequestContext(protocol=protocol, timings=timings or Timings())
        ctx.with_timeout(timeout_s)
        ctx.pinned_backend = headers.get(PIN_HEADER) or None
        ctx.headers.update(tracing.trace_context(headers))  # invalid ones are ignored (W3C)
        return ctx

    def check_size(self, size: int, what: str = "request message") -> None:
        if size > self.limits.max_message_bytes:
            raise PayloadTooLarge(what, size, self.limits.max_message_bytes)

    def validate(self, request: InferRequest) -> None:
        """The request's checks, the model's route first: an unknown model is 404 before
        anything about its inputs, as Triton answers. An empty request to a backend with
        Triton's control plane goes on: Triton tells an unknown model (404) from a known
        one (its own 400). An input in shared memory (Triton's extension) has no data
        here: the backend reads it from the region."""
        if not request.model:
            raise InvalidArgument("model name is required")
        backend = self.router.backend_name(request.model)
        if not request.inputs:
            if self._is_triton(backend):
                return
            raise InvalidArgument("request has no inputs")
        seen: set[str] = set()
        for tensor in request.inputs:
            if tensor.name in seen:
                raise InvalidArgument(f"input {tensor.name!r} is given more than once")
            seen.add(tensor.name)
            if SHARED_MEMORY_REGION not in tensor.parameters:
                validate_tensor(tensor)
            elif not self._is_triton(backend):
                raise InvalidArgument(
                    f"input {tensor.name!r} is in shared memory, which only a Triton backend "
                    f"reads; model {request.model!r} is routed to {backend!r}"
                )

    def _is_triton(self, backend: str) -> bool:
        """Whether ``backend`` has Triton's control plane (and checks requests itself)."""
        return isinstance(self.router.unwrapped.get(backend), ControlPlane)

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        return await self.router.infer(request, ctx)

    def stream_backend(self, model: str, pinned: str | None) -> StreamingBackend | None:
        """The streaming capability of ``model``'s backend, policies included; None when
        the backend serves one request at a time or the model cannot be routed (then the
        request's own lifecycle, ``serve``, answers with the routing error)."""
        try:
            return self.router.select(model, pinned).streaming
        except InferGWError:
            return None

    async def serve(
        self,
        ctx: RequestContext,
        payload: bytes,
        decode: Callable[[bytes], InferRequest],
        encode: Callable[[InferResponse, InferRequest], T],
    ) -> Outcome[T]:
        """One inference request, raw bytes in: decode + validate, the routed call, encode.

        Under the request's SERVER span (continuing the client's trace), which covers
        decoding too so that a request failing there is marked as well. Phases are
        timed with perf_counter pairs, not context managers: this is the per-request
        hot path and every microsecond here is gateway overhead. A cancelled request
        (the client went away) is counted as CANCELLED and the cancellation goes on.
        """
        timings = ctx.timings
        model = ""
        status: str | None = None
        try:
            with tracing.server_span("", ctx.protocol, ctx.headers) as span:
                try:
                    try:
                        self.check_size(len(payload))
                        request = decode(payload)
                        model = request.model
                        self.validate(request)
                    finally:
                        timings.add_since("decode", timings.started)
                    tracing.set_model(span, model, self.router.is_known(model))
                    response = await self.infer(request, ctx)
                    encode_t0 = time.perf_counter()
                    body = encode(response, request)
                    timings.add_since("encode", encode_t0)
                    status = "OK"
                    return body, self.finish(model, ctx, status)
                except Exception as exc:
                    error = self.error_of(exc, ctx.protocol, "inference", model)
                    tracing.record_error(span, exc)
                    status = error.grpc_code
                    return error, self.finish(model, ctx, status)
        finally:
            if status is None:  # cancelled: no outcome, but counted
                self.finish(model, ctx, "CANCELLED")

    def finish(self, model: str, ctx: RequestContext, status: str) -> tuple[TimingEntry, ...]:
        """Close the request: add ``total`` (naming the backend that answered, for the
        SDK and the load generator), record metrics, return all entries."""
        answered = ctx.backend_name if status == "OK" else None
        ctx.timings.add(
            "total", ctx.timings.elapsed_ms(), f"backend={answered}" if answered else ""
        )
        entries = ctx.timings.entries
        label = self.model_label(model)
        self.metrics.observe(label, ctx.backend_name or NO_BACKEND, ctx.protocol, status, entries)
        return entries

    def model_label(self, model: str) -> str:
        """The model's metric label: its name if it has a route, else ``_other`` (bounded)."""
        return model if self.router.is_known(model) else OTHER_MODEL

    def error_of(self, exc: Exception, protocol: str, method: str, model: str = "") -> InferGWError:
        """The error a client is answered with: ours as is; anything else a generic INTERNAL.

        An unexpected exception is logged with its traceback under a fresh error id that
        the client's message carries too, so a report can be matched to the log line;
        its text (which may hold paths, hosts or secrets) reaches the log only.
        """
        if isinstance(exc, InferGWError):
            return exc
        error_id = secrets.token_hex(8)
        log.error(
            "internal error (id %s) in %s %s, model %r",
            error_id,
            protocol,
            method,
            model,
            exc_info=exc,
        )
        return InferGWError(f"internal error (id {error_id})")

    def count_failed(self, model: str, protocol: str, status: str) -> None:
        """Count a failed call other than an inference (which ``finish`` counts)."""
        self.metrics.observe(self.model_label(model), NO_BACKEND, protocol, status, ())

    async def server_ready(self) -> bool:
        return not self.draining and await self.router.ready()

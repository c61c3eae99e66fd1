"""The inference service every frontend drives; frontends only convert wire formats.

A frontend's infer handler reads::

    ctx = service.new_context(protocol, headers, timeout_s)
    with ctx.timings.measure("decode"):
        request = <wire -> InferRequest>
        service.validate(request)
    response = await service.infer(request, ctx)      # queue, backend, ... recorded
    with ctx.timings.measure("encode"):
        <InferResponse -> wire>
    service.finish(request.model, ctx, status)        # total + metrics; returns entries

``finish`` must run on every path, errors included, so metrics count failures.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager

from opentelemetry.trace import Span

from infergw.gateway.core import tracing
from infergw.gateway.core.config import LimitsConfig
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.metrics import GatewayMetrics
from infergw.gateway.core.router import Router
from infergw.vocab.datatypes import validate_tensor
from infergw.vocab.errors import InvalidArgument, PayloadTooLarge
from infergw.vocab.timing import TimingEntry, Timings
from infergw.vocab.types import InferRequest, InferResponse

PIN_HEADER = "x-infergw-backend"
VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data", "statistics", "model_repository", "server_timing")


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
        traceparent = headers.get("traceparent")
        if traceparent:
            ctx.headers["traceparent"] = traceparent
            state = headers.get("tracestate")
            if state:
                ctx.headers["tracestate"] = state
        return ctx

    def check_size(self, size: int, what: str = "request message") -> None:
        if size > self.limits.max_message_bytes:
            raise PayloadTooLarge(what, size, self.limits.max_message_bytes)

    def validate(self, request: InferRequest) -> None:
        if not request.model:
            raise InvalidArgument("model name is required")
        if not request.inputs:
            raise InvalidArgument("request has no inputs")
        seen: set[str] = set()
        for tensor in request.inputs:
            if tensor.name in seen:
                raise InvalidArgument(f"input {tensor.name!r} is given more than once")
            seen.add(tensor.name)
            validate_tensor(tensor)

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        return await self.router.infer(request, ctx)

    def finish(self, model: str, ctx: RequestContext, status: str) -> tuple[TimingEntry, ...]:
        """Close the request: add ``total``, record metrics, return all entries."""
        ctx.timings.add("total", ctx.timings.elapsed_ms())
        entries = ctx.timings.entries
        label = model if self.router.is_known(model) else "_other"
        self.metrics.observe(label, ctx.backend_name or "none", ctx.protocol, status, entries)
        return entries

    async def server_ready(self) -> bool:
        return await self.router.ready()

    def server_span(self, model: str, ctx: RequestContext) -> AbstractContextManager[Span]:
        return tracing.server_span(model, ctx.protocol, ctx.headers)

"""One inference request over HTTP, whatever the API (OIP REST infer, TF Serving REST
predict): the request lifecycle around the API's own work, in one place.

A context from the propagated headers (pinning, W3C trace context), a SERVER span
continuing the client's trace, the API's own error shape for any failure (the error
mapped and counted once, an unexpected one with its error id), and the Server-Timing
header on every answer, errors included. A client that goes away is CANCELLED.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from infergw.gateway.core import tracing
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.service import PIN_HEADER, InferenceService
from infergw.vocab.errors import InferGWError
from infergw.wire.server_timing import format_server_timing

# Request headers handed to ``new_context`` (aiohttp looks them up case-insensitively).
PROPAGATED_HEADERS = (PIN_HEADER, "traceparent", "tracestate")

Run = Callable[[RequestContext], Awaitable[web.Response]]
ErrorResponse = Callable[[InferGWError], web.Response]


def propagated(request: web.Request) -> dict[str, str]:
    headers = request.headers
    return {name: headers[name] for name in PROPAGATED_HEADERS if name in headers}


async def serve_http(
    request: web.Request,
    service: InferenceService,
    protocol: str,
    method: str,
    model: str,
    run: Run,
    error_response: ErrorResponse,
) -> web.Response:
    """``run(ctx)`` as one traced, counted request; errors answered by ``error_response``."""
    ctx = service.new_context(protocol, propagated(request))
    status = "CANCELLED"  # unless we get to set something else: the client went away
    try:
        routed = service.router.is_known(model)
        with tracing.server_span(model, protocol, ctx.headers, routed) as span:
            try:
                response = await run(ctx)
                status = "OK"
            except Exception as exc:
                error = service.error_of(exc, protocol, method, model)
                tracing.record_error(span, exc)
                response, status = error_response(error), error.grpc_code
    finally:
        entries = service.finish(model, ctx, status)
    response.headers["Server-Timing"] = format_server_timing(entries)
    return response

"""Open Inference Protocol v2 over HTTP (aiohttp), wire-compatible with ``tritonclient.http``.

Handlers are thin: the wire work lives in ``oip_json``, the request flow in
``InferenceService`` (see its module docstring). Every error leaves in OIP's shape,
``{"error": "<message>"}`` with the error's HTTP status; infer responses, errors
included, carry the gateway's ``Server-Timing`` breakdown. One middleware, the
outermost, is the error boundary of every route (starlette's ServerErrorMiddleware):
an unexpected exception is a 500 whose message carries an error id that is logged
with the traceback, never the exception's text; failed calls are counted and their
span marked. The infer handler answers its own errors (for Server-Timing) the same way.

Request bodies may be gzip/deflate compressed (``tritonclient.http`` can do that):
the frontend inflates them itself (serve the app with ``SITE_OPTIONS``), and the size
limit applies to the inflated body. Responses are compressed only when the client asks
with ``Accept-Encoding``. Bodies over 1 MB are inflated, decoded and encoded in a worker
thread so the event loop (which also serves gRPC) keeps answering small calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.payload import Payload
from aiohttp.typedefs import Middleware
from opentelemetry.trace import Span

from infergw.gateway.core import tracing
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.service import PIN_HEADER, InferenceService
from infergw.gateway.frontends import control_rest, tfserving_rest
from infergw.gateway.frontends.control_rest import RestControl
from infergw.gateway.frontends.http_call import propagated, serve_http
from infergw.gateway.sites import SiteOptions
from infergw.vocab.errors import (
    InferGWError,
    InvalidArgument,
    PayloadTooLarge,
)
from infergw.vocab.types import InferRequest
from infergw.wire.oip_json import (
    HEADER_LENGTH,
    BodyParts,
    decode_infer_request,
    encode_infer_response_parts,
    json_output_bytes,
    metadata_to_json,
)

log = logging.getLogger(__name__)

SERVICE = web.AppKey("infergw_service", InferenceService)
PROTOCOL = "rest"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# How a site must serve this app: bodies reach ``_read_body`` as sent (see there), and a
# request aiohttp cannot parse (two Content-Type headers...) is answered in OIP's shape.
SITE_OPTIONS = SiteOptions(
    auto_decompress=False, error_response=lambda status, message: _json_error(status, message)
)
# Bodies above this size are inflated, parsed and built in a worker thread, so the
# event loop keeps serving small calls (a 16 MB JSON body held a gRPC call ~0.9 s).
_INLINE_BYTES = 1 << 20


def create_rest_app(
    service: InferenceService, outer_middlewares: Sequence[Middleware] = ()
) -> web.Application:
    """The REST app; ``outer_middlewares`` run before everything else (authentication)."""
    # aiohttp rejects bodies strictly larger than client_max_size, as check_size does.
    app = web.Application(
        client_max_size=service.limits.max_message_bytes,
        middlewares=[*outer_middlewares, _boundary],
        handler_args={"logger": _ServerLog(logging.getLogger("aiohttp.server"), {})},
    )
    app[SERVICE] = service
    get = partial(app.router.add_get, expect_handler=_expect)
    post = partial(app.router.add_post, expect_handler=_expect)
    get("/v2/health/live", _live)
    get("/v2/health/ready", _ready)
    # Metadata, statistics, repository, config, trace, log, shared memory (control_rest.py);
    # first, so that "/v2/models/stats" is not taken for a model named "stats".
    for method, path, handler in RestControl(service, _read_body).routes():
        app.router.add_route(method, path, handler, expect_handler=_expect)
    for prefix in (control_rest.MODELS, control_rest.VERSIONS):
        get(prefix, _model_metadata)
        get(prefix + "/ready", _model_ready)
        post(prefix + "/infer", _infer)
    # Triton routes integer versions only; any other is 404, here so that the Expect
    # header is checked as on every route (aiohttp's own 404 echoes it unchecked).
    app.router.add_route("*", control_rest.OTHER_VERSIONS, _not_found, expect_handler=_expect)
    for method, path, handler in tfserving_rest.routes(service, _read_body):  # TF Serving REST
        app.router.add_route(method, path, handler, expect_handler=_expect)
    return app


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` as aiohttp does; any other value a 417 in OIP's shape.

    aiohttp's own handler echoes the value into a text body, and a value that is not
    UTF-8 made that a 500 (it runs outside the middlewares).
    """
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the body proper has not started
        return None
    return _json_error(417, "unsupported Expect header: only 100-continue is supported")


# -- inference -------------------------------------------------------------------------


@tracing.traces_itself
async def _infer(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    model, version = _model_and_version(request)

    def run(ctx: RequestContext) -> Awaitable[web.Response]:
        return _run_infer(request, service, ctx, model, version)

    return await serve_http(request, service, PROTOCOL, "infer", model, run, _error_response)


async def _run_infer(
    request: web.Request, service: InferenceService, ctx: RequestContext, model: str, version: str
) -> web.Response:
    body = await _read_body(request, service)  # transfer: part of total, not of decode
    with _phase(ctx, "decode"):
        _check_trace_headers(request)
        header_length = _header_length(request)
        # Only JSON costs CPU to decode: binary tensors stay views of the body.
        if (len(body) if header_length is None else header_length) > _INLINE_BYTES:
            infer_request = await asyncio.to_thread(
                _decode, service, model, version, body, header_length
            )
        else:
            infer_request = _decode(service, model, version, body, header_length)
        del body  # JSON tensors are decoded copies: let the body go (binary ones keep views)
        ctx.with_timeout(_timeout_s(infer_request))
    infer_response = await service.infer(infer_request, ctx)
    with _phase(ctx, "encode"):
        if json_output_bytes(infer_response, infer_request) > _INLINE_BYTES:
            encoded = await asyncio.to_thread(
                encode_infer_response_parts, infer_response, infer_request
            )
        else:
            encoded = encode_infer_response_parts(infer_response, infer_request)
        del infer_response
        parts, header_length = encoded
        if header_length is None:
            response = web.Response(body=parts[0], content_type="application/json")
        else:
            response = web.Response(body=_Parts(parts), content_type="application/octet-stream")
            response.headers[HEADER_LENGTH] = str(header_length)
        _maybe_compress(request, response)
    return response


class _Parts(Payload):
    """A body sent part by part: binary tensors go out from the buffers the backend's
    reply left them in, never joined with the JSON header into one more copy."""

    def __init__(self, parts: BodyParts) -> None:
        super().__init__(parts, content_type="application/octet-stream")
        self._size = sum(len(part) for part in parts)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        for part in self._value:
            await writer.write(part)


def _decode(
    service: InferenceService,
    model: str,
    version: str,
    body: bytes | bytearray,
    header_length: int | None,
) -> InferRequest:
    infer_request = decode_infer_request(model, version, body, header_length)
    service.validate(infer_request)
    return infer_request


@contextmanager
def _phase(ctx: RequestContext, name: str) -> Iterator[None]:
    """Times a phase into ``Server-Timing`` and traces it as a child span."""
    with ctx.timings.measure(name), tracing.phase_span(name):
        yield


async def _read_body(request: web.Request, service: InferenceService) -> bytes | bytearray:
    """The (inflated) body, refusing oversized ones before reading them when we can.

    The site serves this app with ``auto_decompress=False`` (``SITE_OPTIONS``) and the
    body is inflated here: aiohttp's parser cannot recover from a body that is not the
    gzip it claims to be, so it dropped the keep-alive connection after a 500. Read raw,
    a bad body is a 400 and the connection stays usable.
    """
    limit = service.limits.max_message_bytes
    if request.content_length is not None:
        service.check_size(request.content_length, "request body")
    body = await _read_raw(request, limit)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise InvalidArgument(
            f"unsupported Content-Encoding {encoding[:32]!r}: use gzip or deflate"
        )
    if len(body) > _INLINE_BYTES:
        return await asyncio.to_thread(_inflate, body, wbits, encoding, limit)
    return _inflate(body, wbits, encoding, limit)


async def _read_raw(request: web.Request, limit: int) -> bytearray:
    """The body as sent, in one buffer sized from Content-Length when there is one.

    Not ``request.read()``: that grows a buffer, copies it into bytes and keeps the copy
    for the request's lifetime, about 3x the body at its peak for a large body. Each
    chunk is copied once, straight from the socket's reads into the buffer.
    """
    stream = request.content
    size = request.content_length
    if size is not None:
        body = bytearray(size)
        view, filled = memoryview(body), 0
        while filled < size:
            chunk, _ = await stream.readchunk()  # as received: readany() joins them first
            if not chunk:
                raise InvalidArgument(f"request body ended after {filled} of {size} bytes")
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        return body
    body = bytearray()
    while chunk := await stream.readany():  # chunked transfer encoding
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge("request body", None, limit)
    return body


# zlib's wbits per Content-Encoding: gzip framing; zlib framing (RFC 9110's "deflate").
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _inflate(body: bytearray, wbits: int, encoding: str, limit: int) -> bytes:
    """Inflate at most ``limit`` bytes (a zip bomb stops there); anything malformed is a 400."""
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        if wbits == zlib.MAX_WBITS:  # some clients send raw deflate for "deflate"
            return _inflate(body, -zlib.MAX_WBITS, encoding, limit)
        raise InvalidArgument(f"request body is not valid {encoding} data") from exc
    if len(data) > limit:
        raise PayloadTooLarge("request body", None, limit)
    if not inflater.eof or inflater.unused_data:
        raise InvalidArgument(
            f"request body is not valid {encoding} data (truncated or trailing bytes)"
        )
    return data


def _check_trace_headers(request: web.Request) -> None:
    """W3C trace headers are ASCII; a non-ASCII one is the client's mistake (gRPC refuses it)."""
    for name in ("traceparent", "tracestate"):
        value = request.headers.get(name)
        if value is not None and not value.isascii():
            raise InvalidArgument(f"header {name!r} must be ASCII (W3C Trace Context)")


def _header_length(request: web.Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"{HEADER_LENGTH} must be an integer, got {value[:32]!r}") from None


def _timeout_s(request: InferRequest) -> float | None:
    """Triton's ``timeout`` request parameter, in microseconds; 0 or absent: none."""
    value = request.parameters.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument("parameter 'timeout' must be a non-negative integer (microseconds)")
    return value / 1e6 if value else None


def _maybe_compress(request: web.Request, response: web.Response) -> None:
    accepted = request.headers.get("Accept-Encoding", "")
    if "gzip" in accepted or "deflate" in accepted:
        response.enable_compression()


# -- health, metadata, statistics, repository ----------------------------------------------


async def _not_found(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


async def _live(request: web.Request) -> web.Response:
    return web.Response()


async def _ready(request: web.Request) -> web.Response:
    ready = await request.app[SERVICE].server_ready()
    return web.Response() if ready else _json_error(503, "server is not ready")


async def _model_metadata(request: web.Request) -> web.Response:
    model, version = _model_and_version(request)
    router = request.app[SERVICE].router
    metadata = await router.model_metadata(model, version, request.headers.get(PIN_HEADER))
    return web.json_response(metadata_to_json(metadata))


async def _model_ready(request: web.Request) -> web.Response:
    """200 when ready; 400 when not (as Triton does); 404 for a model with no route."""
    model, version = _model_and_version(request)
    router = request.app[SERVICE].router
    router.route_for(model)
    if await router.model_ready(model, version, request.headers.get(PIN_HEADER)):
        return web.Response()
    return _json_error(400, f"model {model!r} is not ready")


# -- errors and helpers ------------------------------------------------------------------


@web.middleware
async def _boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost error boundary: every error in OIP's shape, failed calls counted.

    Each route runs under a SERVER span of its own, named by the route's template (so
    names stay few), except those that open, mark and count their own (infer, predict).
    """
    if tracing.is_self_traced(request.match_info.handler):
        return await _answer_errors(request, handler, None, "infer")
    resource = request.match_info.route.resource
    name = f"{request.method} {resource.canonical}" if resource is not None else request.method
    with tracing.call_span(name, PROTOCOL, propagated(request)) as span:
        return await _answer_errors(request, handler, span, name)


async def _answer_errors(
    request: web.Request, handler: Handler, span: Span | None, name: str
) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        service = request.app[SERVICE]
        model, _ = _model_and_version(request)
        error: InferGWError
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            error = PayloadTooLarge("request body", None, service.limits.max_message_bytes)
        elif isinstance(exc, web.HTTPException):
            if exc.status < 400:
                raise
            # aiohttp's own answers (no such route, method not allowed): not our calls
            return _json_error(exc.status, exc.reason, exc.headers)
        else:
            error = service.error_of(exc, PROTOCOL, name, model)
        if span is not None:
            tracing.record_error(span, exc)
            service.count_failed(model, PROTOCOL, error.grpc_code)
        return _error_response(error)


def _error_response(exc: InferGWError) -> web.Response:
    response = _json_error(exc.http_status, exc.message)
    if exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return response


def _json_error(status: int, message: str, headers: Any = None) -> web.Response:
    response = web.json_response({"error": message}, status=status)
    if headers:
        for name in ("Allow", "Retry-After"):
            if name in headers:
                response.headers[name] = headers[name]
    return response


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, but a client's malformed request is one WARNING line.

    aiohttp logs every unparsable request (bad header token, duplicate Content-Type...)
    with a traceback at ERROR; that is the client's mistake, not ours, and the raw bytes
    in the message may hold a payload or a credential, so only the first line is kept,
    and only when it quotes none of them.
    """

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if not isinstance(exc, HttpProcessingError):
            self.logger.error(msg, *args, exc_info=exc_info, **kwargs)
            return
        first = str(exc.message).partition("\n")[0].strip()
        if len(first) > 100 or "b'" in first or 'b"' in first:  # it quotes raw bytes
            first = ""
        self.logger.warning(
            "malformed HTTP request from %s answered %s (%s%s)",
            args[0] if args else "?",
            exc.code,
            type(exc).__name__,
            f": {first}" if first else "",
        )


def _model_and_version(request: web.Request) -> tuple[str, str]:
    info = request.match_info
    return info.get("model", ""), info.get("version", "")


__all__ = ["SERVICE", "SITE_OPTIONS", "create_rest_app"]

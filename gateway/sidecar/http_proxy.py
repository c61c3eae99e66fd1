"""The REST half of the sidecar: an aiohttp reverse proxy for OIP or TF Serving over HTTP.

Every method, path, query and body is forwarded as is; bodies are bytes to the proxy
(the binary tensor extension included) and are never re-encoded or decompressed
(automatic decompression is off on both sides, so ``Content-Encoding`` stays true).
Request bodies up to ``STREAM_ABOVE`` are read at once (fewest round trips through the
event loop); larger or chunked ones are streamed upstream as they arrive. Responses
without a body, or with a known length up to ``BUFFER_RESPONSES_UP_TO``, are read whole so that
``Server-Timing`` (``total``, ``backend``) covers the full round trip; larger or
chunked ones are streamed, and their ``backend`` (``desc=headers``) ends at the
upstream's response headers, the last moment a header can still be sent. The bound is
1 MiB: reading a 5 MB answer whole before sending it on cost the client ~1.6 ms on the
native plane (bench/sidecar_rest_overhead.py, docs/native.md), to time what is a
loopback copy: Triton sends its headers once the answer is computed.

Inference calls (OIP's ``/infer``, TF Serving's ``:predict``/``:classify``/``:regress``)
are metered per model. Headers pass through minus hop-by-hop ones; upstream connections
are kept alive in a pool. Errors of the sidecar's own are in the shape OIP and TF
Serving share (``{"error": ...}``): body over ``max_message_bytes`` -> 413 naming the
limit, upstream unreachable -> 503, upstream dropping the connection before answering
-> 502.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from infergw.gateway.sidecar.metrics import BAD_GATEWAY, SidecarMetrics, http_status_label
from infergw.gateway.sidecar.spans import TRACE_KEYS, proxy_spans
from infergw.vocab.errors import PayloadTooLarge, Unavailable
from infergw.vocab.timing import Timings
from infergw.wire.server_timing import HEADER, format_server_timing

log = logging.getLogger(__name__)

STREAM_ABOVE = 1 << 20  # request bodies larger than this are streamed upstream
BUFFER_RESPONSES_UP_TO = 1 << 20  # the native plane's too (http_passthrough.rs)
CHUNK = 256 << 10
NO_BODY_STATUSES = frozenset({204, 304})  # answered whole, whatever their headers say
CONNECT_TIMEOUT_S = 5.0
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
# aiohttp's client adds these unless told not to; a proxy must send only the client's.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# The inference paths of each REST API a sidecar forwards, and their metrics' protocol:
# OIP's, and TF Serving's predict/classify/regress (its own URL patterns).
INFERENCE_PATHS = (
    (re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$"), "rest"),
    (
        re.compile(
            r"^/v1/models/([^/:]+)(?:/versions/\d+|/labels/[^/:]+)?:(?:predict|classify|regress)$"
        ),
        "tfserving-rest",
    ),
)


def inference_of(path: str) -> tuple[str, str] | None:
    """(model, protocol) when ``path`` is an inference call, else None."""
    for pattern, protocol in INFERENCE_PATHS:
        match = pattern.match(path)
        if match:
            return match.group(1), protocol
    return None


def _forwarded(headers: Any) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


class _Body:
    """A streamed request body, counted against the limit as it passes."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.too_large: PayloadTooLarge | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.request.content.iter_chunked(CHUNK):
            seen += len(chunk)
            if seen > self.limit:
                self.too_large = PayloadTooLarge("request body", None, self.limit)
                raise self.too_large
            yield chunk


class HttpProxy:
    """``app()`` is the aiohttp application; ``start()``/``close()`` own the client pool."""

    def __init__(self, upstream: str, metrics: SidecarMetrics, max_message_bytes: int) -> None:
        self.upstream = upstream
        self.base = f"http://{upstream}"
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60.0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            auto_decompress=False,
            skip_auto_headers=SKIP_AUTO_HEADERS,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_message_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        timings = Timings()
        inference = inference_of(request.path)
        model = inference[0] if inference else None
        status = "CANCELLED"  # unless something else is set: the client went away
        try:
            response = await self._forward(request, timings, model)
            status = http_status_label(response.status)
            return response
        except PayloadTooLarge as exc:
            status = exc.grpc_code
            return self._error(exc.http_status, exc.message, timings)
        # aiohttp's own text (addresses, OS errors) stays out of the answer, as on the
        # native plane: the client learns what happened, the log says how.
        except aiohttp.ClientConnectorError as exc:
            status = Unavailable.grpc_code
            log.info("upstream %s unreachable: %s", self.upstream, type(exc).__name__)
            message = f"infergw sidecar: upstream {self.upstream} is unreachable"
            return self._error(Unavailable.http_status, message, timings)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            status = Unavailable.grpc_code
            log.info("upstream %s closed the connection: %s", self.upstream, type(exc).__name__)
            message = f"infergw sidecar: upstream {self.upstream} closed the connection"
            return self._error(BAD_GATEWAY, message, timings)
        finally:
            self.metrics.observe_call(f"HTTP {request.method}", status)
            if inference is not None:
                self.metrics.observe_inference(model, inference[1], status, timings.entries)

    async def _forward(
        self, request: web.Request, timings: Timings, model: str | None
    ) -> web.StreamResponse:
        assert self._session is not None, "HttpProxy.start() was not called"
        headers = _forwarded(request.headers)
        length = request.content_length
        if length is not None and length > self.max_message_bytes:
            raise PayloadTooLarge("request body", length, self.max_message_bytes)
        body_stream: _Body | None = None
        data: Any = None
        if request.body_exists:
            if length is not None and length <= STREAM_ABOVE:
                data = await request.read()
            else:
                body_stream = _Body(request, self.max_message_bytes)
                data = body_stream.chunks()
        carrier = {k: v for k in TRACE_KEYS if (v := request.headers.get(k))}
        injected: dict[str, str] = {}
        attributes = {"http.request.method": request.method, "url.path": request.path}
        name = f"{request.method} {'infer' if model else request.path}"
        with proxy_spans(name, carrier, attributes, model, injected):
            headers.update(injected)
            t0 = time.perf_counter()
            try:
                upstream = await self._session.request(
                    request.method,
                    self.base + request.rel_url.raw_path_qs,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                )
            except Exception:
                if body_stream is not None and body_stream.too_large is not None:
                    raise body_stream.too_large from None
                raise
            try:
                return await self._respond(request, upstream, timings, t0)
            finally:
                upstream.release()

    async def _respond(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        timings: Timings,
        t0: float,
    ) -> web.StreamResponse:
        headers = _forwarded(upstream.headers)
        length = upstream.content_length
        bodiless = request.method == "HEAD" or upstream.status in NO_BODY_STATUSES
        if bodiless or (length is not None and length <= BUFFER_RESPONSES_UP_TO):
            body = await upstream.read()
            timings.add_since("backend", t0)
            timings.add("total", timings.elapsed_ms())
            _add_server_timing(headers, timings)
            if bodiless:  # the upstream's headers as they are (a HEAD's length included)
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=headers
                )
                await response.prepare(request)
                await response.write_eof()
                return response
            headers.popall("Content-Length", None)  # aiohttp sets it from the body
            return web.Response(
                status=upstream.status, reason=upstream.reason, body=body, headers=headers
            )
        timings.add_since("backend", t0, "headers")
        timings.add("total", timings.elapsed_ms(), "headers")
        _add_server_timing(headers, timings)
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            # Headers are out: all that is left is to cut the client's connection too,
            # which is what a direct client would have seen.
            log.warning("upstream %s closed the connection mid-body: %s", self.upstream, exc)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def _error(self, status: int, message: str, timings: Timings) -> web.Response:
        timings.add("total", timings.elapsed_ms())
        response = web.json_response({"error": message}, status=status)
        response.headers[HEADER] = format_server_timing(timings.entries)
        return response


def _add_server_timing(headers: CIMultiDict[str], timings: Timings) -> None:
    """The sidecar's entries as one more header after the upstream's (as on gRPC)."""
    headers.add(HEADER, format_server_timing(timings.entries))

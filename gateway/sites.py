"""Serve an aiohttp application on ``host:port`` and stop it in order.

Every HTTP endpoint of the project (the gateway's REST and metrics ports, the
sidecar's, the SageMaker container, the local Lambda and SageMaker stand-ins) runs
through ``AppSite``, so port 0 (a free port), the address to report, the connection
limits and the drain on stop work one way::

    async with AppSite(app, "127.0.0.1", 0) as site:
        print(site.url)  # http://127.0.0.1:PORT

A connection may not idle or stall forever: aiohttp's ``keepalive_timeout`` closes one
that has not sent a complete request head within ``idle_timeout_s`` of opening or of
its last response (idle keep-alive and slow headers alike), a body that makes no
progress for ``body_timeout_s`` is answered 408, and connections beyond
``max_connections`` get a 503 and are closed before they cost more than a descriptor.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from infergw.gateway.lifecycle import AsyncService
from infergw.gateway.tls import ServerTls

log = logging.getLogger(__name__)

# Builds the reply to a request aiohttp could not parse, from (status, message): a
# protocol's own error shape instead of aiohttp's text/plain.
ErrorResponse = Callable[[int, str], web.StreamResponse]


@dataclass(frozen=True, slots=True)
class SiteOptions:
    """How an app must be served, when its own code relies on it (the REST frontend)."""

    auto_decompress: bool = True
    error_response: ErrorResponse | None = None


IDLE_TIMEOUT_S = 75.0  # longer than a load balancer's idle timeout (AWS ALB: 60 s)
BODY_TIMEOUT_S = 60.0  # nginx's client_body_timeout
SHUTDOWN_TIMEOUT_S = 30.0  # Kubernetes' default terminationGracePeriodSeconds
LOG_INTERVAL_S = 10.0  # at most one line per interval about each kind of exhaustion
# What a connection beyond the limit reads before it is closed (OIP's error shape).
_BUSY_BODY = b'{"error": "too many connections; retry later"}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_BUSY_BODY), _BUSY_BODY)
)


def display_host(host: str) -> str:
    """The address to tell clients for a bind address (a wildcard is reached via loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def default_max_connections() -> int:
    """A quarter of the open-file limit: the cap is met while descriptors remain for the
    rest of the process and for one batch of accepts (up to the backlog) being refused."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft // 4) if soft != resource.RLIM_INFINITY else 65536


class Throttle:
    """Counts events; ``hit()`` returns how many since the last report once per interval."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._count = 0
        self._next = 0.0

    def hit(self) -> int | None:
        self._count += 1
        now = time.monotonic()
        if now < self._next:
            return None
        count, self._count, self._next = self._count, 0, now + self.interval_s
        return count


EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ExhaustionLogFilter(logging.Filter):
    """Out of descriptors or buffers: one line per interval, not a traceback per connection.

    Put on a handler, it sees every logger's records (asyncio's accept loop logs each
    failed ``accept()`` with a traceback). A record whose exception is such an OSError
    passes once per interval, as one line that counts the ones dropped since.
    """

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self._throttle = Throttle(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, OSError) or exc.errno not in EXHAUSTION_ERRNOS:
            return True
        count = self._throttle.hit()
        if count is None:
            return False
        every = self._throttle.interval_s
        record.msg = f"{record.getMessage()}: {exc} ({count} in the last {every:g} s)"
        record.args, record.exc_info, record.exc_text = None, None, None
        return True


class _Busy(asyncio.Protocol):
    """A connection beyond the limit: told 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY)
        transport.close()


def _body_watchdog(timeout_s: float) -> Middleware:
    """408 for a request whose body makes no progress for ``timeout_s`` (aiohttp has none).

    Only a request whose body has not fully arrived when its handler starts pays for
    this (a task and a check every quarter of the timeout); the rest go straight through.
    """
    throttle = Throttle()

    @web.middleware
    async def watchdog(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = request.content
        if not request.body_exists or body.is_eof():
            return await handler(request)
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(handler(request))
        try:
            seen, moved = body.total_bytes, loop.time()
            while True:
                done, _ = await asyncio.wait((task,), timeout=timeout_s / 4)
                if done or body.is_eof():
                    return await task
                if body.total_bytes != seen:
                    seen, moved = body.total_bytes, loop.time()
                elif loop.time() - moved >= timeout_s:
                    break
        finally:
            if not task.done():
                task.cancel()
        count = throttle.hit()
        if count is not None:
            log.warning("%d request bodies stalled for %g s: answered 408", count, timeout_s)
        reply = web.json_response(
            {"error": f"request body made no progress for {timeout_s:g} s"}, status=408
        )
        reply.force_close()
        await reply.prepare(request)
        await reply.write_eof()
        # Sent, then closed: no lingering read of the rest of the body (aiohttp's 10 s).
        request.protocol.force_close()
        return reply

    return watchdog


class AppSite(AsyncService):
    """``app`` served on ``host:port``; ``start()``/``stop()`` or ``async with``.

    ``handler_cancellation`` cancels a handler whose client went away (a proxy then
    cancels its upstream call); ``auto_decompress=False`` hands bodies over as sent;
    ``error_response`` answers requests aiohttp cannot parse (a duplicate Content-Type,
    a bad header line) in the app's own error shape.
    ``stop()`` stops accepting, closes idle connections and gives requests in flight
    ``shutdown_timeout_s`` to finish before cancelling them. ``max_connections`` None:
    ``default_max_connections()``. With ``tls`` the site serves HTTPS only.
    """

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int = 0,
        *,
        handler_cancellation: bool = False,
        auto_decompress: bool = True,
        error_response: ErrorResponse | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_connections: int | None = None,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
        tls: ServerTls | None = None,
    ) -> None:
        self.app = app
        self.tls = tls
        self.host = host
        self.requested_port = port
        self.idle_timeout_s = idle_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections or default_max_connections()
        self.shutdown_timeout_s = shutdown_timeout_s
        self._handler_cancellation = handler_cancellation
        self._auto_decompress = auto_decompress
        self._error_response = error_response
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._port: int | None = None
        self._refused = Throttle()

    async def start(self) -> None:
        """Bind and serve (then read ``address``). Cleans up after itself if binding fails."""
        if self._runner is not None:
            raise RuntimeError(f"{self.host}:{self.requested_port} is already being served")
        if not self.app.frozen:
            self.app.middlewares.append(_body_watchdog(self.body_timeout_s))
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,  # whoever runs the loop decides what a signal means
            handler_cancellation=self._handler_cancellation,
            auto_decompress=self._auto_decompress,
            keepalive_timeout=self.idle_timeout_s,
            shutdown_timeout=self.shutdown_timeout_s,
        )
        await runner.setup()
        try:
            # Our own listener (not TCPSite): its protocol factory enforces the limit.
            loop = asyncio.get_running_loop()
            self._listener = await loop.create_server(
                lambda: self._accept(runner),
                self.host,
                self.requested_port,
                backlog=128,
                ssl=self.tls.ssl_context() if self.tls is not None else None,
            )
            self._port = int(self._listener.sockets[0].getsockname()[1])  # 0: a free one
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    def _accept(self, runner: web.AppRunner) -> asyncio.BaseProtocol:
        server = runner.server
        assert server is not None
        if len(server.connections) < self.max_connections:
            if self._error_response is None:
                return server()
            return _ErrorShapedHandler(server, self._error_response)
        count = self._refused.hit()
        if count is not None:
            log.warning(
                "%s: %d connections open, the limit; refused %d new ones (503 and close)",
                self.address,
                self.max_connections,
                count,
            )
        return _Busy()

    async def stop(self) -> None:
        """Stop listening, finish in-flight requests, run the app's cleanup hooks. Idempotent."""
        runner, self._runner, self._port = self._runner, None, None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if runner is not None:
            await runner.cleanup()  # closes idle connections, waits for handlers, cancels

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the site is not serving")
        return self._port

    @property
    def address(self) -> str:
        """``HOST:PORT`` as a client reaches it."""
        return f"{display_host(self.host)}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://{self.address}"


class _ErrorShapedHandler(web.RequestHandler):
    """aiohttp's request handler, replying to unparsable requests with ``error_response``.

    aiohttp builds that reply in ``handle_error`` before any app code runs. The base
    method still logs (through the app's logger) and stays the reply for our own 500s;
    the connection closes afterwards either way, since the parser cannot resynchronise
    on a stream it failed to parse.
    """

    __slots__ = ("_error_response",)

    def __init__(self, server: web.Server, error_response: ErrorResponse) -> None:
        # The arguments aiohttp's own Server.__call__ passes (the runner's handler
        # settings); Server has no public hook for the handler class.
        kwargs: dict[str, Any] = server._kwargs
        super().__init__(server, loop=asyncio.get_running_loop(), **kwargs)
        self._error_response = error_response

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        fallback = super().handle_error(request, status, exc, message)  # logs
        if status >= 500 or not message:
            return fallback
        reply = self._error_response(status, message[:200])
        reply.force_close()
        return reply


class Renders(Protocol):
    """What the metrics endpoint serves: Prometheus' text exposition format."""

    def render(self) -> bytes: ...


def create_metrics_app(metrics: Renders, middlewares: Sequence[Middleware] = ()) -> web.Application:
    """``GET /metrics`` for Prometheus (the gateway's and the sidecar's metrics port)."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application(middlewares=middlewares)
    app.router.add_get("/metrics", handle)
    return app

"""Serve an aiohttp application on ``host:port`` and stop it in order.

Every HTTP endpoint of the project (the gateway's REST and metrics ports, the
sidecar's, the SageMaker container, the local Lambda and SageMaker stand-ins) runs
through ``AppSite``, so port 0 (a free port) and the address to report work one way,
through aiohttp's public ``runner.addresses``::

    async with AppSite(app, "127.0.0.1", 0) as site:
        print(site.url)  # http://127.0.0.1:PORT
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from infergw.gateway.lifecycle import AsyncService


def display_host(host: str) -> str:
    """The address to tell clients for a bind address (a wildcard is reached via loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


class AppSite(AsyncService):
    """``app`` served on ``host:port``; ``start()``/``stop()`` or ``async with``.

    ``handler_cancellation`` cancels a handler whose client went away (a proxy then
    cancels its upstream call); ``auto_decompress=False`` hands bodies over as sent.
    """

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int = 0,
        *,
        handler_cancellation: bool = False,
        auto_decompress: bool = True,
    ) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self._handler_cancellation = handler_cancellation
        self._auto_decompress = auto_decompress
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    async def start(self) -> None:
        """Bind and serve (then read ``address``). Cleans up after itself if binding fails."""
        if self._runner is not None:
            raise RuntimeError(f"{self.host}:{self.requested_port} is already being served")
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,  # whoever runs the loop decides what a signal means
            handler_cancellation=self._handler_cancellation,
            auto_decompress=self._auto_decompress,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.requested_port).start()
            self._port = int(runner.addresses[0][1])  # the port bound (0: a free one)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening, finish in-flight requests, run the app's cleanup hooks. Idempotent."""
        runner, self._runner, self._port = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

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
        return f"http://{self.address}"


class Renders(Protocol):
    """What the metrics endpoint serves: Prometheus' text exposition format."""

    def render(self) -> bytes: ...


def create_metrics_app(metrics: Renders) -> web.Application:
    """``GET /metrics`` for Prometheus (the gateway's and the sidecar's metrics port)."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app

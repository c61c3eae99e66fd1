"""AppSite on 127.0.0.1: port 0 reports the real port, stop frees it, failures clean up."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from aiohttp import web

from infergw.gateway.sites import AppSite, create_metrics_app

pytestmark = pytest.mark.integration


def hello_app(cleaned: list[str]) -> web.Application:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def on_cleanup(_: web.Application) -> None:
        cleaned.append("cleaned")

    app = web.Application()
    app.router.add_get("/", hello)
    app.on_cleanup.append(on_cleanup)
    return app


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_port_zero_reports_the_bound_port_and_stop_frees_it() -> None:
    cleaned: list[str] = []
    site = AppSite(hello_app(cleaned), "127.0.0.1", 0)
    await site.start()
    address = site.address
    try:
        assert site.port != 0 and address == f"127.0.0.1:{site.port}"
        assert site.url == f"http://{address}"
        async with aiohttp.ClientSession() as session, session.get(site.url) as reply:
            assert (reply.status, await reply.text()) == (200, "hello")
    finally:
        await site.stop()
    assert cleaned == ["cleaned"]  # the app's cleanup hooks ran
    port = int(address.rsplit(":", 1)[1])
    assert refused(port)
    with pytest.raises(RuntimeError, match="not serving"):
        _ = site.port
    await site.stop()  # idempotent
    assert cleaned == ["cleaned"]
    # The port is free again: a new site binds exactly it.
    async with AppSite(hello_app([]), "127.0.0.1", port) as again:
        assert again.address == address


async def test_a_port_in_use_raises_and_leaves_nothing_behind() -> None:
    cleaned: list[str] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        site = AppSite(hello_app(cleaned), "127.0.0.1", port)
        with pytest.raises(OSError):
            await site.start()
    assert cleaned == ["cleaned"]  # the runner was cleaned up
    with pytest.raises(RuntimeError, match="not serving"):
        _ = site.port
    await site.stop()  # still safe


async def test_metrics_app_serves_what_the_metrics_render() -> None:
    class Metrics:
        def render(self) -> bytes:
            return b"# TYPE up gauge\nup 1\n"

    async with (
        AppSite(create_metrics_app(Metrics()), "127.0.0.1") as site,
        aiohttp.ClientSession() as session,
        session.get(f"{site.url}/metrics") as reply,
    ):
        assert reply.status == 200
        assert reply.content_type == "text/plain" and reply.charset == "utf-8"
        assert await reply.read() == b"# TYPE up gauge\nup 1\n"

"""The REST port's connection limits on 127.0.0.1: idle, slow-header and slow-body
connections are cut off, connections beyond the limit are refused with a 503 and no
traceback, and the server keeps serving throughout (issue 9, item 7).

Raw sockets, because the point is what a misbehaving client does; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
from aiohttp import web

from infergw.gateway.app import Gateway
from infergw.gateway.core.config import BackendConfig, GatewayConfig, ListenConfig, RouteConfig
from infergw.gateway.core.router import Router, wrap_with_policies
from infergw.gateway.sites import AppSite
from tests.fakes import EchoBackend

pytestmark = pytest.mark.integration

IDLE_S = 0.4
BODY_S = 0.4
LIMIT = 4
WAIT_S = 5.0  # the bound on every wait: far above the timeouts under test


def limits_app() -> web.Application:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_post("/echo", echo)
    return app


@pytest.fixture
async def site() -> AsyncIterator[AppSite]:
    async with AppSite(
        limits_app(),
        "127.0.0.1",
        0,
        idle_timeout_s=IDLE_S,
        body_timeout_s=BODY_S,
        max_connections=LIMIT,
        shutdown_timeout_s=1.0,
    ) as serving:
        yield serving


@contextmanager
def connect(port: int) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        yield sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a timeout fails the test)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def get(sock: socket.socket) -> bytes:
    """One keep-alive GET / and its whole response (the body is 5 bytes)."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"hello"):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


async def in_thread(fn, *args):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(fn, *args)


async def test_an_idle_connection_is_closed_after_the_idle_timeout(site: AppSite) -> None:
    def idle() -> float:
        with connect(site.port) as sock:
            start = time.monotonic()
            assert read_until_closed(sock) == b""  # never sent a byte: closed, nothing said
            return time.monotonic() - start

    elapsed = await in_thread(idle)
    assert IDLE_S * 0.9 <= elapsed < WAIT_S


async def test_a_keep_alive_connection_idle_after_a_response_is_closed(site: AppSite) -> None:
    def idle_after_one() -> float:
        with connect(site.port) as sock:
            assert get(sock).startswith(b"HTTP/1.1 200")
            start = time.monotonic()
            assert read_until_closed(sock) == b""
            return time.monotonic() - start

    elapsed = await in_thread(idle_after_one)
    assert IDLE_S * 0.9 <= elapsed < WAIT_S


async def test_a_slow_header_client_is_cut_off(site: AppSite) -> None:
    """Bytes keep coming, but the head is never complete: the connection is closed."""

    def trickle() -> float:
        with connect(site.port) as sock:
            start = time.monotonic()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            sock.settimeout(IDLE_S / 8)
            while time.monotonic() - start < WAIT_S:
                try:
                    sock.sendall(b"X")  # a header line that never ends
                    if sock.recv(1) == b"":
                        return time.monotonic() - start
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    return time.monotonic() - start
            raise AssertionError(f"still open after {WAIT_S} s")

    elapsed = await in_thread(trickle)
    assert IDLE_S * 0.9 <= elapsed < IDLE_S + 1.0


async def test_a_stalled_body_gets_408_and_a_steady_slow_one_is_served(site: AppSite) -> None:
    def stalled() -> tuple[bytes, float]:
        with connect(site.port) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            start = time.monotonic()
            return read_until_closed(sock), time.monotonic() - start

    def steady() -> bytes:
        with connect(site.port) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
            for _ in range(5):  # 5 x BODY_S/2 > BODY_S in all, but never stalled that long
                time.sleep(BODY_S / 2)  # the slow client being simulated
                sock.sendall(b"0123456789")
            data = b""
            while not data.endswith(b"0123456789" * 5):
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            return data

    reply, elapsed = await in_thread(stalled)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply
    assert b"Connection: close" in head
    assert "no progress" in json.loads(body)["error"]
    assert BODY_S * 0.9 <= elapsed < BODY_S * 1.25 + 1.0
    assert (await in_thread(steady)).startswith(b"HTTP/1.1 200")


async def test_beyond_the_limit_connections_get_503_without_tracebacks_and_serving_goes_on(
    site: AppSite, caplog: pytest.LogCaptureFixture
) -> None:
    def crowd() -> None:
        with connect(site.port) as first:
            others = [socket.create_connection(("127.0.0.1", site.port), WAIT_S) for _ in range(3)]
            try:
                for sock in (first, *others):  # a response each: all four are registered
                    assert get(sock).startswith(b"HTTP/1.1 200")
                for _ in range(20):
                    with connect(site.port) as extra:
                        reply = read_until_closed(extra)
                    assert reply.startswith(b"HTTP/1.1 503"), reply
                    assert b"Retry-After: 1" in reply and b'{"error": "too many' in reply
                assert get(first).startswith(b"HTTP/1.1 200")  # the open ones still work
            finally:
                for sock in others:
                    sock.close()
        # Below the limit again: new connections are served.
        deadline = time.monotonic() + WAIT_S
        while True:
            with connect(site.port) as again:
                try:
                    if get(again).startswith(b"HTTP/1.1 200"):
                        return
                except (AssertionError, ConnectionResetError):
                    pass  # a 503: the closed ones are not reaped yet
            assert time.monotonic() < deadline, "never served again"
            time.sleep(0.05)

    with caplog.at_level(logging.WARNING):
        await in_thread(crowd)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    refusals = [r for r in caplog.records if "the limit" in r.getMessage()]
    assert len(refusals) == 1  # once per interval, not once per connection


def echo_gateway(idle_timeout_s: float) -> Gateway:
    """A gateway over an echo backend, one connection allowed per port."""
    cfg = BackendConfig(name="echo", kind="echo")
    route = RouteConfig(model="*", backend="echo")
    router = Router({"echo": wrap_with_policies(EchoBackend(), cfg)}, [route])
    listen = ListenConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        idle_timeout_s=idle_timeout_s,
        max_connections=1,
        drain_grace_s=1.0,
    )
    return Gateway(GatewayConfig(backends=(cfg,), routes=(route,), listen=listen), router)


async def test_the_gateway_applies_the_listen_limits_to_its_rest_port() -> None:

    def check(port: int) -> float:
        with connect(port) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # served, so counted
            start = time.monotonic()
            with connect(port) as second:
                assert read_until_closed(second).startswith(b"HTTP/1.1 503")
            assert read_until_closed(sock) == b""
            return time.monotonic() - start

    async with echo_gateway(IDLE_S) as gateway:
        port = int(gateway.addresses["http"].rsplit(":", 1)[1])
        elapsed = await in_thread(check, port)
    assert IDLE_S * 0.9 <= elapsed < WAIT_S


async def test_the_gateway_applies_the_listen_limits_to_its_grpc_port() -> None:
    """gRPC: connections beyond ``max_connections`` are refused; one with no call for
    ``idle_timeout_s`` is sent GOAWAY (the client goes IDLE, then reconnects on use)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from infergw.wire import grpc_channel

    request = health_pb2.HealthCheckRequest()
    async with echo_gateway(1.0) as gateway:
        address = gateway.addresses["grpc"]
        first = grpc_channel.aio_channel(address, private=True)
        second = grpc_channel.aio_channel(address, private=True)
        try:
            assert (await health_pb2_grpc.HealthStub(first).Check(request, timeout=WAIT_S)).status
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(second).Check(request, timeout=2.0)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            await second.close()  # else its reconnects may take the slot the first frees
            deadline = time.monotonic() + WAIT_S
            while first.get_state() != grpc.ChannelConnectivity.IDLE:  # the GOAWAY
                assert time.monotonic() < deadline, "the idle connection was never closed"
                await asyncio.sleep(0.05)
            assert (await health_pb2_grpc.HealthStub(first).Check(request, timeout=WAIT_S)).status
        finally:
            await first.close()
            await second.close()

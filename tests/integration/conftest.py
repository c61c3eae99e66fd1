"""Real servers on 127.0.0.1 with free ports: tritonserver, and the gateway in front of it.

The gateway runs on its own event loop in a background thread so that tests can
drive it with unmodified, synchronous clients (tritonclient) exactly as users do.
Every server is stopped at the end, also when a test fails.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from infergw.deploy.local.stack import local_config
from infergw.deploy.triton.launcher import TritonEndpoints, TritonServer
from infergw.gateway.app import Gateway
from infergw.gateway.core.config import GatewayConfig

T = TypeVar("T")

pytestmark = pytest.mark.integration


class ServiceThread:
    """Something with async ``start()``/``stop()`` on a private event loop in a daemon thread.

    Gateways, sidecars and the local stack run this way so that tests can drive them
    with unmodified, synchronous clients (tritonclient, TF Serving stubs) as users do.
    """

    def __init__(self, service: Any, start: bool = True) -> None:
        self.service = service
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        if start:
            try:
                self.run(service.start())
            except BaseException:
                self.close()
                raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 180.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def grpc(self) -> str:
        return str(self.service.addresses["grpc"])

    @property
    def http(self) -> str:
        return str(self.service.addresses["http"])

    @property
    def metrics(self) -> str:
        return str(self.service.addresses["metrics"])

    def close(self) -> None:
        try:
            self.run(self.service.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class GatewayThread(ServiceThread):
    def __init__(self, config: GatewayConfig) -> None:
        self.gateway = Gateway(config)
        super().__init__(self.gateway)


class StackThread(ServiceThread):
    """The whole local stack (started by the caller, as its start-up is long)."""

    def __init__(self) -> None:
        from infergw.deploy.local.stack import LocalStack

        self.stack = LocalStack({"grpc_port": 0, "http_port": 0, "metrics_port": 0})
        super().__init__(self.stack, start=False)


def free_ports_config(triton: TritonEndpoints, **listen: Any) -> GatewayConfig:
    ports = {"grpc_port": 0, "http_port": 0, "metrics_port": 0, **listen}
    return local_config(triton.grpc, ports, triton_http=triton.http)


@pytest.fixture(scope="session")
def triton() -> Iterator[TritonEndpoints]:
    with TritonServer() as server:
        yield server.endpoints


@pytest.fixture(scope="session")
def gateway(triton: TritonEndpoints) -> Iterator[GatewayThread]:
    gw = GatewayThread(free_ports_config(triton))
    try:
        yield gw
    finally:
        gw.close()

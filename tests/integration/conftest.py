"""Real servers on 127.0.0.1 with free ports: tritonserver, and the gateway in front of it.

The gateway runs on its own event loop in a background thread so that tests can
drive it with unmodified, synchronous clients (tritonclient) exactly as users do.
Every server is stopped at the end, also when a test fails.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infergw.deploy.local.stack import local_config
from infergw.deploy.triton.launcher import TritonEndpoints, TritonServer
from infergw.gateway.app import Gateway
from infergw.gateway.core.config import GatewayConfig
from infergw.gateway.lifecycle import ThreadedService
from infergw.proto import grpc_service_pb2 as pb

pytestmark = pytest.mark.integration


class ServiceThread(ThreadedService[Any]):
    """Something with async ``start()``/``stop()`` on a private event loop in a daemon thread
    (``lifecycle.ThreadedService``), with the addresses it listens on.

    Gateways, sidecars and the local stack run this way so that tests can drive them
    with unmodified, synchronous clients (tritonclient, TF Serving stubs) as users do.
    """

    @property
    def grpc(self) -> str:
        return str(self.service.addresses["grpc"])

    @property
    def http(self) -> str:
        return str(self.service.addresses["http"])

    @property
    def metrics(self) -> str:
        return str(self.service.addresses["metrics"])


class GatewayThread(ServiceThread):
    def __init__(self, config: GatewayConfig) -> None:
        self.gateway = Gateway(config)
        super().__init__(self.gateway)

    def grpc_phases(self, model: str) -> set[str]:
        """The Server-Timing phases an OK gRPC inference of ``model`` has: the native plane
        forwards a native route's bytes, so it decodes (checks) but encodes nothing."""
        front = self.gateway._native
        core = {"total", "decode", "queue", "backend"}
        return core if front is not None and model in front.routes.routes else core | {"encode"}


class StackThread(ServiceThread):
    """The whole local stack (started by the caller, as its start-up is long)."""

    def __init__(self) -> None:
        from infergw.deploy.local.stack import LocalStack

        self.stack = LocalStack({"grpc_port": 0, "http_port": 0, "metrics_port": 0})
        super().__init__(self.stack, start=False)


def wait_until(
    condition: Callable[[], bool], what: str, timeout_s: float = 30.0, interval_s: float = 0.02
) -> float:
    """Poll ``condition`` until it holds, bounded by ``timeout_s``; when it first held
    (``time.monotonic``). The tests' one way to wait for a state, never a sleep."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s:g} s: {what}")
        time.sleep(interval_s)
    return time.monotonic()


def model_infer(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """``ModelInfer`` on ``channel`` as a plain grpcio client calls it: the status and the
    trailers in reach (tritonclient shows neither)."""
    return channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )


def scrape(metrics: str, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples called ``name`` on a metrics page (``HOST:PORT``), by ``labels``' values."""
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        tuple(sample.labels[label] for label in labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def wait_for_native_tracing(stats: Callable[[], dict[str, Any]] | None) -> None:
    """After installing an SDK: a native plane (``stats``, its ``Plane.stats``) learns of
    it within its draining interval (0.1 s); a test sending at once waits for that."""
    if stats is not None:
        wait_until(lambda: bool(stats().get("trace_all")), "the native plane tracing", 5)


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

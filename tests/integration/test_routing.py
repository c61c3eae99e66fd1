"""Route policies through a real gateway: the real tritonserver, the in-process runtime
backend (the code our containers run), and a Triton address nothing listens on.

Which backend answered is read where a client reads it: the ``backend`` entries of the
``server-timing`` trailer (``backend=NAME;attempt=N;reason=...``).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from infergw.clients.timing import TimingBreakdown
from infergw.deploy.triton.launcher import TritonEndpoints, TritonServer
from infergw.gateway.core.config import parse_config
from infergw.proto import grpc_service_pb2 as pb
from infergw.wire import grpc_channel
from tests.integration.conftest import GatewayThread

pytestmark = pytest.mark.integration

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
LISTEN = {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": 0}
ATTEMPT = re.compile(r'backend;dur=[0-9.]+;desc="backend=([^;"]+);attempt=(\d+)(?:;reason=(\w+))?"')


def dead_address() -> str:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def gateway(
    triton: TritonEndpoints, models: dict[str, Any], extra: dict[str, Any] | None = None
) -> GatewayThread:
    """Backends ``triton``, ``runtime``, ``dead``; ``extra`` adds keys to some of them."""
    backends: dict[str, Any] = {
        "triton": {"kind": "triton", "url": triton.grpc},
        "runtime": {"kind": "runtime", "models": ["identity", "minilm"], "preload": True},
        "dead": {"kind": "triton", "url": dead_address(), "timeout_ms": 2000},
    }
    for name, settings in (extra or {}).items():
        backends[name] = {**backends[name], **settings}
    doc = {"listen": LISTEN, "backends": backends, "models": models}
    return GatewayThread(parse_config(doc))


def identity_request(request_id: str = "") -> bytes:
    request = pb.ModelInferRequest(model_name="identity", id=request_id)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    del tensor
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    return request.SerializeToString()


class Client:
    """Raw OIP gRPC: the reply and the attempts its trailer lists."""

    def __init__(self, address: str) -> None:
        self.channel = grpc_channel.sync_channel(address, private=True)
        self.infer = self.channel.unary_unary(MODEL_INFER)
        self.last_timing = ""  # the last call's server-timing trailer

    def call(self, payload: bytes) -> tuple[pb.ModelInferResponse, list[tuple[str, int, str]]]:
        reply, call = self.infer.with_call(payload, timeout=30)
        self.last_timing = dict(call.trailing_metadata() or ()).get("server-timing", "")
        return pb.ModelInferResponse.FromString(reply), attempts(call.trailing_metadata())

    def close(self) -> None:
        self.channel.close()


def attempts(trailers: Any) -> list[tuple[str, int, str]]:
    timing = dict(trailers or ()).get("server-timing", "")
    return [(b, int(n), r or "") for b, n, r in ATTEMPT.findall(timing)]


@pytest.fixture
def client_of() -> Iterator[Any]:
    made: list[tuple[GatewayThread, Client]] = []

    def connect(gw: GatewayThread) -> Client:
        client = Client(gw.grpc)
        made.append((gw, client))
        return client

    try:
        yield connect
    finally:
        for gw, client in made:
            client.close()
            gw.close()


def test_fallback_moves_on_from_a_dead_backend_and_ejects_it(
    triton: TritonEndpoints, client_of: Any
) -> None:
    policy = {"kind": "fallback", "order": ["dead", "triton"]}
    outlier = {"consecutive_failures": 2, "base_ejection_s": 60}
    gw = gateway(triton, {"identity": {"policy": policy}}, {"dead": {"outlier": outlier}})
    client = client_of(gw)
    seen = []
    for i in range(6):
        reply, tried = client.call(identity_request(f"r{i}"))
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [0, 1, 2, 3]
        seen.append(tried)
    # The first two try the dead backend first, then fall back (attempt 2).
    for tried in seen[:2]:
        assert tried == [("dead", 1, ""), ("triton", 2, "fallback")]
    # Then it is ejected: straight to the fallback, no time lost on it.
    for tried in seen[2:]:
        assert tried == [("triton", 1, "fallback")]
    # The SDK reads who answered, and why, from the same trailer.
    answered = TimingBreakdown.from_server_timing(1.0, client.last_timing).answered_by
    assert answered == ("triton", "fallback")
    metrics = gw.gateway.metrics.render().decode()
    assert 'infergw_backend_ejected{backend="dead"} 1.0' in metrics
    assert (
        'infergw_route_decisions_total{backend="triton",reason="fallback",route="identity"} 6.0'
        in metrics
    )


def test_fallback_when_triton_is_killed_loses_no_request(client_of: Any) -> None:
    # A Triton of this test's own, killed between two requests: the next one fails over
    # to the runtime (attempt 2), none fails; once ejected, requests go there at once.
    policy = {"kind": "fallback", "order": ["triton", "runtime"]}
    outlier = {"consecutive_failures": 2, "base_ejection_s": 60}
    with TritonServer(models=["identity"]) as own:
        gw = gateway(
            own.endpoints, {"identity": {"policy": policy}}, {"triton": {"outlier": outlier}}
        )
        client = client_of(gw)
        before = [client.call(identity_request(f"b{i}"))[1] for i in range(5)]
        assert own.pid is not None
        os.kill(own.pid, signal.SIGKILL)  # no drain, no goodbye: the process is gone
        deadline = time.monotonic() + 10
        while own.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not own.running()
        after = [client.call(identity_request(f"a{i}"))[1] for i in range(6)]
    assert before == [[("triton", 1, "")]] * 5
    assert after[:2] == [[("triton", 1, ""), ("runtime", 2, "fallback")]] * 2
    assert after[2:] == [[("runtime", 1, "fallback")]] * 4  # ejected: no time lost on it


def test_a_single_backend_route_fails_fast_while_its_backend_is_ejected(
    triton: TritonEndpoints, client_of: Any
) -> None:
    outlier = {"consecutive_failures": 2, "base_ejection_s": 60}
    gw = gateway(triton, {"identity": "dead"}, {"dead": {"outlier": outlier}})
    client = client_of(gw)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as failed:
            client.call(identity_request())
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as fast:
        client.call(identity_request())
    assert fast.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "ejected" in (fast.value.details() or "")
    retry_after = dict(fast.value.trailing_metadata() or ()).get("retry-after")
    assert retry_after is not None and 55 <= int(retry_after) <= 60


def test_weighted_split_holds_its_proportions_and_is_sticky_per_request_id(
    triton: TritonEndpoints, client_of: Any
) -> None:
    policy = {"kind": "weighted", "weights": {"triton": 80, "runtime": 20}}
    client = client_of(gateway(triton, {"identity": {"policy": policy}}))
    answered: Counter[str] = Counter()
    first: dict[str, str] = {}
    for i in range(2000):
        _, tried = client.call(identity_request(f"req-{i}"))
        ((backend, _, reason),) = tried
        assert reason == ""  # a route's first choice adds no reason
        answered[backend] += 1
        first[f"req-{i}"] = backend
    assert 0.75 <= answered["triton"] / 2000 <= 0.85, answered
    for i in range(0, 2000, 97):  # the same id goes to the same backend
        _, tried = client.call(identity_request(f"req-{i}"))
        assert tried[0][0] == first[f"req-{i}"]


def test_spillover_overflows_a_burst_and_returns_to_the_primary(
    triton: TritonEndpoints, client_of: Any
) -> None:
    policy = {
        "kind": "spillover",
        "primary": "triton",
        "overflow": ["runtime"],
        "max_queue_wait_ms": 5,
    }
    gw = gateway(triton, {"identity": {"policy": policy}}, {"triton": {"max_concurrency": 1}})
    client = client_of(gw)
    for _ in range(30):  # the primary's service time is known before the burst
        assert client.call(identity_request())[1][0][0] == "triton"
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        burst = list(pool.map(lambda _: client.call(identity_request()), range(400)))
    served = Counter(tried[-1][0] for _, tried in burst)
    reasons = Counter(tried[-1][2] for _, tried in burst)
    assert served["runtime"] > 0 and served["triton"] > 0, served  # spilled, not only
    assert reasons["spill"] == served["runtime"]
    after = [client.call(identity_request())[1] for _ in range(30)]  # the burst is over
    assert all(tried == [("triton", 1, "")] for tried in after), after

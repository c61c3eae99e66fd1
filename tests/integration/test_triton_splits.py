"""Per-request queue and compute for Triton: real Triton tracing into a real gateway.

Triton runs with OpenTelemetry tracing (``rate=0``: only requests carrying a
``traceparent``) exporting to the gateway's receiver; unmodified tritonclient and the
load generator drive the gateway. The proof: per-request compute, summed, matches
Triton's own ``compute_infer`` total over the same window within 10% (Triton exports no
spans for a few percent of traced requests: those are unknown, not zero, and Triton's
total is taken for the share that is known).
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from infergw.deploy.local.stack import free_ports, local_config
from infergw.deploy.triton.launcher import TritonServer
from infergw.loadgen.cli import register
from tests.integration.conftest import GatewayThread

pytestmark = pytest.mark.integration

LISTEN = {"grpc_port": 0, "http_port": 0, "metrics_port": 0}
SPLIT_WAIT_S = 20.0  # bounded polling for spans still in Triton's export batch


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[TritonServer, GatewayThread]]:
    port, *triton_ports = free_ports(4)
    grpc_port, http_port, metrics_port = triton_ports
    server = TritonServer(
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        otlp_traces_url=f"http://127.0.0.1:{port}/v1/traces",
        trace_rate=0,
        trace_export_delay_ms=100,
        models=["identity", "minilm"],
    )
    with server:
        gateway = GatewayThread(local_config(server.endpoints.grpc, LISTEN, None, port))
        try:
            yield server, gateway
        finally:
            gateway.close()


def minilm_input() -> list[grpcclient.InferInput]:
    text = grpcclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"where does the time go", b"queue"], dtype=np.object_))
    return [text]


def compute_infer_ns(client: grpcclient.InferenceServerClient) -> tuple[int, int]:
    stats = client.get_inference_statistics("minilm", as_json=True)["model_stats"][0]
    infer = stats["inference_stats"]
    return int(infer["success"].get("count", 0)), int(infer["compute_infer"].get("ns", 0))


def splits_by_prefix(metrics: str, prefix: str) -> dict[str, Any]:
    """``/v1/splits?prefix=``, polled until no attempt is pending (bounded)."""
    deadline = time.monotonic() + SPLIT_WAIT_S
    while True:
        with urllib.request.urlopen(f"http://{metrics}/v1/splits?prefix={prefix}") as reply:
            document: dict[str, Any] = json.loads(reply.read())
        if not document["pending"] or time.monotonic() > deadline:
            return document
        time.sleep(0.2)


def test_per_request_compute_sums_to_tritons_compute_infer(
    traced: tuple[TritonServer, GatewayThread],
) -> None:
    server, gateway = traced
    direct = grpcclient.InferenceServerClient(server.endpoints.grpc)
    through = grpcclient.InferenceServerClient(gateway.grpc)
    through.infer("minilm", minilm_input())  # warm
    prefix = secrets.token_hex(8)
    requests = 60
    before = compute_infer_ns(direct)

    def one(i: int) -> None:
        header = f"00-{prefix}{i:016x}-{i + 1:016x}-01"
        through.infer("minilm", minilm_input(), headers={"traceparent": header})

    with ThreadPoolExecutor(4) as pool:  # some requests queue inside Triton
        list(pool.map(one, range(requests)))
    after = compute_infer_ns(direct)
    assert after[0] - before[0] == requests  # the window holds exactly our requests

    document = splits_by_prefix(gateway.metrics, prefix)
    splits = [s for attempts in document["splits"].values() for s in attempts]
    known = [s for s in splits if s["compute_infer_ms"] is not None]
    # Triton exports no spans at all for some traced requests (5-18% measured here, as
    # many direct as through the gateway, spread evenly; 22% once on a loaded CI
    # machine, on the Python plane): those are unknown. The rest must add up to Triton's
    # own total for them.
    assert len(known) >= 0.7 * requests, document["pending"]
    per_request_ms = sum(s["compute_infer_ms"] for s in known)
    total_ms = (after[1] - before[1]) / 1e6
    assert per_request_ms == pytest.approx(total_ms * len(known) / requests, rel=0.10)
    assert all(s["backend"] == "triton" and s["model"] == "minilm" for s in known)
    assert all(s["compute_ms"] >= s["compute_infer_ms"] > 0 for s in known)
    assert max(s["backend_queue_ms"] for s in known) > 1.0  # 4 in flight, one instance
    metrics = urllib.request.urlopen(f"http://{gateway.metrics}/metrics").read().decode()
    assert 'phase="compute",protocol="grpc",status="OK"' in metrics
    direct.close()
    through.close()


def bench(tmp_path: Path, *argv: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["bench", *argv, "--out", str(tmp_path), "--no-progress"])
    assert args.func(args) == 0
    result: dict[str, Any] = json.loads((tmp_path / "result.json").read_text())
    return result


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_bench_shows_tritons_queue_and_compute_per_request(
    traced: tuple[TritonServer, GatewayThread], tmp_path: Path, protocol: str
) -> None:
    _, gateway = traced
    target = gateway.grpc if protocol == "grpc" else gateway.http
    result = bench(
        tmp_path, "warm", "--target", target, "--protocol", protocol, "--model", "minilm",
        "--concurrency", "4", "--duration", "2", "--warmup", "0.5",
        "--splits-url", gateway.metrics, "--splits-wait", str(SPLIT_WAIT_S),
    )  # fmt: skip
    (run,) = result["runs"]
    assert run["ok"] > 20 and not run["errors"]
    # Triton 2.51 ignores the propagated context of some requests, at random (the same
    # traceparent resent is traced): 2-6% idle, 18% seen on a loaded 2-core CI machine.
    # Those are unknown, never zero; most requests must still get their split.
    assert run["split_unknown"] <= 0.3 * run["ok"]
    split = run["split_ms"]
    assert {"protocol", "queue", "backend_queue", "compute"} <= set(split)
    # The product's point: Triton's queue and compute are no longer counted as protocol.
    assert split["protocol"]["p50"] < split["compute"]["p50"] < run["latency_ms"]["p50"]
    assert split["protocol"]["p50"] < 0.5 * run["latency_ms"]["p50"]


def test_bench_without_splits_shows_window_means_and_never_protocol(
    traced: tuple[TritonServer, GatewayThread], tmp_path: Path
) -> None:
    _, gateway = traced
    result = bench(
        tmp_path, "warm", "--target", gateway.grpc, "--model", "minilm",
        "--concurrency", "2", "--requests", "20", "--warmup", "0.2",
    )  # fmt: skip
    (run,) = result["runs"]
    assert run["split_unknown"] == run["ok"] == 20
    assert "protocol" not in run["split_ms"] and "compute" not in run["split_ms"]
    window = run["split_window_ms"]  # Triton's statistics, diffed around the window
    assert window["compute"] > 0 and window["protocol"] < run["latency_ms"]["mean"]
    table = (tmp_path / "result.csv").read_text()
    assert "split_window_compute_ms" in table

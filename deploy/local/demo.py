"""``infergw demo``: the local stack, a short benchmark across protocols, a report.

The stack runs as a separate process (``infergw local up``), as it would for a
user, so the client's time is not mixed into the gateway's. For each workload and
protocol the demo sends sequential requests with the SDK and reports end-to-end
(client-measured) next to the gateway's phases and Triton's own queue and compute
times (aggregate means from Triton's statistics, diffed around the window).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infergw.clients import GrpcClient, HttpClient, InferResult, ModelStatistics

STARTUP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Workload:
    label: str
    model: str
    inputs: Mapping[str, np.ndarray]


WORKLOADS = (
    Workload("identity 1x16 fp32", "identity", {"input": np.ones((1, 16), np.float32)}),
    Workload(
        "identity 1 MB fp32",
        "identity",
        {"input": np.random.default_rng(0).random((1, 262_144), np.float32)},
    ),
    Workload(
        "minilm 4 sentences",
        "minilm",
        {
            "text": np.array(
                [
                    b"Where does the time go in serverless inference?",
                    b"Protocol overhead often dominates model compute.",
                    b"A warm container answers faster than a cold one.",
                    b"The gateway reports every phase it measures.",
                ],
                dtype=np.object_,
            )
        },
    ),
)

PROTOCOLS: dict[str, Callable[[Mapping[str, str]], Any]] = {
    "grpc": lambda ep: GrpcClient(ep["grpc"]),
    "rest-binary": lambda ep: HttpClient(ep["http"], binary=True),
    "rest-json": lambda ep: HttpClient(ep["http"], binary=False),
}


@dataclass(frozen=True)
class Row:
    workload: str
    protocol: str
    requests: int
    e2e_p50_ms: float
    e2e_p95_ms: float
    gateway_total_p50_ms: float
    backend_rtt_p50_ms: float
    triton_queue_mean_ms: float
    triton_compute_mean_ms: float
    e2e_mean_ms: float
    outside_model_mean_ms: float  # mean end-to-end minus Triton's mean queue + compute


@contextmanager
def local_stack_process(workdir: Path) -> Iterator[dict[str, Any]]:
    """Run ``infergw local up`` on free ports; yield its ready-file document."""
    ready = workdir / "ready.json"
    log = (workdir / "local-up.log").open("wb")
    cmd = [sys.executable, "-m", "infergw.gateway.cli", "local", "up", "--ready-file", str(ready)]
    cmd += ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "local-up.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"local stack did not start:\n{tail}")
            time.sleep(0.2)
        yield json.loads(ready.read_text())
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _stats(client: Any, model: str) -> ModelStatistics:
    (stats,) = [s for s in client.model_statistics(model) if s.name == model]
    return stats


def _mean_ms(after_ns: int, before_ns: int, count: int) -> float:
    return (after_ns - before_ns) / max(count, 1) / 1e6


def measure(client: Any, workload: Workload, protocol: str, requests: int) -> Row:
    for _ in range(max(5, requests // 10)):  # warm-up, excluded
        client.infer(workload.model, workload.inputs)
    before = _stats(client, workload.model)
    results: list[InferResult] = [
        client.infer(workload.model, workload.inputs) for _ in range(requests)
    ]
    after = _stats(client, workload.model)
    count = after.success.count - before.success.count
    e2e = np.array([r.timing.end_to_end_ms for r in results])
    total = np.array([r.timing.server.get("total", np.nan) for r in results])
    backend = np.array([r.timing.server.get("backend", np.nan) for r in results])
    queue = _mean_ms(after.queue.ns, before.queue.ns, count)
    compute = sum(
        _mean_ms(getattr(after, f).ns, getattr(before, f).ns, count)
        for f in ("compute_input", "compute_infer", "compute_output")
    )
    return Row(
        workload=workload.label,
        protocol=protocol,
        requests=requests,
        e2e_p50_ms=float(np.percentile(e2e, 50)),
        e2e_p95_ms=float(np.percentile(e2e, 95)),
        gateway_total_p50_ms=float(np.nanpercentile(total, 50)),
        backend_rtt_p50_ms=float(np.nanpercentile(backend, 50)),
        triton_queue_mean_ms=queue,
        triton_compute_mean_ms=compute,
        e2e_mean_ms=float(e2e.mean()),
        outside_model_mean_ms=float(e2e.mean()) - queue - compute,
    )


HEADERS = (
    ("workload", 20),
    ("protocol", 11),
    ("e2e p50", 8),
    ("e2e p95", 8),
    ("e2e mean", 8),
    ("gw total", 8),
    ("backend", 8),
    ("T queue", 8),
    ("T compute", 9),
    ("outside", 8),
)


def format_table(rows: list[Row]) -> str:
    lines = ["  ".join(h.rjust(w) if i > 1 else h.ljust(w) for i, (h, w) in enumerate(HEADERS))]
    for r in rows:
        values = (
            r.e2e_p50_ms,
            r.e2e_p95_ms,
            r.e2e_mean_ms,
            r.gateway_total_p50_ms,
            r.backend_rtt_p50_ms,
            r.triton_queue_mean_ms,
            r.triton_compute_mean_ms,
            r.outside_model_mean_ms,
        )
        cells = [r.workload.ljust(20), r.protocol.ljust(11)]
        cells += [f"{v:.3f}".rjust(w) for v, (_, w) in zip(values, HEADERS[2:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


LEGEND = """\
All times in ms. e2e: measured by the SDK client (p50/p95). gw total / backend: the
gateway's Server-Timing `total` and `backend` round trip (p50). T queue / T compute:
Triton's own queue and compute (input+infer+output), means from its statistics
extension diffed around the window (means, so compared with the e2e mean). outside:
e2e mean minus T queue and T compute — protocol, transfer and proxying: what is not
the model."""


def run_demo(out: Path, requests: int = 200) -> int:
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="infergw-demo-") as tmp:
        print("starting the local stack (tritonserver + gateway)...", flush=True)
        with local_stack_process(Path(tmp)) as endpoints:
            gateway = endpoints["gateway"]
            print(f"gateway: {gateway}", flush=True)
            for workload in WORKLOADS:
                for protocol, make_client in PROTOCOLS.items():
                    with make_client(gateway) as client:
                        rows.append(measure(client, workload, protocol, requests))
                    print(f"  measured {workload.label} over {protocol}", flush=True)
    table = format_table(rows)
    print("\n" + table + "\n\n" + LEGEND)
    (out / "result.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    (out / "report.md").write_text(f"# infergw demo\n\n```\n{table}\n```\n\n{LEGEND}\n")
    print(f"\nreport: {out / 'report.md'}, data: {out / 'result.json'}")
    return 0

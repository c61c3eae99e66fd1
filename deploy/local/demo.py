"""``infergw demo``: the local stack, a short benchmark on every backend, a report.

The stack runs as a separate process (``infergw local up``), as it would for a
user, so the client's time is not mixed into the gateway's. Every serverless
backend starts at zero instances, so the first request of each (workload,
backend) pair is a real cold start: the demo reports it as time to first
prediction with its initialisation share, then measures warm requests and splits
their end-to-end time into gateway queue, cold start, backend compute and
protocol (everything else: serialisation, transfer, proxying) — the split the
published serverless measurements are about. A second table compares protocols
on the same Triton backend.
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

from infergw.clients import GrpcClient, HttpClient, InferResult

STARTUP_TIMEOUT_S = 180.0
BACKENDS = ("triton", "lambda", "sagemaker", "cloudrun")
RNG = np.random.default_rng(0)


@dataclass(frozen=True)
class Workload:
    label: str
    model: str
    inputs: Mapping[str, np.ndarray]


SENTENCES = [
    b"Where does the time go in serverless inference?",
    b"Protocol overhead often dominates model compute.",
    b"A warm container answers faster than a cold one.",
    b"The gateway reports every phase it measures.",
]
BACKEND_WORKLOADS = (
    Workload("identity 1x16", "identity", {"input": np.ones((1, 16), np.float32)}),
    Workload("minilm x4", "minilm", {"text": np.array(SENTENCES, dtype=np.object_)}),
    Workload("mobilenet x1", "mobilenet", {"image": RNG.random((1, 224, 224, 3), np.float32)}),
)
PROTOCOL_WORKLOADS = (
    Workload("identity 1x16", "identity", {"input": np.ones((1, 16), np.float32)}),
    Workload("identity 1 MB", "identity", {"input": RNG.random((1, 262_144), np.float32)}),
)
PROTOCOLS: dict[str, Callable[[Mapping[str, str]], Any]] = {
    "grpc": lambda ep: GrpcClient(ep["grpc"], timeout=120),
    "rest-binary": lambda ep: HttpClient(ep["http"], binary=True, timeout=120),
    "rest-json": lambda ep: HttpClient(ep["http"], binary=False, timeout=120),
}


@dataclass(frozen=True)
class Row:
    workload: str
    backend: str
    protocol: str
    requests: int
    first_ms: float  # the first request: a cold start on a serverless backend at zero
    first_coldstart_ms: float  # the initialisation the backend reported for it (0: none)
    e2e_p50_ms: float
    e2e_p95_ms: float
    queue_p50_ms: float
    backend_rtt_p50_ms: float
    compute_p50_ms: float  # reported by the backend per request; NaN when it reports none
    protocol_p50_ms: float  # end-to-end minus the measured queue/coldstart/compute


@contextmanager
def local_stack_process(workdir: Path) -> Iterator[dict[str, Any]]:
    """Run ``infergw local up`` on free ports; yield its ready-file document."""
    ready = workdir / "ready.json"
    log_path = workdir / "local-up.log"
    cmd = [sys.executable, "-m", "infergw.gateway.cli", "local", "up", "--ready-file", str(ready)]
    cmd += ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"local stack did not start:\n{tail}")
                time.sleep(0.2)
            yield json.loads(ready.read_text())
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def measure(client: Any, workload: Workload, backend: str, protocol: str, requests: int) -> Row:
    pin = None if backend == "triton" else backend
    first = client.infer(workload.model, workload.inputs, backend=pin)
    for _ in range(max(3, requests // 10)):  # warm-up, excluded
        client.infer(workload.model, workload.inputs, backend=pin)
    results: list[InferResult] = [
        client.infer(workload.model, workload.inputs, backend=pin) for _ in range(requests)
    ]
    timing = [r.timing for r in results]

    def phase(name: str) -> list[float]:
        return [t.server[name] for t in timing if name in t.server]

    return Row(
        workload=workload.label,
        backend=backend,
        protocol=protocol,
        requests=requests,
        first_ms=first.timing.end_to_end_ms,
        first_coldstart_ms=first.timing.server.get("coldstart", 0.0),
        e2e_p50_ms=_p([t.end_to_end_ms for t in timing], 50),
        e2e_p95_ms=_p([t.end_to_end_ms for t in timing], 95),
        queue_p50_ms=_p(phase("queue"), 50),
        backend_rtt_p50_ms=_p(phase("backend"), 50),
        compute_p50_ms=_p(phase("compute"), 50),
        protocol_p50_ms=_p([t.protocol_ms for t in timing], 50),
    )


COLUMNS = (
    ("workload", 14, "workload"),
    ("backend", 9, "backend"),
    ("protocol", 11, "protocol"),
    ("first", 8, "first_ms"),
    ("init", 8, "first_coldstart_ms"),
    ("e2e p50", 8, "e2e_p50_ms"),
    ("e2e p95", 8, "e2e_p95_ms"),
    ("queue", 7, "queue_p50_ms"),
    ("backend", 8, "backend_rtt_p50_ms"),
    ("compute", 8, "compute_p50_ms"),
    ("protocol", 8, "protocol_p50_ms"),
)


def format_table(rows: list[Row]) -> str:
    def cell(value: Any, width: int) -> str:
        if isinstance(value, float):
            return ("-" if value != value else f"{value:.2f}").rjust(width)  # NaN: not reported
        return str(value).ljust(width)

    header = "  ".join(h.rjust(w) if i > 2 else h.ljust(w) for i, (h, w, _) in enumerate(COLUMNS))
    lines = [header]
    for row in rows:
        data = asdict(row)
        lines.append("  ".join(cell(data[key], w) for _, w, key in COLUMNS))
    return "\n".join(lines)


LEGEND = """\
Times in ms. first: end-to-end of the first request on that backend (serverless
backends start at zero instances, so it is a cold start) and init: the initialisation
the backend reported for it. Then warm requests, p50 unless marked: e2e measured by
the SDK; queue = the gateway's admission wait; backend = one gateway->backend round
trip; compute = model execution reported by the function/container (Triton reports it
only in aggregate: `-` here, see its statistics); protocol = e2e minus queue, coldstart
and compute — serialisation, transfer and proxying."""


def run_demo(out: Path, requests: int = 100) -> int:
    out.mkdir(parents=True, exist_ok=True)
    backend_rows: list[Row] = []
    protocol_rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="infergw-demo-") as tmp:
        print("starting the local stack (tritonserver, stand-ins, gateway)...", flush=True)
        with local_stack_process(Path(tmp)) as endpoints:
            gateway = endpoints["gateway"]
            print(f"gateway: {gateway}", flush=True)
            with PROTOCOLS["grpc"](gateway) as client:
                for workload in BACKEND_WORKLOADS:
                    for backend in BACKENDS:
                        n = requests if workload.model == "identity" else max(10, requests // 5)
                        backend_rows.append(measure(client, workload, backend, "grpc", n))
                        print(f"  {workload.label} on {backend}", flush=True)
            for workload in PROTOCOL_WORKLOADS:
                for protocol, make_client in PROTOCOLS.items():
                    with make_client(gateway) as client:
                        n = requests if protocol != "rest-json" else max(10, requests // 5)
                        protocol_rows.append(measure(client, workload, "triton", protocol, n))
                    print(f"  {workload.label} over {protocol}", flush=True)
    tables = (
        "Backends (gRPC to the gateway)\n"
        + format_table(backend_rows)
        + "\n\nProtocols (Triton backend)\n"
        + format_table(protocol_rows)
    )
    print("\n" + tables + "\n\n" + LEGEND)
    rows = [asdict(r) for r in backend_rows + protocol_rows]
    (out / "result.json").write_text(json.dumps(rows, indent=2))
    (out / "report.md").write_text(f"# infergw demo\n\n```\n{tables}\n```\n\n{LEGEND}\n")
    print(f"\nreport: {out / 'report.md'}, data: {out / 'result.json'}")
    return 0

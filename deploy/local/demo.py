"""``infergw demo``: the local stack, a short benchmark on every backend, a report.

The stack runs as a separate process (``infergw local up``), as it would for a
user, so the client's time is not mixed into the gateway's. Each (workload,
backend) pair is measured with the load generator's own ``cold`` and ``warm``
scenarios: the backend is scaled to zero where the stack's ready file says it can
be, so the first request is a real cold start, reported as time to first
prediction with its initialisation share; then warm requests, whose end-to-end
time is split into gateway queue, cold start, backend compute and protocol
(everything else: serialisation, transfer, proxying) — the split the published
serverless measurements are about. A second table compares protocols on the same
Triton backend.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infergw.gateway.processes import ProcessGroup, ProcessStartError
from infergw.loadgen import scenarios
from infergw.loadgen.progress import Progress
from infergw.loadgen.settings import Settings
from infergw.wire.protocols import Protocol

STARTUP_TIMEOUT_S = 180.0
STOP_GRACE_S = 60.0
READY_FILE = "ready.json"
WARMUP_S = 0.5  # warm requests before the measured ones, excluded
REQUEST_TIMEOUT_S = 120.0
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
# The protocols compared, as the tables name them.
PROTOCOLS: dict[Protocol, str] = {
    Protocol.GRPC: "grpc",
    Protocol.REST_BINARY: "rest-binary",
    Protocol.REST: "rest-json",
}


@dataclass(frozen=True)
class Stack:
    """The running local stack: its ready file, and that file's document."""

    ready_file: Path
    info: Mapping[str, Any]


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
    server_compute_ms: float  # Triton's statistics, mean over the window (NaN: none)
    errors: int  # failed requests (first and warm); their codes are printed


@contextmanager
def local_stack_process(workdir: Path) -> Iterator[dict[str, Any]]:
    """Run ``infergw local up`` on free ports; yield its ready-file document."""
    ready = workdir / READY_FILE
    log_path = workdir / "local-up.log"
    cmd = [sys.executable, "-m", "infergw.gateway.cli", "local", "up", "--ready-file", str(ready)]
    cmd += ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    # On SIGTERM it stops everything it started (each in a session of its own), then exits.
    with ProcessGroup.start(cmd, log=log_path, name="local up", grace_s=STOP_GRACE_S) as stack:
        try:
            stack.wait_ready(ready.exists, STARTUP_TIMEOUT_S)
        except ProcessStartError as exc:
            raise RuntimeError(f"local stack did not start: {exc}") from exc
        yield json.loads(ready.read_text())


async def measure(
    stack: Stack, workload: Workload, backend: str, protocol: Protocol, requests: int
) -> Row:
    """The load generator's cold scenario (one first request, after scaling the backend to
    zero where the stack can), then its warm one (closed loop, one request at a time)."""
    gateway = stack.info["gateway"]
    settings = Settings(
        target=gateway["http"] if protocol.is_rest else gateway["grpc"],
        protocol=protocol,
        model=workload.model,
        backend=backend,
        timeout=REQUEST_TIMEOUT_S,
        stack_ready_file=str(stack.ready_file),
    )
    ctx = scenarios.Context(asyncio.Event(), Progress(False), [])
    cold = settings.replace(scenario="cold", repeats=1, cold_wait=0.0)  # 0: cannot scale
    await scenarios.cold(cold, ctx, workload.inputs)
    warm = settings.replace(scenario="warm", concurrency=1, requests=requests, warmup=WARMUP_S)
    await scenarios.warm(warm, ctx, workload.inputs)
    first_run, warm_run = ctx.runs
    first = first_run["cold"][0] if first_run["cold"] else {}
    errors = {**first_run["errors"]}
    for code, count in warm_run["errors"].items():
        errors[code] = errors.get(code, 0) + count
    if errors:
        print(f"    errors: {errors}", flush=True)

    def p50(phase: str) -> float:
        return float((warm_run["split_ms"].get(phase) or {}).get("p50", math.nan))

    stats = warm_run["server_stats"] or {}
    return Row(
        workload=workload.label,
        backend=backend,
        protocol=PROTOCOLS[protocol],
        requests=requests,
        first_ms=float(first.get("first_ms", math.nan)),
        first_coldstart_ms=float(first.get("init_ms", math.nan)),
        e2e_p50_ms=float(warm_run["latency_ms"].get("p50", math.nan)),
        e2e_p95_ms=float(warm_run["latency_ms"].get("p95", math.nan)),
        queue_p50_ms=p50("queue"),
        backend_rtt_p50_ms=p50("backend"),
        compute_p50_ms=p50("compute"),
        protocol_p50_ms=p50("protocol"),
        server_compute_ms=float(stats.get("compute_ms_mean", math.nan)),
        errors=sum(errors.values()),
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
Times in ms. first: end-to-end of the first request after scaling the backend to zero
(serverless backends; Triton's models stay loaded), so it is a cold start, and init:
the initialisation the backend reported for it. Then warm requests, p50 unless marked:
e2e measured by the client (the load generator); queue = the gateway's admission wait;
backend = one gateway->backend round trip; compute = model execution reported by the
function/container, and for Triton by its per-request trace spans, joined by the
gateway after the response (a request whose spans never arrived counts in `~` window
means from Triton's statistics, never in protocol); protocol = e2e minus queue,
coldstart and compute — serialisation, transfer and proxying."""


def run_demo(out: Path, requests: int = 100) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="infergw-demo-") as tmp:
        print("starting the local stack (tritonserver, stand-ins, gateway)...", flush=True)
        with local_stack_process(Path(tmp)) as endpoints:
            print(f"gateway: {endpoints['gateway']}", flush=True)
            stack = Stack(Path(tmp) / READY_FILE, endpoints)
            backend_rows, protocol_rows = asyncio.run(_benchmark(stack, requests))
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


async def _benchmark(stack: Stack, requests: int) -> tuple[list[Row], list[Row]]:
    backend_rows: list[Row] = []
    for workload in BACKEND_WORKLOADS:
        for backend in stack.info["backends"]:  # triton first, then the serverless ones
            n = requests if workload.model == "identity" else max(10, requests // 5)
            print(f"  {workload.label} on {backend}", flush=True)
            backend_rows.append(await measure(stack, workload, backend, Protocol.GRPC, n))
    protocol_rows: list[Row] = []
    for workload in PROTOCOL_WORKLOADS:
        for protocol, label in PROTOCOLS.items():
            n = requests if protocol is not Protocol.REST else max(10, requests // 5)
            print(f"  {workload.label} over {label}", flush=True)
            protocol_rows.append(await measure(stack, workload, "triton", protocol, n))
    return backend_rows, protocol_rows

"""Per-backend latency through the gateway on the local stack (a script, not a test).

For each backend (triton, lambda, sagemaker, cloudrun) and model (minilm, yolo):
warm p50/p95/p99 end-to-end with the Server-Timing split (queue, coldstart,
compute, protocol), and time to first prediction after scale-to-zero, split into
initialisation (what the backend reports as coldstart) and the rest. Both are the
load generator's own ``warm`` and ``cold`` scenarios (``infergw bench``), run
against the stack's ready file.

    .venv/bin/python bench/backends.py [--requests 50] [--cold 3] [--out out/bench]

The stack runs as a separate process (``infergw local up``) on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

from infergw.clients import GrpcClient, InferGWError
from infergw.deploy.local.demo import READY_FILE, local_stack_process
from infergw.loadgen import payloads, scenarios, standins
from infergw.loadgen.progress import Progress
from infergw.loadgen.settings import Settings

MODELS = ("minilm", "yolo")
WARMUP_S = 1.0  # about the 3 warm-up requests this script sent before (yolo: ~0.2 s each)
REQUEST_TIMEOUT_S = 120.0


def _context() -> scenarios.Context:
    return scenarios.Context(asyncio.Event(), Progress(False), [])


async def warm(s: Settings, n: int) -> dict[str, float] | str:
    """The warm scenario, one request at a time: its percentiles and split medians, or
    why no request succeeded."""
    ctx = _context()
    (run,) = await scenarios.warm(
        s.replace(scenario="warm", concurrency=1, requests=n, warmup=WARMUP_S), ctx
    )
    if not run["ok"]:
        return await asyncio.to_thread(_why_failed, s, run["errors"])
    latency, split = run["latency_ms"], run["split_ms"]

    def med(phase: str) -> float:
        return float((split.get(phase) or {}).get("p50", math.nan))

    return {
        "p50": latency["p50"],
        "p95": latency["p95"],
        "p99": latency["p99"],
        "queue": med("queue"),
        "offload": med("offload"),
        "compute": med("compute"),
        "backend": med("backend"),
        "protocol": med("protocol"),
    }


async def cold(s: Settings, n: int) -> list[dict[str, float]]:
    """The cold scenario: ``n`` times scale to zero (through the ready file) + one request."""
    (run,) = await scenarios.cold(s.replace(scenario="cold", repeats=n), _context())
    return [
        {"first_ms": c["first_ms"], "init_ms": c["init_ms"], "rest_ms": c["inference_ms"]}
        for c in run["cold"]
    ]


def _why_failed(s: Settings, errors: dict[str, int]) -> str:
    """The gateway's own message for a cell that never succeeds (one SDK call)."""
    assert s.target is not None
    with GrpcClient(s.target, timeout=REQUEST_TIMEOUT_S) as client:
        try:
            client.infer(s.model, payloads.model_inputs(s.model, s.seed), backend=s.backend)
        except InferGWError as exc:  # e.g. yolo's 4.9 MB over SageMaker's 4 MB
            return f"{type(exc).__name__}: {exc.message}"
    return f"failed: {errors}"


async def measure(ready_file: Path, requests: int, cold_starts: int) -> dict[str, Any]:
    info = standins.read_ready_file(ready_file)
    results: dict[str, Any] = {"warm": {}, "cold": {}, "errors": {}}
    for model in MODELS:
        for backend in info["backends"]:
            key = f"{model}/{backend}"
            s = Settings(
                target=info["gateway"]["grpc"],
                model=model,
                backend=backend,
                timeout=REQUEST_TIMEOUT_S,
                no_server_stats=True,
                stack_ready_file=str(ready_file),
            )
            outcome = await warm(s, requests)
            if isinstance(outcome, str):
                results["errors"][key] = outcome
            else:
                results["warm"][key] = outcome
                if backend in standins.scalable(info):
                    results["cold"][key] = await cold(s, cold_starts)
            print(f"measured {key}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50, help="warm requests per cell")
    parser.add_argument("--cold", type=int, default=3, help="cold starts per serverless cell")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, local_stack_process(Path(tmp)):
        results = asyncio.run(measure(Path(tmp) / READY_FILE, args.requests, args.cold))
    results["machine"] = platform.uname()._asdict()
    print(format_report(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backends.json").write_text(json.dumps(results, indent=2))
    return 0


def format_report(results: dict[str, Any]) -> str:
    lines = [
        "warm, through the gateway over gRPC (ms; split = medians)",
        f"{'model/backend':20} {'p50':>8} {'p95':>8} {'p99':>8} {'queue':>7} {'offload':>8} "
        f"{'compute':>8} {'protocol':>9}",
    ]
    for key, w in results["warm"].items():
        lines.append(
            f"{key:20} {w['p50']:8.2f} {w['p95']:8.2f} {w['p99']:8.2f} {_ms(w['queue']):>7} "
            f"{_ms(w['offload']):>8} {_ms(w['compute']):>8} {w['protocol']:9.2f}"
        )
    for key, error in results["errors"].items():
        lines.append(f"{key:20} not served: {error}")
    lines += ["", "time to first prediction after scale-to-zero (ms; median of runs)"]
    lines.append(f"{'model/backend':20} {'first':>8} {'init':>8} {'inference':>10}")
    for key, runs in results["cold"].items():
        if not runs:
            lines.append(f"{key:20} no successful cold start")
            continue
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        lines.append(
            f"{key:20} {med['first_ms']:8.1f} {med['init_ms']:8.1f} {med['rest_ms']:10.1f}"
        )
    return "\n".join(lines)


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-backend latency through the gateway on the local stack (a script, not a test).

For each backend (triton, lambda, sagemaker, cloudrun) and model (minilm, yolo):
warm p50/p95/p99 end-to-end with the Server-Timing split (queue, coldstart,
compute, protocol), and time to first prediction after scale-to-zero, split into
initialisation (what the backend reports as coldstart) and the rest.

    .venv/bin/python bench/backends.py [--requests 50] [--cold 3] [--out out/bench]

The stack runs as a separate process (``infergw local up``) on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from infergw.clients import GrpcClient, InferGWError
from infergw.deploy.local.cloudrun_standin import scale_to_zero as cloudrun_scale_to_zero
from infergw.deploy.local.demo import SENTENCES, local_stack_process

BACKENDS = ("triton", "lambda", "sagemaker", "cloudrun")
RNG = np.random.default_rng(0)
WORKLOADS: dict[str, dict[str, np.ndarray]] = {
    "minilm": {"text": np.array(SENTENCES[:1], dtype=np.object_)},
    "yolo": {"images": RNG.random((1, 3, 640, 640), np.float32)},
}


def scale_to_zero(info: dict[str, Any], backend: str, model: str) -> None:
    """Use the stand-ins' admin routes (stand-in only; the real clouds scale on their own)."""
    endpoints = info["backends"]
    if backend == "lambda":
        url = f"{endpoints['lambda']['endpoint']}/_infergw/functions/infergw-{model}/scale-to-zero"
    elif backend == "sagemaker":
        url = (
            f"{endpoints['sagemaker']['endpoint']}/_infergw/endpoints/infergw-{model}/scale-to-zero"
        )
    else:
        asyncio.run(cloudrun_scale_to_zero(endpoints["cloudrun"]["grpc"]))
        return
    urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=30).read()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def warm(client: GrpcClient, model: str, backend: str, n: int) -> dict[str, float]:
    pin = None if backend == "triton" else backend
    for _ in range(3):
        client.infer(model, WORKLOADS[model], backend=pin)
    timings = [client.infer(model, WORKLOADS[model], backend=pin).timing for _ in range(n)]
    e2e = [t.end_to_end_ms for t in timings]

    def med(phase: str) -> float:
        values = [t.server[phase] for t in timings if phase in t.server]
        return statistics.median(values) if values else float("nan")

    return {
        "p50": pct(e2e, 50),
        "p95": pct(e2e, 95),
        "p99": pct(e2e, 99),
        "queue": med("queue"),
        "offload": med("offload"),
        "compute": med("compute"),
        "backend": med("backend"),
        "protocol": statistics.median(t.protocol_ms for t in timings),
    }


def cold(
    info: dict[str, Any], client: GrpcClient, model: str, backend: str, n: int
) -> list[dict[str, float]]:
    runs = []
    for _ in range(n):
        scale_to_zero(info, backend, model)
        t = client.infer(model, WORKLOADS[model], backend=backend).timing
        init = t.server.get("coldstart", 0.0)
        runs.append(
            {"first_ms": t.end_to_end_ms, "init_ms": init, "rest_ms": t.end_to_end_ms - init}
        )
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50, help="warm requests per cell")
    parser.add_argument("--cold", type=int, default=3, help="cold starts per serverless cell")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args()
    results: dict[str, Any] = {"warm": {}, "cold": {}, "errors": {}}
    results["machine"] = platform.uname()._asdict()
    with tempfile.TemporaryDirectory() as tmp, local_stack_process(Path(tmp)) as info:
        client = GrpcClient(info["gateway"]["grpc"], timeout=120)
        try:
            for model in WORKLOADS:
                for backend in BACKENDS:
                    key = f"{model}/{backend}"
                    try:
                        results["warm"][key] = warm(client, model, backend, args.requests)
                        if backend != "triton":
                            results["cold"][key] = cold(info, client, model, backend, args.cold)
                    except InferGWError as exc:  # e.g. yolo's 4.9 MB over SageMaker's 4 MB
                        results["errors"][key] = f"{type(exc).__name__}: {exc.message}"
                    print(f"measured {key}", flush=True)
        finally:
            client.close()
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
            f"{key:20} {w['p50']:8.2f} {w['p95']:8.2f} {w['p99']:8.2f} {w['queue']:7.2f} "
            f"{_ms(w['offload']):>8} {_ms(w['compute']):>8} {w['protocol']:9.2f}"
        )
    for key, error in results["errors"].items():
        lines.append(f"{key:20} not served: {error}")
    lines += ["", "time to first prediction after scale-to-zero (ms; median of runs)"]
    lines.append(f"{'model/backend':20} {'first':>8} {'init':>8} {'inference':>10}")
    for key, runs in results["cold"].items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        lines.append(
            f"{key:20} {med['first_ms']:8.1f} {med['init_ms']:8.1f} {med['rest_ms']:10.1f}"
        )
    return "\n".join(lines)


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())

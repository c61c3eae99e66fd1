"""Spill-over to a Lambda that has scaled to zero: how long spilled requests take.

    .venv/bin/python bench/spill_prewarm.py [--requests N] [--in-flight C] [--out FILE]

The real Triton with one slot is the primary for ``minilm``; a Lambda stand-in function
(our real handler in worker processes; a cold start is a process start plus a model
load) is the overflow, with no instance at the start. ``--in-flight`` clients keep
sending, so Triton's queue passes ``max_queue_wait_ms`` at once. Printed: how many
requests spilled, how many of those paid a cold start, the time to the first spilled
answer, spilled p50/p99 against the warm p99 of the same function (its warm answers
in the same run), and the pre-warm pings the gateway sent. Everything runs on
127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from infergw.deploy.local.lambda_standin import FunctionConfig, LambdaStandIn
from infergw.deploy.triton.launcher import TritonServer
from infergw.gateway.app import Gateway
from infergw.gateway.core.config import parse_config
from infergw.gateway.lifecycle import ThreadedService
from infergw.wire.server_timing import parse_server_timing

CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
BODY = json.dumps(
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["warm me"]}]}
).encode()


def one(http: str) -> tuple[float, dict[str, Any]]:
    """One minilm request: its latency (ms) and its Server-Timing entries by name."""
    request = urllib.request.Request(
        f"http://{http}/v2/models/minilm/infer", BODY, {"Content-Type": "application/json"}
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as reply:
        reply.read()
        header = reply.headers["Server-Timing"]
    ms = (time.perf_counter() - t0) * 1000.0
    return ms, {e.name: e for e in parse_server_timing(header)}


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--in-flight", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.update(CREDS)
    function = FunctionConfig("overflow", env={**CREDS, "INFERGW_MODELS": "minilm"})
    with TritonServer(models=["minilm"]) as triton:
        standin = ThreadedService(LambdaStandIn([function]))
        try:
            spill = {"kind": "spillover", "primary": "triton", "overflow": ["lambda"]}
            config = parse_config(
                {
                    "listen": {
                        "host": "127.0.0.1",
                        "grpc_port": 0,
                        "http_port": 0,
                        "metrics_port": 0,
                    },
                    "backends": {
                        "triton": {
                            "kind": "triton",
                            "url": triton.endpoints.grpc,
                            "max_concurrency": 1,
                            "max_queue": 64,
                        },
                        "lambda": {
                            "kind": "lambda",
                            "function_name": "overflow",
                            "endpoint_url": standin.service.endpoint,
                        },
                    },
                    "models": {"minilm": {"policy": {**spill, "max_queue_wait_ms": 20}}},
                }
            )
            gateway = ThreadedService(Gateway(config))
            try:
                http = gateway.service.addresses["http"]
                t0 = time.perf_counter()
                with ThreadPoolExecutor(args.in_flight) as pool:
                    answers = list(
                        pool.map(lambda _: (time.perf_counter(), *one(http)), range(args.requests))
                    )
                metrics = (
                    urllib.request.urlopen(f"http://{gateway.service.addresses['metrics']}/metrics")
                    .read()
                    .decode()
                )
            finally:
                gateway.close()
        finally:
            standin.close()
    spilled = [
        (sent - t0, ms, e)
        for sent, ms, e in answers
        if "backend=lambda" in e["backend"].description
    ]
    cold = [s for s in spilled if "coldstart" in s[2]]
    warm_ms = [ms for _, ms, e in spilled if "coldstart" not in e]
    prewarms = [
        line for line in metrics.splitlines() if line.startswith("infergw_keep_warm_pings_total")
    ]
    summary = {
        "requests": len(answers),
        "in_flight": args.in_flight,
        "spilled": len(spilled),
        "spilled_cold": len(cold),
        "first_spill_sent_at_s": round(spilled[0][0], 3) if spilled else None,
        "first_spill_ms": round(spilled[0][1], 1) if spilled else None,
        "spilled_p50_ms": round(statistics.median(s[1] for s in spilled), 1) if spilled else None,
        "spilled_p99_ms": p99([s[1] for s in spilled]),
        "warm_spilled_p99_ms": p99(warm_ms),
        "prewarm_pings": prewarms,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""TF Serving REST predict through the gateway vs OIP REST JSON, gateway and direct Triton.

    .venv/bin/python bench/tfserving_rest.py [--rounds 7] [--requests 20] [--out FILE.json]

Starts Triton and ``infergw serve`` (its own process, routing every model to Triton),
then sends the same ``identity`` FP32 tensor three ways with one ``requests`` session
each (pre-serialized bodies, so the client does the same work per call):

* ``direct``: OIP REST JSON straight to Triton;
* ``gateway-oip``: OIP REST JSON to the gateway;
* ``gateway-tfs``: TF Serving's columnar ``{"inputs": ...}`` to the gateway.

Rounds interleave the three; each round's median per target, then the median of the
rounds. Small (1x16) and large (256x1024, ~2.6 MB of JSON) tensors. A script, not a
test: timings on a shared box are noise for assertions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import servers

from infergw.deploy.triton.launcher import TritonServer

SHAPES = {"small": (1, 16), "large": (256, 1024)}


def bodies(array: np.ndarray) -> tuple[bytes, bytes]:
    """(OIP REST JSON, TF Serving columnar JSON) for the same tensor."""
    oip = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(array.shape),
                "data": array.reshape(-1).tolist(),
            }
        ]
    }
    return json.dumps(oip).encode(), json.dumps({"inputs": array.tolist()}).encode()


def timed_ms(session: requests.Session, url: str, body: bytes) -> float:
    t0 = time.perf_counter()
    response = session.post(url, data=body, headers={"Content-Type": "application/json"})
    elapsed = (time.perf_counter() - t0) * 1e3
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
    return elapsed


def measure(targets: dict[str, tuple[str, bytes]], rounds: int, count: int) -> dict[str, float]:
    sessions = {name: requests.Session() for name in targets}
    try:
        for name, (url, body) in targets.items():  # warm up: connections, signature cache
            for _ in range(3):
                timed_ms(sessions[name], url, body)
        per_round: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(rounds):
            for name, (url, body) in targets.items():
                samples = [timed_ms(sessions[name], url, body) for _ in range(count)]
                per_round[name].append(statistics.median(samples))
        return {name: statistics.median(values) for name, values in per_round.items()}
    finally:
        for session in sessions.values():
            session.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with TritonServer(models=["identity"]) as triton:
        gateway = servers.GatewayProcess(triton.endpoints.grpc)
        try:
            gateway.start()
            for label, shape in SHAPES.items():
                array = np.random.default_rng(0).random(shape, np.float32)
                oip, tfs = bodies(array)
                targets = {
                    "direct": (f"http://{triton.endpoints.http}/v2/models/identity/infer", oip),
                    "gateway-oip": (f"http://{gateway.http}/v2/models/identity/infer", oip),
                    "gateway-tfs": (f"http://{gateway.http}/v1/models/identity:predict", tfs),
                }
                medians = measure(targets, args.rounds, args.requests)
                results[label] = {
                    "shape": list(shape),
                    "oip_body_bytes": len(oip),
                    "tfs_body_bytes": len(tfs),
                    "median_ms": medians,
                    "tfs_over_oip_gateway": medians["gateway-tfs"] / medians["gateway-oip"],
                    "tfs_over_direct": medians["gateway-tfs"] / medians["direct"],
                }
                print(label, json.dumps(results[label], indent=1), flush=True)
        finally:
            gateway.stop()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

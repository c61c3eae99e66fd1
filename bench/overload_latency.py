"""Where does an overloaded gRPC request's time go? (issue 9 item 10; not a test)

An open-loop gRPC client at a fixed rate against an infergw gRPC endpoint, recording
per request: the intended send time, the time the client actually started the call,
the time the answer arrived, the status, and the gateway's Server-Timing ``total`` and
``queue``. It prints, for the successful calls, percentiles of

- ``latency``   answer - intended send (what the load generator reports, no coordinated omission)
- ``lag``       actual start - intended send (the client falling behind its own schedule)
- ``in_flight`` answer - actual start
- ``total``     the gateway's own ``total`` (handler start -> response handed to gRPC)
- ``outside``   in_flight - total (transport, the server's completion queue before the
                handler runs, and the client's own event loop delivering the answer)

plus the CPU share of this client process and (with ``--server-pid``) of the server,
so a saturated client is told apart from a saturated server.

    python bench/overload_latency.py --target 127.0.0.1:8001 --model minilm --rate 200 \
        --duration 10 [--server-pid PID] [--channels 1] [--out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def _request(model: str) -> bytes:
    req = pb.ModelInferRequest(model_name=model)
    if model == "minilm":
        tensor = req.inputs.add(name="text", datatype="BYTES", shape=[1])
        text = b"The quick brown fox jumps over the lazy dog."
        req.raw_input_contents.append(len(text).to_bytes(4, "little") + text)
    else:
        tensor = req.inputs.add(name="input", datatype="FP32", shape=[1, 16])
        req.raw_input_contents.append(np.zeros(16, np.float32).tobytes())
    del tensor
    return req.SerializeToString()


def _server_timing(metadata: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metadata or ():
        if key != "server-timing":
            continue
        for entry in str(value).split(","):
            name, _, params = entry.strip().partition(";")
            for param in params.split(";"):
                k, _, v = param.strip().partition("=")
                if k == "dur" and name not in out:
                    out[name] = float(v)
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    payload = _request(args.model)
    channels = [grpc.aio.insecure_channel(args.target) for _ in range(args.channels)]
    calls = [ch.unary_unary(MODEL_INFER) for ch in channels]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 10)
    records: list[dict[str, Any]] = []
    details: dict[str, str] = {}  # the first message per status code
    loop = asyncio.get_running_loop()

    async def one(i: int, intended: float) -> None:
        started = loop.time()
        call = calls[i % len(calls)](payload, timeout=args.timeout)
        code = "OK"
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            details.setdefault(code, exc.details() or "")
        done = loop.time()
        timing = _server_timing(await call.trailing_metadata())
        records.append(
            {"intended": intended, "started": started, "done": done, "code": code, **timing}
        )

    n = int(args.rate * args.duration)
    server_cpu0 = _cpu_seconds(args.server_pid) if args.server_pid else None
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    t0 = loop.time() + 0.1
    tasks = []
    for i in range(n):
        intended = t0 + i / args.rate
        delay = intended - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(i, intended)))
    await asyncio.gather(*tasks)
    wall = time.monotonic() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime) / wall
    server_cpu = (
        (_cpu_seconds(args.server_pid) - server_cpu0) / wall if server_cpu0 is not None else None
    )
    for ch in channels:
        await ch.close()

    ok = [r for r in records if r["code"] == "OK"]
    series = {
        "latency": [(r["done"] - r["intended"]) * 1e3 for r in ok],
        "lag": [(r["started"] - r["intended"]) * 1e3 for r in ok],
        "in_flight": [(r["done"] - r["started"]) * 1e3 for r in ok],
        "total": [r.get("total", float("nan")) for r in ok],
        "queue": [r.get("queue", 0.0) for r in ok],
        "outside": [(r["done"] - r["started"]) * 1e3 - r.get("total", 0.0) for r in ok],
    }
    codes: dict[str, int] = {}
    for r in records:
        codes[r["code"]] = codes.get(r["code"], 0) + 1
    return {
        "target": args.target,
        "model": args.model,
        "rate": args.rate,
        "duration_s": args.duration,
        "channels": args.channels,
        "requests": n,
        "codes": codes,
        "details": details,
        "achieved_ok_rps": round(len(ok) / wall, 1),
        "client_cpu_share": round(client_cpu, 2),
        "server_cpu_share": None if server_cpu is None else round(server_cpu, 2),
        "ok_ms": {k: {"p50": _pct(v, 50), "p99": _pct(v, 99)} for k, v in series.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", default="identity")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

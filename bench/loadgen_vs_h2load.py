"""The load generator measured against h2load, on Triton's gRPC port (a script, not a test).

In one run, on one Triton (``identity``, FP32 [1, 16], pre-serialized request):

1. maximum rate: ``infergw.loadgen`` closed loop (one process, 64 in flight on one
   connection) vs h2load (one connection, 64 streams), and a bare grpc.aio loop (no
   measurement at all: the floor of any Python client); alternated for ``--rounds``
   rounds, medians reported, since the two cores are shared with Triton and figures
   drift between windows. Triton's statistics confirm h2load's requests succeeded
   (h2load does not read grpc-status);
2. p50 at a fixed moderate rate (open loop, default 500 rps) vs ``h2load --rps`` with
   its per-request log (h2load prints no percentiles);
3. memory: RSS sampled every second while the open loop sends ``--memory-requests``
   requests; the slope of a least-squares line over the last 80% of the samples.

    .venv/bin/python bench/loadgen_vs_h2load.py [--seconds 10] [--rate 500]
        [--memory-requests 1000000] [--out out/bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from grpc_load import MODEL_INFER, identity_payload
from h2load import INSTALL_HINT, h2load_binary, run_h2load, write_grpc_body

from infergw.deploy.triton.launcher import TritonServer
from infergw.loadgen import schedules
from infergw.loadgen.runner import closed_loop, open_loop
from infergw.loadgen.targets import GrpcSender
from infergw.wire import grpc_channel

COLUMNS = 16
CONCURRENCY = 64


def sender(address: str) -> GrpcSender:
    payload = identity_payload("tiny", COLUMNS)
    s = GrpcSender(address, "identity", {"input": np.zeros((1, COLUMNS), np.float32)})
    s.request = payload.request  # the exact bytes h2load sends
    s.sent_bytes = len(payload.request) + 5
    return s


async def loadgen_max_rate(address: str, seconds: float) -> dict[str, Any]:
    s = sender(address)
    await s.open()
    try:
        rec = await closed_loop(s, concurrency=CONCURRENCY, duration_s=seconds, warmup_s=0.5)
    finally:
        await s.close()
    run = rec.run_dict("max", "closed", {}, offered=False)
    return {"rps": run["achieved_rps"], "ok": rec.ok, "errors": dict(rec.errors)}


async def bare_grpc_aio_max_rate(address: str, seconds: float) -> float:
    """The same calls with nothing measured: what grpc.aio alone sustains."""
    request = identity_payload("tiny", COLUMNS).request
    async with grpc_channel.aio_channel(address, private=True) as channel:
        infer = channel.unary_unary(MODEL_INFER)
        done = 0
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await infer(request, timeout=60.0)
                done += 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / seconds


async def loadgen_fixed_rate(address: str, rate: float, seconds: float) -> dict[str, Any]:
    s = sender(address)
    await s.open()
    try:
        rec = await open_loop(s, schedules.constant(rate), duration_s=seconds, warmup_s=1.0)
    finally:
        await s.close()
    p50, p99 = rec.latency.percentiles((50, 99))
    run = rec.run_dict("fixed", "open", {}, offered=True)
    return {
        "p50_ms": p50,
        "p99_ms": p99,
        "achieved_rps": run["achieved_rps"],
        "late_sends": rec.late,
        "ok": rec.ok,
        "errors": dict(rec.errors),
    }


def h2load_fixed_rate(binary: str, address: str, body: Path, rate: float, seconds: float) -> dict:
    """h2load --rps with a per-request log: (start us, status, duration us) per line."""
    log = body.with_suffix(".log")
    args = [binary, "-c", "1", "-t", "1", "-m", str(CONCURRENCY), "--rps", str(rate)]
    args += ["-D", f"{seconds:.0f}", "--warm-up-time", "1s", "-d", str(body)]
    args += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    args += [f"--log-file={log}", f"http://{address}{MODEL_INFER}"]
    subprocess.run(args, capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    durations = [int(r[2]) / 1000.0 for r in rows if r[1] == "200"]
    return {
        "p50_ms": statistics.median(durations),
        "p99_ms": float(np.percentile(durations, 99)),
        "requests": len(durations),
        "non_200": sum(1 for r in rows if r[1] != "200"),
    }


class RssSampler(threading.Thread):
    """RSS of this process once a second, with the request count at that moment."""

    def __init__(self, count: Any) -> None:
        super().__init__(daemon=True)
        self.count = count
        self.samples: list[tuple[float, int, float]] = []
        self.done = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.done.wait(1.0):
            with open("/proc/self/statm") as f:
                rss_mb = int(f.read().split()[1]) * self.page / 2**20
            self.samples.append((time.monotonic() - t0, self.count(), rss_mb))


class CountingSender(GrpcSender):
    """Counts completed sends, for the RSS sampler (the recorder lives inside the loop)."""

    completed = 0

    async def send(self) -> Any:
        outcome = await super().send()
        self.completed += 1
        return outcome


async def memory_run(address: str, requests: int, rate: float) -> dict[str, Any]:
    s = sender(address)
    s.__class__ = CountingSender
    await s.open()
    sampler = RssSampler(lambda: s.completed)  # type: ignore[attr-defined]
    sampler.start()
    t0 = time.perf_counter()
    try:
        rec = await open_loop(s, schedules.constant(rate), max_requests=requests)
    finally:
        sampler.done.set()
        sampler.join()
        await s.close()
    elapsed = time.perf_counter() - t0
    tail = sampler.samples[len(sampler.samples) // 5 :]
    slope = 0.0
    if len(tail) >= 2:
        xs = np.array([c for _, c, _ in tail], float)
        ys = np.array([m for _, _, m in tail], float)
        slope = float(np.polyfit(xs, ys, 1)[0]) * 100_000  # MB per 100k requests
    return {
        "requests": rec.completed,
        "ok": rec.ok,
        "errors": dict(rec.errors),
        "dropped": rec.dropped,
        "late_sends": rec.late,
        "rate": rate,
        "seconds": elapsed,
        "rss_mb_first": tail[0][2] if tail else None,
        "rss_mb_last": tail[-1][2] if tail else None,
        "rss_mb_max": max(m for _, _, m in sampler.samples) if sampler.samples else None,
        "slope_mb_per_100k_requests": slope,
        "p50_ms": rec.latency.percentile(50),
        "samples": sampler.samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput window")
    parser.add_argument("--rounds", type=int, default=3, help="max-rate rounds (median)")
    parser.add_argument("--rate", type=float, default=500.0, help="fixed rate for the p50")
    parser.add_argument("--memory-requests", type=int, default=1_000_000)
    parser.add_argument("--memory-rate", type=float, help="default: 60%% of the max rate")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args()
    binary = h2load_binary()
    if binary is None:
        raise SystemExit(f"h2load not found: {INSTALL_HINT}")
    result: dict[str, Any] = {"machine": platform.uname()._asdict(), "cpus": os.cpu_count()}
    with TritonServer(models=["identity"]) as triton, tempfile.TemporaryDirectory() as tmp:
        grpc_addr, http_addr = triton.endpoints.grpc, triton.endpoints.http
        body = write_grpc_body(identity_payload("tiny", COLUMNS), Path(tmp) / "body.bin")
        asyncio.run(loadgen_max_rate(grpc_addr, 2.0))  # warm Triton and the Python side
        rounds: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            h2 = run_h2load(binary, grpc_addr, body, CONCURRENCY, args.seconds, http_addr)
            lg = asyncio.run(loadgen_max_rate(grpc_addr, args.seconds))
            bare = asyncio.run(bare_grpc_aio_max_rate(grpc_addr, args.seconds))
            rounds.append({"h2load": h2.as_dict(), "loadgen": lg, "bare_grpc_aio_rps": bare})
            print(
                f"max rate: loadgen {lg['rps']:.0f}, bare grpc.aio {bare:.0f}, h2load "
                f"{h2.rps:.0f} rps",
                flush=True,
            )
        lg_rps = statistics.median(r["loadgen"]["rps"] for r in rounds)
        h2_rps = statistics.median(r["h2load"]["rps"] for r in rounds)
        bare_rps = statistics.median(r["bare_grpc_aio_rps"] for r in rounds)
        result["max_rate"] = {
            "rounds": rounds,
            "loadgen_rps": lg_rps,
            "h2load_rps": h2_rps,
            "bare_grpc_aio_rps": bare_rps,
            "ratio_to_h2load": lg_rps / h2_rps,
            "ratio_to_bare_grpc_aio": lg_rps / bare_rps,
        }
        h2_fixed = h2load_fixed_rate(binary, grpc_addr, body, args.rate, args.seconds)
        lg_fixed = asyncio.run(loadgen_fixed_rate(grpc_addr, args.rate, args.seconds))
        result["fixed_rate"] = {
            "rate": args.rate,
            "h2load": h2_fixed,
            "loadgen": lg_fixed,
            "p50_ratio": lg_fixed["p50_ms"] / h2_fixed["p50_ms"],
        }
        print(
            f"p50 at {args.rate:.0f} rps: loadgen {lg_fixed['p50_ms']:.3f} ms, "
            f"h2load {h2_fixed['p50_ms']:.3f} ms",
            flush=True,
        )
        memory_rate = args.memory_rate or round(0.6 * lg_rps, -1)
        mem = asyncio.run(memory_run(grpc_addr, args.memory_requests, memory_rate))
        result["memory"] = mem
        print(
            f"memory: {mem['requests']} requests at {memory_rate:.0f} rps in {mem['seconds']:.0f}"
            f" s; RSS {mem['rss_mb_first']:.1f} -> {mem['rss_mb_last']:.1f} MB, slope "
            f"{mem['slope_mb_per_100k_requests']:.3f} MB per 100k requests",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loadgen_vs_h2load.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, default=str)[:3000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Soak: a steady open-loop load over gRPC and REST for N minutes, watching the gateway.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 200] [--grpc-share 0.5]
        [--backend triton|runtime] [--sample-s 5] [--out out/soak.json]
    .venv/bin/python bench/soak.py --grpc HOST:PORT --http HOST:PORT [--pid PID] ...

Without ``--grpc``/``--http`` it starts its own gateway (``infergw serve``, its own process
group) routing ``identity`` to a tritonserver it also starts (``--backend triton``) or to
the in-process example-model runtime (``--backend runtime``). Requests go out on a fixed
schedule (open loop: latency counts from the intended send time, so a stall shows up as
latency and as missed sends rather than as a lower rate), every call bounded by
``--timeout-s``, at most ``--max-in-flight`` at once (a send beyond that is counted as
``client:overloaded``, not queued). Every ``--sample-s`` seconds it records the gateway's
RSS and open file descriptors from /proc. After a ``--warmup-s`` load phase whose samples
do not count, it fits RSS against time (least squares) over the measured window.

The JSON report holds every sample, outcomes by protocol and code, latency percentiles
and the figures the README quotes: RSS slope in MB/min, FD count at start and end,
error count. It stops by itself after ``--warmup-s`` + ``--minutes``, or early on
Ctrl-C/SIGTERM (the report then says ``"interrupted": true``), and stops everything it
started. Exit status: 0 with no error, 1 if any request failed, 130 if interrupted, 3 if
a process it started was left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import servers
from grpc_load import MODEL_INFER, identity_payload

from infergw.wire import grpc_channel

AFTER_CLOSE_S = 2.0  # after the clients close their connections, before the last FD count
COLUMNS = 16  # identity FP32 [1, 16]: the gateway's own cost, not the payload's


@dataclass
class Tally:
    """Outcomes and latencies of the measured window, per protocol."""

    codes: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    latency_ms: dict[str, list[float]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    late_sends: int = 0  # sends that left more than 50 ms after their slot (client lagging)

    def record(self, protocol: str, code: str, latency_ms: float) -> None:
        self.codes[protocol][code] += 1
        if code in ("grpc:OK", "http:200"):
            self.latency_ms[protocol].append(latency_ms)

    def errors(self) -> int:
        return sum(n for c in self.codes.values() for code, n in c.items() if code not in OK_CODES)


OK_CODES = ("grpc:OK", "http:200")


@dataclass
class Sample:
    t_s: float  # since the start of the measured window (negative: warm-up)
    rss_mb: float | None
    fds: int | None
    threads: int | None
    done: int
    errors: int


def proc_status(pid: int) -> tuple[float | None, int | None, int | None]:
    """RSS (MB), open FDs and threads of ``pid``; Nones if it cannot be read (gone)."""
    try:
        rss = threads = None
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None, None, None
    return rss, fds, threads


def rest_body(data: bytes) -> bytes:
    values = np.frombuffer(data, dtype=np.float32).tolist()
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, COLUMNS], "data": values}
    return json.dumps({"inputs": [tensor]}).encode()


class Load:
    """The open-loop sender: one schedule, requests alternating by share between wires."""

    def __init__(self, args: argparse.Namespace, grpc_addr: str, http_addr: str) -> None:
        self.args = args
        payload = identity_payload("tiny", COLUMNS)
        self.grpc_request = payload.request
        self.rest_body = rest_body(payload.data)
        self.rest_url = f"http://{http_addr}/v2/models/identity/infer"
        self.channel = grpc_channel.aio_channel(grpc_addr)
        self.infer: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(
            MODEL_INFER
        )
        connector = aiohttp.TCPConnector(limit=args.max_in_flight)
        timeout = aiohttp.ClientTimeout(total=args.timeout_s)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        self.tally = Tally()
        self.warmup = Tally()
        self.in_flight = 0
        self.done = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=self.args.timeout_s + 1)
        await self.session.close()
        await self.channel.close()

    async def call_grpc(self) -> str:
        try:
            await self.infer(self.grpc_request, timeout=self.args.timeout_s)
        except grpc.aio.AioRpcError as err:
            return f"grpc:{err.code().name}"
        return "grpc:OK"

    async def call_rest(self) -> str:
        try:
            async with self.session.post(
                self.rest_url, data=self.rest_body, headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                return f"http:{response.status}"
        except TimeoutError:
            return "http:timeout"
        except aiohttp.ClientError as exc:
            return f"http:{type(exc).__name__}"

    async def one(self, protocol: str, intended: float, tally: Tally) -> None:
        self.in_flight += 1
        try:
            code = await (self.call_grpc() if protocol == "grpc" else self.call_rest())
        finally:
            self.in_flight -= 1
        self.done += 1
        tally.record(protocol, code, (time.perf_counter() - intended) * 1000)

    async def run(self, stop: asyncio.Event, warmup_s: float, measure_s: float) -> float:
        """Send until the schedule ends or ``stop`` is set; returns the measured seconds."""
        interval = 1.0 / self.args.rate
        start = time.perf_counter()
        measure_from = start + warmup_s
        end = measure_from + measure_s
        credit = 0.0  # Bresenham-style split: exact shares, evenly interleaved
        n = 0
        while not stop.is_set():
            intended = start + n * interval
            if intended >= end:
                break
            delay = intended - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
            tally = self.tally if intended >= measure_from else self.warmup
            if time.perf_counter() - intended > 0.05:
                tally.late_sends += 1
            credit += self.args.grpc_share
            protocol = "grpc" if credit >= 1.0 else "rest"
            credit -= 1.0 if protocol == "grpc" else 0.0
            n += 1
            if self.in_flight >= self.args.max_in_flight:
                tally.record(protocol, "client:overloaded", 0.0)
                continue
            task = asyncio.create_task(self.one(protocol, intended, tally))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return max(0.0, min(time.perf_counter(), end) - measure_from)


async def sampler(
    pid: int | None, load: Load, t0: float, every_s: float, out: list[Sample], stop: asyncio.Event
) -> None:
    """Sample every ``every_s`` seconds, and once more when ``stop`` is set (the end)."""
    while True:
        rss, fds, threads = proc_status(pid) if pid else (None, None, None)
        errors = load.tally.errors() + load.warmup.errors()
        out.append(Sample(time.perf_counter() - t0, rss, fds, threads, load.done, errors))
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def slope_mb_per_min(samples: Sequence[Sample]) -> float | None:
    points = [(s.t_s / 60, s.rss_mb) for s in samples if s.t_s >= 0 and s.rss_mb is not None]
    if len(points) < 3:
        return None
    fit = statistics.linear_regression([p[0] for p in points], [p[1] for p in points])
    return fit.slope


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p = np.percentile(np.asarray(values), [50, 95, 99, 100])
    return {"p50": p[0], "p95": p[1], "p99": p[2], "max": p[3]}


async def soak(args: argparse.Namespace, grpc_addr: str, http_addr: str, pid: int | None) -> Any:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    load = Load(args, grpc_addr, http_addr)
    samples: list[Sample] = []
    sampling_stop = asyncio.Event()
    t0 = time.perf_counter() + args.warmup_s
    sampling = asyncio.create_task(sampler(pid, load, t0, args.sample_s, samples, sampling_stop))
    interrupted = False
    try:
        measured_s = await load.run(stop, args.warmup_s, args.minutes * 60)
        interrupted = stop.is_set()
        await load.close()
    finally:
        sampling_stop.set()
        await sampling
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGTERM, _interrupt)
    # Once the clients have hung up, what is still open is the gateway's own.
    await asyncio.sleep(AFTER_CLOSE_S)
    _, fds_after_close, _ = proc_status(pid) if pid else (None, None, None)
    measured = [s for s in samples if s.t_s >= 0]
    first = measured[0] if measured else None
    last = measured[-1] if measured else None
    tally = load.tally
    sent = sum(sum(c.values()) for c in tally.codes.values())
    return {
        "interrupted": interrupted,
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "gateway": {"grpc": grpc_addr, "http": http_addr, "pid": pid},
        "measured_s": round(measured_s, 1),
        "summary": {
            "requests": sent,
            "achieved_rate": round(sent / measured_s, 1) if measured_s else None,
            "errors": tally.errors(),
            "warmup_errors": load.warmup.errors(),
            "late_sends": tally.late_sends,
            "rss_mb_start": first.rss_mb if first else None,
            "rss_mb_end": last.rss_mb if last else None,
            "rss_slope_mb_per_min": slope_mb_per_min(samples),
            "fds_start": first.fds if first else None,
            "fds_end": last.fds if last else None,
            "fds_after_clients_closed": fds_after_close,
            "fds_max": max((s.fds for s in measured if s.fds is not None), default=None),
            "threads_start": first.threads if first else None,
            "threads_end": last.threads if last else None,
        },
        "codes": {p: dict(c) for p, c in tally.codes.items()},
        "warmup_codes": {p: dict(c) for p, c in load.warmup.codes.items()},
        "latency_ms": {p: percentiles(v) for p, v in tally.latency_ms.items()},
        "samples": [vars(s) for s in samples],
    }


GATEWAY_CONF = {  # per --backend: the backends and the route of every model ({triton}: url)
    "triton": 'backends:\n  triton: {{kind: triton, url: "{triton}"}}\n'
    'models:\n  identity: {{backend: triton}}\n  "*": {{backend: triton}}\n',
    "runtime": "backends:\n  local: {{kind: runtime, models: [identity], preload: true}}\n"
    'models:\n  "*": {{backend: local}}\n',
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="measured window (default 10)")
    p.add_argument("--rate", type=float, default=200.0, help="requests/s, both wires together")
    p.add_argument("--grpc-share", type=float, default=0.5, help="fraction sent over gRPC")
    p.add_argument("--warmup-s", type=float, default=30.0, help="load before measuring")
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS/FD sampling interval")
    p.add_argument("--timeout-s", type=float, default=5.0, help="bound on every call")
    p.add_argument("--max-in-flight", type=int, default=256)
    p.add_argument("--backend", choices=sorted(GATEWAY_CONF), default="triton")
    p.add_argument(
        "--data-plane",
        choices=("auto", "python", "native"),
        default="auto",
        help="who owns the started gateway's gRPC port (auto: the Rust plane, identity "
        "being routed to Triton by name)",
    )
    p.add_argument("--grpc", help="soak this gateway's gRPC address instead of starting one")
    p.add_argument("--http", help="... and its REST address")
    p.add_argument("--pid", type=int, help="... and its pid, for RSS/FD samples")
    p.add_argument("--out", type=Path, default=Path("out/soak.json"))
    args = p.parse_args(argv)
    if bool(args.grpc) != bool(args.http):
        p.error("--grpc and --http go together")
    if args.rate <= 0 or args.minutes <= 0 or not 0 <= args.grpc_share <= 1:
        p.error("--rate and --minutes must be > 0, --grpc-share in [0, 1]")
    return args


def run(args: argparse.Namespace, groups: list[int]) -> dict[str, Any]:
    if args.grpc:
        return asyncio.run(soak(args, args.grpc, args.http, args.pid))
    with contextlib.ExitStack() as stack:
        triton_grpc = ""
        if args.backend == "triton":
            from infergw.deploy.triton.launcher import TritonServer

            print("starting tritonserver ...", flush=True)
            triton = TritonServer(models=["identity"])
            stack.callback(triton.stop)
            triton_grpc = triton.start().grpc
            groups.append(triton.pid or 0)
        backend = GATEWAY_CONF[args.backend].format(triton=triton_grpc)
        config = f"listen: {{host: 127.0.0.1}}\ndata_plane: {args.data_plane}\n" + backend
        gateway = servers.GatewayProcess(registry=groups, config=config)
        stack.callback(gateway.stop)
        grpc_addr = gateway.start()
        http_addr = gateway.http
        print(f"gateway pid {gateway.pid}: grpc {grpc_addr}, http {http_addr}", flush=True)
        return asyncio.run(soak(args, grpc_addr, http_addr, gateway.pid))


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Outside the load loop (start-up, shutdown) SIGTERM unwinds like Ctrl-C, so the
    # ExitStack still stops what was started.
    signal.signal(signal.SIGTERM, _interrupt)
    total_s = args.warmup_s + args.minutes * 60
    print(
        f"soak: {args.rate:g} req/s for {total_s:.0f} s ({args.warmup_s:g} s warm-up)", flush=True
    )
    groups: list[int] = []
    try:
        report = run(args, groups)
    finally:
        time.sleep(0.2)
        left = [g for g in groups if g and servers.group_alive(g)]
        if left:
            print(f"ERROR: processes left in process groups {left}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    s = report["summary"]
    slope = s["rss_slope_mb_per_min"]
    print(
        f"{s['requests']} requests in {report['measured_s']} s ({s['achieved_rate']} req/s), "
        f"errors {s['errors']}, RSS {_mb(s['rss_mb_start'])} -> {_mb(s['rss_mb_end'])} MB "
        f"(slope {'n/a' if slope is None else f'{slope:+.3f}'} MB/min), "
        f"FDs {s['fds_start']} -> {s['fds_end']} ({s['fds_after_clients_closed']} once the "
        f"clients closed), late sends {s['late_sends']}; codes {report['codes']}; "
        f"written to {args.out}"
    )
    if left:
        return 3
    if report["interrupted"]:
        return 130
    return 1 if s["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

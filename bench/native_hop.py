"""The native plane's hop: direct Triton vs nginx ``grpc_pass`` vs the native plane, one machine.

    .venv/bin/python bench/native_hop.py [--rounds R] [--requests N] [--duration S]
                                         [--out out/bench]

Starts the real tritonserver (identity model), nginx and the native plane
(``infergw._native``, in a process of its own, ``identity`` routed natively to Triton),
measures interleaved rounds with one client (tiny 1x16 FP32 p50, 5 MB p50, 8 in flight
req/s), prints medians over rounds with the added-over-direct latency and its ratio to
nginx's, writes the raw figures as JSON, and stops everything, also on errors and Ctrl-C.
The issue's targets: tiny added <= 1.0x nginx's, 5 MB added <= 0.5x nginx's, 8 in flight
>= 0.9x direct. ``--serve-plane UPSTREAM --listen ADDR`` is the plane's own process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc_load
import servers
from gateway_overhead import LARGE_COLUMNS, TINY_COLUMNS, percentile, ratio, shielded
from grpc_load import SyncClient

from infergw.deploy.triton.launcher import TritonServer
from infergw.gateway.native_plane import NativeBackend, NativeConfig, NativePlane, available

# Targets: direct, nginx, native; with --lane also gateway (the Python gateway alone) and
# lane (the plane in front of it, identity sent to the gateway as its python lane).
LIMITS = {  # key: (bound, higher is better)
    "tiny_ratio": (1.0, False),
    "large_ratio": (0.5, False),
    "rps_ratio": (0.9, True),
}


class NativePlaneProcess(servers.ManagedProcess):
    """This script with ``--serve-plane``: the plane in its own process (own CPU account)."""

    def __init__(
        self, upstream: str, workers: int, lane: str = "", registry: list[int] | None = None
    ) -> None:
        super().__init__("native_plane", registry)
        self.upstream = upstream
        self.workers = workers
        self.lane = lane

    def start(self) -> str:
        listen = f"127.0.0.1:{servers.free_ports(1)[0]}"
        args = [sys.executable, __file__, "--serve-plane", self.upstream, "--listen", listen]
        args += ["--workers", str(self.workers)]
        if self.lane:
            args += ["--lane-address", self.lane]
        self.spawn(args, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc is not None
        servers.wait_grpc_ready(listen, self.proc, self.log, probe=servers.model_infer_probe)
        return listen


def serve_plane(upstream: str, listen: str, workers: int, lane: str | None) -> int:
    """Run a plane until SIGTERM/SIGINT: ``identity`` natively to ``upstream``; with a
    ``lane``, ``identity`` goes to the lane instead (another model keeps the scan on)."""
    config = NativeConfig(
        listen=listen,
        python_lane=lane,
        backends={"triton": NativeBackend(upstream, max_concurrency=64)},
        routes={"identity_int64" if lane else "identity": "triton"},
        worker_threads=workers,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with NativePlane(config, stop_grace_s=2.0) as plane:
        print(f"native plane on {plane.address} -> {upstream}", flush=True)
        stop.wait()
    return 0


def rotated(round_no: int, names: Sequence[str]) -> list[str]:
    """A round's order, rotated so that no target always runs first or last."""
    k = round_no % len(names)
    return [*names[k:], *names[:k]]


def measure(addresses: dict[str, str], args: Any) -> dict[str, Any]:
    tiny, large = args.payloads
    raw: dict[str, dict[str, list[Any]]] = {
        key: {t: [] for t in addresses} for key in ("tiny_ms", "large_ms", "rps")
    }
    with contextlib.ExitStack() as stack:
        clients = {name: SyncClient(addr) for name, addr in addresses.items()}
        for client in clients.values():
            stack.callback(client.close)
        print("warming up ...", flush=True)
        for name, client in clients.items():
            grpc_load.check_echo(tiny, client.call(tiny))
            grpc_load.check_echo(large, client.call(large))
            client.latencies_ms(tiny, args.warmup)
            client.latencies_ms(large, 5)
            grpc_load.throughput(addresses[name], tiny, args.concurrency, 1.0)
        print(f"measuring {args.rounds} rounds ...", flush=True)
        for round_no in range(args.rounds):
            order = rotated(round_no, list(addresses))
            for name in order:
                raw["tiny_ms"][name].append(clients[name].latencies_ms(tiny, args.requests))
            for name in order:
                raw["large_ms"][name].append(clients[name].latencies_ms(large, args.large_requests))
            for name in order:
                t = grpc_load.throughput(addresses[name], tiny, args.concurrency, args.duration)
                if t.errors:
                    print(f"  ! {name}: {t.errors} failed, first: {t.first_error}")
                raw["rps"][name].append(t.rps)
            line = "; ".join(
                f"{n} {percentile(raw['tiny_ms'][n][-1], 50):.3f}/"
                f"{percentile(raw['large_ms'][n][-1], 50):.1f} ms {raw['rps'][n][-1]:.0f} rps"
                for n in addresses
            )
            print(f"  round {round_no + 1}/{args.rounds} ({' -> '.join(order)}): {line}")
    return raw


def added(rounds: dict[str, list[list[float]]], target: str, base: str = "direct") -> float:
    """Median over rounds of (target p50 - base p50) within the same round."""
    return statistics.median(
        percentile(t, 50) - percentile(d, 50)
        for t, d in zip(rounds[target], rounds[base], strict=True)
    )


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"targets": {}}
    for name in raw["rps"]:
        entry = {
            "tiny_p50_ms": statistics.median(percentile(r, 50) for r in raw["tiny_ms"][name]),
            "large_p50_ms": statistics.median(percentile(r, 50) for r in raw["large_ms"][name]),
            "rps": statistics.median(raw["rps"][name]),
        }
        if name != "direct":
            entry["tiny_added_ms"] = added(raw["tiny_ms"], name)
            entry["large_added_ms"] = added(raw["large_ms"], name)
        out["targets"][name] = entry
    native, nginx, direct = (out["targets"][t] for t in ("native", "nginx", "direct"))
    out["tiny_ratio"] = ratio(native["tiny_added_ms"], nginx["tiny_added_ms"])
    out["large_ratio"] = ratio(native["large_added_ms"], nginx["large_added_ms"])
    out["rps_ratio"] = ratio(native["rps"], direct["rps"])
    out["nginx_rps_ratio"] = ratio(nginx["rps"], direct["rps"])
    if "lane" in raw["rps"]:  # what the python lane pays for the plane in front of it
        out["lane_tiny_added_over_gateway_ms"] = added(raw["tiny_ms"], "lane", "gateway")
        out["lane_large_added_over_gateway_ms"] = added(raw["large_ms"], "lane", "gateway")
        out["lane_rps_ratio_to_gateway"] = ratio(
            out["targets"]["lane"]["rps"], out["targets"]["gateway"]["rps"]
        )
    out["verdicts"] = {}
    for key, (bound, higher) in LIMITS.items():
        value = out[key]
        met = value is not None and (value >= bound if higher else value <= bound)
        out["verdicts"][key] = "met" if met else "MISSED"
    return out


def render(summary: dict[str, Any]) -> str:
    t = summary["targets"]
    names = list(t)
    row = "".join

    def added_row(key: str, spec: str) -> str:
        return "  added over direct   " + row(
            f"{t[n][key]:>10{spec}}" if key in t[n] else f"{'':>10}" for n in names
        )

    lines = [
        f"{'':22}" + row(f"{n:>10}" for n in names),
        "tiny 1x16 p50 ms      " + row(f"{t[n]['tiny_p50_ms']:>10.3f}" for n in names),
        added_row("tiny_added_ms", ".3f"),
        "5 MB p50 ms           " + row(f"{t[n]['large_p50_ms']:>10.2f}" for n in names),
        added_row("large_added_ms", ".2f"),
        "8 in flight req/s     " + row(f"{t[n]['rps']:>10.0f}" for n in names),
        "",
    ]
    v = summary["verdicts"]
    fmt = "{:.2f}".format
    lines += [
        f"tiny added, native/nginx: {fmt(summary['tiny_ratio'])}"
        f" (target <= 1.0: {v['tiny_ratio']})",
        f"5 MB added, native/nginx: {fmt(summary['large_ratio'])}"
        f" (target <= 0.5: {v['large_ratio']})",
        f"8 in flight, native/direct: {fmt(summary['rps_ratio'])}"
        f" (target >= 0.9: {v['rps_ratio']}; nginx {fmt(summary['nginx_rps_ratio'])})",
    ]
    if "lane_tiny_added_over_gateway_ms" in summary:
        lines.append(
            "python lane through the plane, over the gateway alone: tiny "
            f"{summary['lane_tiny_added_over_gateway_ms']:+.3f} ms (target <= +0.1), 5 MB "
            f"{summary['lane_large_added_over_gateway_ms']:+.2f} ms, req/s x"
            f"{fmt(summary['lane_rps_ratio_to_gateway'])}"
        )
    return "\n".join(lines)


def run(args: Any, nginx_bin: str, groups: list[int]) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        print("starting tritonserver ...", flush=True)
        triton = TritonServer(models=["identity"])
        stack.callback(shielded(triton.stop))
        endpoints = triton.start()
        groups.append(triton.pid or 0)
        print("starting nginx and the native plane ...", flush=True)
        nginx = servers.NginxGrpcProxy(
            nginx_bin, f"127.0.0.1:{servers.free_ports(1)[0]}", endpoints.grpc, registry=groups
        )
        stack.callback(shielded(nginx.stop))
        plane = NativePlaneProcess(endpoints.grpc, args.workers, registry=groups)
        stack.callback(shielded(plane.stop))
        addresses = {"direct": endpoints.grpc, "nginx": nginx.start(), "native": plane.start()}
        if args.lane:
            gateway = servers.GatewayProcess(endpoints.grpc, registry=groups)
            stack.callback(shielded(gateway.stop))
            addresses["gateway"] = gateway.start()
            lane = NativePlaneProcess(endpoints.grpc, args.workers, gateway.grpc, groups)
            stack.callback(shielded(lane.stop))
            addresses["lane"] = lane.start()
        print(f"targets: {addresses}", flush=True)
        raw = measure(addresses, args)
        rss = servers.vm_rss_mib(plane.pid)
        print("stopping servers ...", flush=True)
    return {"raw": raw, "summary": summarize(raw), "native_process_rss_mib": rss}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    p.add_argument("--requests", type=int, default=300, help="tiny requests per round (300)")
    p.add_argument("--large-requests", type=int, default=40, help="5 MB requests per round (40)")
    p.add_argument("--duration", type=float, default=2.0, help="throughput seconds (default 2)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--warmup", type=int, default=200, help="tiny warm-up requests per target")
    p.add_argument("--workers", type=int, default=1, help="the plane's threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="output directory")
    p.add_argument("--serve-plane", metavar="UPSTREAM", help=argparse.SUPPRESS)
    p.add_argument("--listen", help=argparse.SUPPRESS)
    p.add_argument("--lane-address", help=argparse.SUPPRESS)
    p.add_argument(
        "--lane",
        action="store_true",
        help="also measure the python lane: the gateway alone vs the plane in front of it",
    )
    args = p.parse_args(argv)
    args.payloads = (
        grpc_load.identity_payload("tiny 1x16", TINY_COLUMNS),
        grpc_load.identity_payload("5 MB 1x1310720", LARGE_COLUMNS, seed=1),
    )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_plane:
        return serve_plane(args.serve_plane, args.listen, args.workers, args.lane_address)
    if not available():
        print("the native extension is not built (or INFERGW_NATIVE=0)", file=sys.stderr)
        return 2
    nginx_bin = servers.nginx_binary()
    if nginx_bin is None:
        print(f"nginx not found; install it with:\n  {servers.NGINX_INSTALL_HINT}", file=sys.stderr)
        return 2
    started = time.monotonic()
    groups: list[int] = []
    try:
        report = run(args, nginx_bin, groups)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        time.sleep(0.2)
        left = [g for g in groups if g and servers.group_alive(g)]
        if left:
            print(f"ERROR: processes left in process groups {left}", file=sys.stderr)
    report["loadavg_at_start"] = os.getloadavg()
    report["wall_seconds"] = time.monotonic() - started
    print()
    print(render(report["summary"]))
    print(
        f"\nnative plane process RSS {report['native_process_rss_mib']:.0f} MiB;"
        f" wall time {report['wall_seconds']:.0f} s"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "native_hop.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"raw figures: {path}")
    return 3 if left else 0


if __name__ == "__main__":
    sys.exit(main())

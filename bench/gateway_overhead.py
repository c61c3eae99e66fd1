"""Gateway overhead: direct Triton vs nginx vs a grpc.aio passthrough vs infergw, one machine.

    .venv/bin/python bench/gateway_overhead.py [--rounds R] [--requests N] [--duration S]
                                               [--out out/bench]

Starts Triton, nginx, the grpc.aio passthrough (``aio-floor``), the gateway and the same
gateway on the native plane (``native``: ``INFERGW_NATIVE=1``), each its own process group,
measures them interleaved in rounds with one client, prints a table of medians over
rounds next to the issues' targets, writes every raw figure
as JSON, and stops everything, also on Ctrl-C, SIGTERM and errors. See bench/README.md
for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc_load
import h2load
import servers
from grpc_load import SyncClient

from infergw.deploy.triton.launcher import TritonServer

TARGETS = ("direct", "nginx", "aio-floor", "gateway", "native", "lane")
# "native": the same `infergw serve`, its gRPC port on the Rust plane (INFERGW_NATIVE=1),
# identity routed natively; "lane": the plane in front with every model left to the
# Python gateway behind it (its Unix socket), what a non-native route pays.
NATIVE_ENV = {"INFERGW_NATIVE": "1"}
PYTHON_ENV = {"INFERGW_NATIVE": "0"}  # the "gateway" column: the Python plane, whatever the default
NATIVE_CONF = servers.GATEWAY_CONF.replace('"*"', "identity")  # the plane forwards named routes
TINY_COLUMNS = 16
LARGE_COLUMNS = 1310720  # 1 x 1310720 FP32 = 5 MiB
IDLE_BEFORE_RSS_S = 2.0


@dataclass(frozen=True)
class Limit:
    """A figure from the issue: ``target`` must hold, ``goal`` is what the project aims at."""

    label: str
    target: float
    goal: float | None
    higher_is_better: bool

    def verdict(self, value: float | None) -> str:
        if value is None:
            return "n/a"

        def ok(bound: float) -> bool:
            return value >= bound if self.higher_is_better else value <= bound

        if self.goal is not None and ok(self.goal):
            return "meets goal"
        return "meets target" if ok(self.target) else "MISSES target"


LIMITS = {
    "tiny_ratio": Limit("tiny added p50, gateway/nginx", 3.0, 1.5, higher_is_better=False),
    "large_ratio": Limit("5 MB added p50, gateway/nginx", 1.0, 0.5, higher_is_better=False),
    "rps_ratio": Limit("throughput, gateway/direct", 0.60, 0.90, higher_is_better=True),
    "rss_mib": Limit("gateway idle RSS (MiB)", 120.0, None, higher_is_better=False),
    # Issue 13's targets for the native plane.
    "native_tiny_ratio": Limit("tiny added p50, native/nginx", 1.0, None, higher_is_better=False),
    "native_large_ratio": Limit("5 MB added p50, native/nginx", 0.5, None, higher_is_better=False),
    "native_rps_ratio": Limit("throughput, native/direct", 0.90, None, higher_is_better=True),
    "native_rss_mib": Limit("native gateway idle RSS (MiB)", 120.0, None, higher_is_better=False),
}


@dataclass
class Results:
    """Raw figures: per target, one entry per round (lists of samples or window results)."""

    tiny_ms: dict[str, list[list[float]]] = field(default_factory=lambda: _per_target())
    large_ms: dict[str, list[list[float]]] = field(default_factory=lambda: _per_target())
    throughput: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: _per_target())
    h2load: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: _per_target())
    rss_mib: dict[str, float] = field(default_factory=dict)


def _per_target() -> dict[str, list[Any]]:
    return {t: [] for t in TARGETS}


# -- statistics ------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank-interpolated percentile (numpy's default 'linear')."""
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def per_round(rounds: list[list[float]], q: float) -> list[float]:
    return [percentile(r, q) for r in rounds]


def added_p50(rounds: dict[str, list[list[float]]], target: str) -> float:
    """Median over rounds of (target p50 - direct p50) within the same round."""
    return statistics.median(
        percentile(t, 50) - percentile(d, 50)
        for t, d in zip(rounds[target], rounds["direct"], strict=True)
    )


def paired_p50_diff(rounds: dict[str, list[list[float]]], a: str, b: str) -> float:
    """Median over rounds of (a added p50 - b added p50), i.e. of a p50 - b p50 per round."""
    return statistics.median(
        percentile(x, 50) - percentile(y, 50) for x, y in zip(rounds[a], rounds[b], strict=True)
    )


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


# -- measurement -----------------------------------------------------------------------


def rotated(round_no: int) -> list[str]:
    """Target order for a round: rotated so that no target always runs first or last."""
    k = round_no % len(TARGETS)
    return [*TARGETS[k:], *TARGETS[:k]]


def warm_up(clients: dict[str, SyncClient], addresses: dict[str, str], args: Any) -> None:
    tiny, large = args.payloads
    for name, client in clients.items():
        grpc_load.check_echo(tiny, client.call(tiny))
        grpc_load.check_echo(large, client.call(large))
        client.latencies_ms(tiny, args.warmup)
        client.latencies_ms(large, max(5, args.warmup // 20))
        result = grpc_load.throughput(addresses[name], tiny, args.concurrency, 1.0)
        if result.errors:
            raise RuntimeError(f"warm-up via {name} failed: {result.first_error}")


def measure_round(
    round_no: int,
    clients: dict[str, SyncClient],
    addresses: dict[str, str],
    args: Any,
    results: Results,
) -> None:
    tiny, large = args.payloads
    order = rotated(round_no)
    for name in order:
        results.tiny_ms[name].append(clients[name].latencies_ms(tiny, args.requests))
    for name in order:
        results.large_ms[name].append(clients[name].latencies_ms(large, args.large_requests))
    for name in order:
        cpu_before = cpu_snapshot(args.pgids)
        t = grpc_load.throughput(addresses[name], tiny, args.concurrency, args.duration)
        cpu = cpu_per_request_us(cpu_before, cpu_snapshot(args.pgids), t.ok)
        results.throughput[name].append(
            {"ok": t.ok, "errors": t.errors, "seconds": t.seconds, "rps": t.rps, "cpu_us": cpu}
        )
        if t.errors:
            print(f"  ! {name}: {t.errors} failed requests, first: {t.first_error}")
    print(f"  round {round_no + 1}/{args.rounds} ({' -> '.join(order)}): " + _round_line(results))


def cpu_snapshot(pgids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of the client and of each server's process group."""
    snap = {name: servers.group_cpu_s(pgid) for name, pgid in pgids.items()}
    snap["client"] = servers.client_cpu_s()
    return snap


def cpu_per_request_us(
    before: dict[str, float], after: dict[str, float], requests: int
) -> dict[str, float]:
    """CPU microseconds per completed request, per process (group), over one window."""
    n = max(requests, 1)
    return {name: (after[name] - before[name]) * 1e6 / n for name in after}


def _round_line(results: Results) -> str:
    parts = []
    for name in TARGETS:
        tiny = percentile(results.tiny_ms[name][-1], 50)
        large = percentile(results.large_ms[name][-1], 50)
        rps = results.throughput[name][-1]["rps"]
        parts.append(f"{name} {tiny:.3f}/{large:.1f} ms {rps:.0f} rps")
    return "; ".join(parts)


def measure_h2load(binary: str, addresses: dict[str, str], args: Any, results: Results) -> None:
    with tempfile.TemporaryDirectory(prefix="infergw-bench-h2load-") as tmp:
        body = h2load.write_grpc_body(args.payloads[0], Path(tmp) / "tiny.grpc")
        for round_no in range(args.h2load_rounds):
            for name in rotated(round_no):
                r = h2load.run_h2load(
                    binary, addresses[name], body, args.concurrency, args.duration, args.triton_http
                )
                results.h2load[name].append(r.as_dict())
        line = ", ".join(f"{t} {results.h2load[t][-1]['rps']:.0f}" for t in TARGETS)
        print(f"  h2load last round (rps): {line}")


# -- summary ---------------------------------------------------------------------------


def summarize(results: Results) -> dict[str, Any]:
    """Medians over rounds of every figure the table shows."""
    out: dict[str, Any] = {"targets": {}}
    for name in TARGETS:
        rps = [w["rps"] for w in results.throughput[name]]
        entry = {
            "tiny_p50_ms": statistics.median(per_round(results.tiny_ms[name], 50)),
            "tiny_p99_ms": statistics.median(per_round(results.tiny_ms[name], 99)),
            "large_p50_ms": statistics.median(per_round(results.large_ms[name], 50)),
            "large_p99_ms": statistics.median(per_round(results.large_ms[name], 99)),
            "rps": statistics.median(rps),
            "errors": sum(w["errors"] for w in results.throughput[name]),
            "h2load_rps": _median_or_none([w["rps"] for w in results.h2load[name]]),
            "cpu_us_per_request": _median_cpu(results.throughput[name]),
        }
        if name != "direct":
            entry["tiny_added_p50_ms"] = added_p50(results.tiny_ms, name)
            entry["large_added_p50_ms"] = added_p50(results.large_ms, name)
        out["targets"][name] = entry
    nginx, gateway, direct = (out["targets"][t] for t in ("nginx", "gateway", "direct"))
    out["tiny_ratio"] = ratio(gateway["tiny_added_p50_ms"], nginx["tiny_added_p50_ms"])
    out["large_ratio"] = ratio(gateway["large_added_p50_ms"], nginx["large_added_p50_ms"])
    out["rps_ratio"] = ratio(gateway["rps"], direct["rps"])
    out["h2load_rps_ratio"] = ratio(gateway["h2load_rps"], direct["h2load_rps"])
    out["rss_mib"] = results.rss_mib.get("idle_after_warmup")
    native = out["targets"]["native"]
    out["native_tiny_ratio"] = ratio(native["tiny_added_p50_ms"], nginx["tiny_added_p50_ms"])
    out["native_large_ratio"] = ratio(native["large_added_p50_ms"], nginx["large_added_p50_ms"])
    out["native_rps_ratio"] = ratio(native["rps"], direct["rps"])
    out["native_rss_mib"] = results.rss_mib.get("native_idle_after_warmup")
    # The python lane's price: the plane in front of the gateway vs the gateway alone.
    out["lane_minus_gateway_tiny_added_p50_ms"] = paired_p50_diff(
        results.tiny_ms, "lane", "gateway"
    )
    # Derived, not verdicts: how much of the gateway's overhead is the grpc.aio floor.
    out["gateway_minus_floor_tiny_added_p50_ms"] = paired_p50_diff(
        results.tiny_ms, "gateway", "aio-floor"
    )
    out["gateway_minus_floor_large_added_p50_ms"] = paired_p50_diff(
        results.large_ms, "gateway", "aio-floor"
    )
    out["floor_rps_ratio"] = ratio(out["targets"]["aio-floor"]["rps"], direct["rps"])
    out["verdicts"] = {key: limit.verdict(out[key]) for key, limit in LIMITS.items()}
    return out


def _median_cpu(windows: list[dict[str, Any]]) -> dict[str, float]:
    """Median over rounds of each process's CPU microseconds per request."""
    return {p: statistics.median(w["cpu_us"][p] for w in windows) for p in windows[0]["cpu_us"]}


def _median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def render_table(summary: dict[str, Any], args: Any) -> str:
    t = summary["targets"]
    head = f"{'':28}" + "".join(f"{n:>12}" for n in TARGETS)
    rows = [
        f"gateway overhead: medians over {args.rounds} rounds; {args.requests} tiny + "
        f"{args.large_requests} x 5 MB sequential requests and {args.duration:g} s at "
        f"{args.concurrency} in flight per target per round",
        head,
        "-" * len(head),
    ]

    def row(label: str, key: str, spec: str) -> None:
        cells = "".join(f"{_fmt(t[n].get(key), spec):>12}" for n in TARGETS)
        rows.append(f"{label:28}{cells}")

    row("tiny 1x16 p50 (ms)", "tiny_p50_ms", ".3f")
    row("tiny 1x16 p99 (ms)", "tiny_p99_ms", ".3f")
    row("tiny added p50 (ms)", "tiny_added_p50_ms", ".3f")
    row("5 MB p50 (ms)", "large_p50_ms", ".2f")
    row("5 MB p99 (ms)", "large_p99_ms", ".2f")
    row("5 MB added p50 (ms)", "large_added_p50_ms", ".2f")
    row("throughput grpc.aio (rps)", "rps", ".0f")
    row("failed requests", "errors", "d")
    if t["direct"]["h2load_rps"] is not None:
        row("throughput h2load (rps)", "h2load_rps", ".0f")
    for proc in ("client", "triton", "nginx", "aio-floor", "gateway", "native", "lane"):
        cells = "".join(f"{t[n]['cpu_us_per_request'][proc]:>12.0f}" for n in TARGETS)
        rows.append(f"{'  CPU us/req, ' + proc:28}{cells}")
    rows += ["", f"{'figure':34}{'measured':>10}{'target':>9}{'goal':>8}  verdict"]
    measured = {
        "tiny_ratio": _fmt(summary["tiny_ratio"], ".2f", "x"),
        "large_ratio": _fmt(summary["large_ratio"], ".2f", "x"),
        "rps_ratio": _fmt(_pct(summary["rps_ratio"]), ".0f", "%"),
        "rss_mib": _fmt(summary["rss_mib"], ".1f"),
        "native_tiny_ratio": _fmt(summary["native_tiny_ratio"], ".2f", "x"),
        "native_large_ratio": _fmt(summary["native_large_ratio"], ".2f", "x"),
        "native_rps_ratio": _fmt(_pct(summary["native_rps_ratio"]), ".0f", "%"),
        "native_rss_mib": _fmt(summary["native_rss_mib"], ".1f"),
    }
    bounds = {
        "tiny_ratio": ("<=3x", "1.5x"),
        "large_ratio": ("<=1x", "0.5x"),
        "rps_ratio": (">=60%", "90%"),
        "rss_mib": ("<=120", "-"),
        "native_tiny_ratio": ("<=1x", "-"),
        "native_large_ratio": ("<=0.5x", "-"),
        "native_rps_ratio": (">=90%", "-"),
        "native_rss_mib": ("<=120", "-"),
    }
    for key, limit in LIMITS.items():
        target, goal = bounds[key]
        verdict = summary["verdicts"][key]
        rows.append(f"{limit.label:34}{measured[key]:>10}{target:>9}{goal:>8}  {verdict}")
    if summary["h2load_rps_ratio"] is not None:
        h2 = _fmt(_pct(summary["h2load_rps_ratio"]), ".0f", "%")
        rows.append(f"{'  (h2load: gateway/direct)':34}{h2:>10}")
    rows += ["", "derived (not verdicts): gateway's own logic vs the grpc.aio floor"]
    derived = {
        "tiny added p50, gateway - aio-floor": _fmt(
            summary["gateway_minus_floor_tiny_added_p50_ms"], "+.3f", " ms"
        ),
        "5 MB added p50, gateway - aio-floor": _fmt(
            summary["gateway_minus_floor_large_added_p50_ms"], "+.2f", " ms"
        ),
        "throughput, aio-floor/direct": _fmt(_pct(summary["floor_rps_ratio"]), ".0f", "%"),
        "tiny added p50, lane - gateway": _fmt(
            summary["lane_minus_gateway_tiny_added_p50_ms"], "+.3f", " ms"
        ),
    }
    rows += [f"{label:37}{value:>10}" for label, value in derived.items()]
    return "\n".join(rows)


def _pct(value: float | None) -> float | None:
    return None if value is None else value * 100


def machine_facts(nginx_bin: str) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "loadavg_at_end": os.getloadavg(),
        "python": sys.version,
        "platform": platform.platform(),
        "nginx": servers.nginx_version(nginx_bin),
        "grpcio": importlib.metadata.version("grpcio"),
        "nvidia_pytriton": importlib.metadata.version("nvidia-pytriton"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
    }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parent.parent
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True)
        return done.stdout.decode().strip()
    return None


# -- orchestration ---------------------------------------------------------------------


class Stopped(KeyboardInterrupt):
    """Raised from a SIGTERM/SIGHUP handler so that they unwind exactly like Ctrl-C."""


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def shielded(stop: Callable[[], None]) -> Callable[[], None]:
    """``stop`` with Ctrl-C/SIGTERM/SIGHUP held off, so a second Ctrl-C cannot cut it short."""

    def call() -> None:
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    return call


def run(args: Any, nginx_bin: str, h2load_bin: str | None, groups: list[int]) -> dict[str, Any]:
    """Start the four servers, measure, stop them; ``groups`` collects their pgids."""
    results = Results()
    with contextlib.ExitStack() as stack:
        print("starting tritonserver ...", flush=True)
        triton = TritonServer(models=["identity"])
        stack.callback(shielded(triton.stop))
        endpoints = triton.start()  # stops its own group if it fails to start
        groups.append(triton.pid or 0)
        args.triton_http = endpoints.http

        print("starting nginx, the aio passthrough and the gateway ...", flush=True)
        listen = f"127.0.0.1:{servers.free_ports(1)[0]}"
        nginx = servers.NginxGrpcProxy(nginx_bin, listen, endpoints.grpc, registry=groups)
        stack.callback(shielded(nginx.stop))
        nginx_addr = nginx.start()
        floor = servers.AioPassthrough(endpoints.grpc, registry=groups)
        stack.callback(shielded(floor.stop))
        floor_addr = floor.start()
        gateway = servers.GatewayProcess(endpoints.grpc, registry=groups, env=PYTHON_ENV)
        stack.callback(shielded(gateway.stop))
        gateway_addr = gateway.start()
        conf = NATIVE_CONF.format(triton=endpoints.grpc)
        native = servers.GatewayProcess(registry=groups, config=conf, env=NATIVE_ENV)
        stack.callback(shielded(native.stop))
        native_addr = native.start()
        lane = servers.GatewayProcess(endpoints.grpc, registry=groups, env=NATIVE_ENV)
        stack.callback(shielded(lane.stop))
        lane_addr = lane.start()

        addresses = {
            "direct": endpoints.grpc,
            "nginx": nginx_addr,
            "aio-floor": floor_addr,
            "gateway": gateway_addr,
            "native": native_addr,
            "lane": lane_addr,
        }
        print(f"targets: {addresses}", flush=True)
        args.pgids = {
            "triton": groups[0],
            "nginx": nginx.pid,
            "aio-floor": floor.pid,
            "gateway": gateway.pid,
            "native": native.pid,
            "lane": lane.pid,
        }
        clients = {name: SyncClient(addr) for name, addr in addresses.items()}
        for client in clients.values():
            stack.callback(client.close)

        print("warming up ...", flush=True)
        warm_up(clients, addresses, args)
        time.sleep(IDLE_BEFORE_RSS_S)
        results.rss_mib["idle_after_warmup"] = servers.vm_rss_mib(gateway.pid)
        results.rss_mib["native_idle_after_warmup"] = servers.vm_rss_mib(native.pid)

        print(f"measuring {args.rounds} rounds ...", flush=True)
        for round_no in range(args.rounds):
            measure_round(round_no, clients, addresses, args, results)
        if h2load_bin and args.h2load_rounds:
            print(f"h2load second opinion, {args.h2load_rounds} rounds ...", flush=True)
            measure_h2load(h2load_bin, addresses, args, results)
        time.sleep(IDLE_BEFORE_RSS_S)
        results.rss_mib["idle_after_run"] = servers.vm_rss_mib(gateway.pid)
        results.rss_mib["native_idle_after_run"] = servers.vm_rss_mib(native.pid)
        print("stopping servers ...", flush=True)
    return {
        "tiny_ms": results.tiny_ms,
        "large_ms": results.large_ms,
        "throughput": results.throughput,
        "h2load": results.h2load,
        "rss_mib": results.rss_mib,
        "summary": summarize(results),
    }


def check_cleanup(groups: list[int]) -> bool:
    """True if no process of any group this run started (servers and their children) lives."""
    time.sleep(0.2)
    left = [pgid for pgid in groups if pgid and servers.group_alive(pgid)]
    if left:
        print(f"ERROR: processes left in process groups {left}", file=sys.stderr)
    else:
        print(f"cleanup: all {len(groups)} server process groups are gone")
    return not left


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument(
        "--requests", type=int, default=300, help="tiny requests per target per round (300)"
    )
    p.add_argument(
        "--large-requests", type=int, default=100, help="5 MB requests per target per round (100)"
    )
    p.add_argument(
        "--duration", type=float, default=3.0, help="throughput seconds per target per round (3)"
    )
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--warmup", type=int, default=200, help="tiny warm-up requests per target")
    p.add_argument(
        "--h2load-rounds", type=int, default=3, help="h2load rounds, 0 to skip (default 3)"
    )
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="output directory")
    args = p.parse_args(argv)
    args.payloads = (
        grpc_load.identity_payload("tiny 1x16", TINY_COLUMNS),
        grpc_load.identity_payload("5 MB 1x1310720", LARGE_COLUMNS, seed=1),
    )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nginx_bin = servers.nginx_binary()
    if nginx_bin is None:
        print(f"nginx not found; install it with:\n  {servers.NGINX_INSTALL_HINT}", file=sys.stderr)
        return 2
    h2load_bin = h2load.h2load_binary()
    if h2load_bin is None and args.h2load_rounds:
        print(f"h2load not found (optional second opinion): {h2load.INSTALL_HINT}")

    started = time.monotonic()
    load_at_start = os.getloadavg()  # other work on this shared box skews every figure
    groups: list[int] = []
    report: dict[str, Any] | None = None
    for sig in STOP_SIGNALS[1:]:
        signal.signal(sig, _raise_stopped)
    try:
        report = run(args, nginx_bin, h2load_bin, groups)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        clean = check_cleanup(groups)
    if report is None:
        return 130 if clean else 3
    report["machine"] = {**machine_facts(nginx_bin), "loadavg_at_start": load_at_start}
    report["settings"] = {
        k: v for k, v in vars(args).items() if k not in ("payloads", "triton_http", "pgids", "out")
    }
    report["wall_seconds"] = time.monotonic() - started
    print()
    print(render_table(report["summary"], args))
    print(f"\nwall time {report['wall_seconds']:.0f} s")
    write_json(report, args.out / "overhead.json")
    return 0 if clean else 3  # figures are kept, but a leaked process fails the run


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"raw figures: {path}")


if __name__ == "__main__":
    sys.exit(main())

"""Sidecar overhead: direct Triton vs nginx grpc_pass vs the grpc.aio floor vs `infergw sidecar`
on the Python proxy (``sidecar``) and on the native plane (``native``, INFERGW_NATIVE=1).

    .venv/bin/python bench/sidecar_overhead.py [--rounds R] [--requests N] [--duration S]
                                               [--out out/bench]

Starts Triton, nginx, the bytes-only grpc.aio passthrough (``aio-floor``: what any Python
gRPC proxy pays at least) and ``infergw sidecar`` twice, with INFERGW_NATIVE=0 and =1
(each its own process group), measures
them interleaved in rounds with one client (tiny and 5 MB identity requests, one at a time:
p50/p99; then 8 in flight: throughput), prints medians over rounds next to the issue's
targets, writes every raw figure as JSON, and stops everything, also on Ctrl-C. Building
blocks (processes, client, statistics) are those of ``gateway_overhead.py``; see
bench/README.md for what each figure means and the caveats of this 2-core box.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc_load
import servers
from gateway_overhead import (
    STOP_SIGNALS,
    Limit,
    _raise_stopped,
    check_cleanup,
    machine_facts,
    percentile,
    ratio,
    shielded,
)
from grpc_load import SyncClient

from infergw.deploy.triton.launcher import TritonServer

TARGETS = ("direct", "nginx", "aio-floor", "sidecar", "native")
TINY_COLUMNS = 16
LARGE_COLUMNS = 1310720  # 1 x 1310720 FP32 = 5 MiB
LIMITS = {
    "tiny_ratio": Limit("tiny added p50, sidecar/nginx", 2.0, 1.2, higher_is_better=False),
    "large_ratio": Limit("5 MB added p50, sidecar/nginx", 0.7, 0.5, higher_is_better=False),
    "rps_ratio": Limit("throughput, sidecar/direct", 0.75, 0.90, higher_is_better=True),
    # Issue 13's targets for the sidecar on the native plane.
    "native_tiny_ratio": Limit("tiny added p50, native/nginx", 1.0, None, higher_is_better=False),
    "native_large_ratio": Limit("5 MB added p50, native/nginx", 0.5, None, higher_is_better=False),
    "native_rps_ratio": Limit("throughput, native/direct", 0.90, None, higher_is_better=True),
}


class SidecarProcess(servers.ManagedProcess):
    """``infergw sidecar`` in front of Triton's gRPC endpoint, as a separate process, on
    the Python proxy or (``native``) the native plane."""

    def __init__(
        self, upstream: str, registry: list[int] | None = None, native: bool = False
    ) -> None:
        super().__init__("native" if native else "sidecar", registry)
        self.upstream = upstream
        self.native = native
        self.grpc = ""

    def start(self) -> str:
        grpc_port, metrics_port = servers.free_ports(2)
        cli = Path(sys.executable).parent / "infergw"
        args = [str(cli), "sidecar", "--upstream", self.upstream, "--host", "127.0.0.1"]
        args += ["--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
        plane = {"INFERGW_NATIVE": "1" if self.native else "0"}
        self.spawn(args, env={**os.environ, "PYTHONUNBUFFERED": "1", **plane})
        self.grpc = f"127.0.0.1:{grpc_port}"
        assert self.proc is not None
        servers.wait_grpc_ready(self.grpc, self.proc, self.log)
        if self.native:  # the CLI says which plane serves (after its other ports are up)
            deadline = time.monotonic() + 10
            while "(data plane: native)" not in self.log.read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the sidecar is not on the native plane: see {self.log}")
                time.sleep(0.05)
        return self.grpc


def rotated(round_no: int) -> list[str]:
    k = round_no % len(TARGETS)
    return [*TARGETS[k:], *TARGETS[:k]]


def measure(args: Any, clients: dict[str, SyncClient], addresses: dict[str, str]) -> dict[str, Any]:
    """Per target, one entry per round: latency samples and throughput windows."""
    tiny, large = args.payloads
    raw: dict[str, Any] = {k: {t: [] for t in TARGETS} for k in ("tiny", "large", "rps", "cpu")}
    for round_no in range(args.rounds):
        order = rotated(round_no)
        for name in order:
            raw["tiny"][name].append(clients[name].latencies_ms(tiny, args.requests))
        for name in order:
            raw["large"][name].append(clients[name].latencies_ms(large, args.large_requests))
        for name in order:
            before = _cpu(args.pgids)
            result = grpc_load.throughput(addresses[name], tiny, args.concurrency, args.duration)
            after = _cpu(args.pgids)
            if result.errors:
                print(f"  ! {name}: {result.errors} failed, first: {result.first_error}")
            raw["rps"][name].append(result.rps)
            raw["cpu"][name].append(
                {p: (after[p] - before[p]) * 1e6 / max(result.ok, 1) for p in after}
            )
        line = "; ".join(
            f"{t} {percentile(raw['tiny'][t][-1], 50):.3f}/"
            f"{percentile(raw['large'][t][-1], 50):.1f} ms {raw['rps'][t][-1]:.0f} rps"
            for t in TARGETS
        )
        print(f"  round {round_no + 1}/{args.rounds}: {line}", flush=True)
    return raw


def _cpu(pgids: dict[str, int]) -> dict[str, float]:
    snap = {name: servers.group_cpu_s(pgid) for name, pgid in pgids.items()}
    snap["client"] = servers.client_cpu_s()
    return snap


def per_target(raw: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """Medians over rounds per target: p50/p99, added p50 over ``direct`` (paired by
    round), throughput and CPU per request of each process."""

    def med(rounds: list[list[float]], q: float) -> float:
        return statistics.median(percentile(r, q) for r in rounds)

    def added(kind: str, target: str) -> float:
        pairs = zip(raw[kind][target], raw[kind]["direct"], strict=True)
        return statistics.median(percentile(t, 50) - percentile(d, 50) for t, d in pairs)

    targets: dict[str, Any] = {}
    for name in names:
        cpu = raw["cpu"][name]
        targets[name] = {
            "tiny_p50_ms": med(raw["tiny"][name], 50),
            "tiny_p99_ms": med(raw["tiny"][name], 99),
            "large_p50_ms": med(raw["large"][name], 50),
            "large_p99_ms": med(raw["large"][name], 99),
            "rps": statistics.median(raw["rps"][name]),
            "cpu_us_per_request": {p: statistics.median(w[p] for w in cpu) for p in cpu[0]},
        }
        if name != "direct":
            targets[name]["tiny_added_p50_ms"] = added("tiny", name)
            targets[name]["large_added_p50_ms"] = added("large", name)
    return targets


def figure_rows(t: dict[str, Any], names: Sequence[str], width: int) -> list[str]:
    """The table of ``per_target``'s figures, a column per target."""
    rows = []
    for label, key, spec in (
        ("tiny 1x16 p50 (ms)", "tiny_p50_ms", ".3f"),
        ("tiny 1x16 p99 (ms)", "tiny_p99_ms", ".3f"),
        ("tiny added p50 (ms)", "tiny_added_p50_ms", ".3f"),
        ("5 MB p50 (ms)", "large_p50_ms", ".2f"),
        ("5 MB p99 (ms)", "large_p99_ms", ".2f"),
        ("5 MB added p50 (ms)", "large_added_p50_ms", ".2f"),
        ("throughput, 8 in flight (rps)", "rps", ".0f"),
    ):
        cells = "".join(f"{format(t[n][key], spec) if key in t[n] else '-':>11}" for n in names)
        rows.append(f"{label:{width}}{cells}")
    return rows


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    targets = per_target(raw, TARGETS)
    side, nginx, native = targets["sidecar"], targets["nginx"], targets["native"]
    out: dict[str, Any] = {
        "targets": targets,
        "tiny_ratio": ratio(side["tiny_added_p50_ms"], nginx["tiny_added_p50_ms"]),
        "large_ratio": ratio(side["large_added_p50_ms"], nginx["large_added_p50_ms"]),
        "rps_ratio": ratio(side["rps"], targets["direct"]["rps"]),
        "native_tiny_ratio": ratio(native["tiny_added_p50_ms"], nginx["tiny_added_p50_ms"]),
        "native_large_ratio": ratio(native["large_added_p50_ms"], nginx["large_added_p50_ms"]),
        "native_rps_ratio": ratio(native["rps"], targets["direct"]["rps"]),
        "floor_tiny_ratio": ratio(
            targets["aio-floor"]["tiny_added_p50_ms"], nginx["tiny_added_p50_ms"]
        ),
        "floor_large_ratio": ratio(
            targets["aio-floor"]["large_added_p50_ms"], nginx["large_added_p50_ms"]
        ),
        "floor_rps_ratio": ratio(targets["aio-floor"]["rps"], targets["direct"]["rps"]),
    }
    out["verdicts"] = {key: limit.verdict(out[key]) for key, limit in LIMITS.items()}
    return out


def render(summary: dict[str, Any], args: Any) -> str:
    t = summary["targets"]
    head = f"{'':28}" + "".join(f"{n:>11}" for n in TARGETS)
    rows = [
        f"sidecar overhead: medians over {args.rounds} rounds; {args.requests} tiny + "
        f"{args.large_requests} x 5 MB sequential, {args.duration:g} s at {args.concurrency} "
        "in flight, per target per round",
        head,
        "-" * len(head),
    ]
    rows += figure_rows(t, TARGETS, 28)
    for proc in ("client", "triton", "nginx", "aio-floor", "sidecar", "native"):
        cells = "".join(f"{t[n]['cpu_us_per_request'][proc]:>11.0f}" for n in TARGETS)
        rows.append(f"{'  CPU us/req, ' + proc:28}{cells}")
    rows += ["", f"{'figure':34}{'measured':>10}{'target':>9}{'goal':>7}  verdict  (aio-floor)"]
    bounds = {
        "tiny_ratio": ("<=2x", "1.2x"),
        "large_ratio": ("<=0.7x", "0.5x"),
        "rps_ratio": (">=75%", "90%"),
        "native_tiny_ratio": ("<=1x", "-"),
        "native_large_ratio": ("<=0.5x", "-"),
        "native_rps_ratio": (">=90%", "-"),
    }
    for key, limit in LIMITS.items():
        value = summary[key]
        floor = summary[f"floor_{key.removeprefix('native_')}"]
        if key.endswith("rps_ratio"):
            shown, floor_shown = _fmt(value, 100, ".0f", "%"), _fmt(floor, 100, ".0f", "%")
        else:
            shown, floor_shown = _fmt(value, 1, ".2f", "x"), _fmt(floor, 1, ".2f", "x")
        target, goal = bounds[key]
        verdict = summary["verdicts"][key]
        rows.append(f"{limit.label:34}{shown:>10}{target:>9}{goal:>7}  {verdict}  ({floor_shown})")
    return "\n".join(rows)


def _fmt(value: float | None, scale: float, spec: str, suffix: str) -> str:
    return "-" if value is None else f"{value * scale:{spec}}{suffix}"


def run(args: Any, nginx_bin: str, groups: list[int]) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        print("starting tritonserver ...", flush=True)
        triton = TritonServer(models=["identity"])
        stack.callback(shielded(triton.stop))
        endpoints = triton.start()
        groups.append(triton.pid or 0)
        print("starting nginx, the aio passthrough and the sidecar ...", flush=True)
        nginx = servers.NginxGrpcProxy(
            nginx_bin, f"127.0.0.1:{servers.free_ports(1)[0]}", endpoints.grpc, registry=groups
        )
        stack.callback(shielded(nginx.stop))
        floor = servers.AioPassthrough(endpoints.grpc, registry=groups)
        stack.callback(shielded(floor.stop))
        sidecar = SidecarProcess(endpoints.grpc, registry=groups)
        stack.callback(shielded(sidecar.stop))
        native = SidecarProcess(endpoints.grpc, registry=groups, native=True)
        stack.callback(shielded(native.stop))
        addresses = {
            "direct": endpoints.grpc,
            "nginx": nginx.start(),
            "aio-floor": floor.start(),
            "sidecar": sidecar.start(),
            "native": native.start(),
        }
        print(f"targets: {addresses}", flush=True)
        args.pgids = {
            "triton": groups[0],
            "nginx": nginx.pid,
            "aio-floor": floor.pid,
            "sidecar": sidecar.pid,
            "native": native.pid,
        }
        clients = {name: SyncClient(addr) for name, addr in addresses.items()}
        for client in clients.values():
            stack.callback(client.close)
        print("warming up ...", flush=True)
        tiny, large = args.payloads
        for name, client in clients.items():
            grpc_load.check_echo(tiny, client.call(tiny))
            grpc_load.check_echo(large, client.call(large))
            client.latencies_ms(tiny, args.warmup)
            client.latencies_ms(large, 5)
            grpc_load.throughput(addresses[name], tiny, args.concurrency, 1.0)
        print(f"measuring {args.rounds} rounds ...", flush=True)
        raw = measure(args, clients, addresses)
        rss = servers.vm_rss_mib(sidecar.pid)
        native_rss = servers.vm_rss_mib(native.pid)
        print("stopping servers ...", flush=True)
    summary = summarize(raw)
    return {"raw": raw, "summary": summary, "sidecar_rss_mib": rss, "native_rss_mib": native_rss}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
    p.add_argument("--requests", type=int, default=300, help="tiny requests per round (300)")
    p.add_argument("--large-requests", type=int, default=60, help="5 MB requests per round (60)")
    p.add_argument("--duration", type=float, default=3.0, help="throughput seconds (default 3)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--warmup", type=int, default=200, help="tiny warm-up requests per target")
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
    started, load_at_start = time.monotonic(), os.getloadavg()
    groups: list[int] = []
    report: dict[str, Any] | None = None
    for sig in STOP_SIGNALS[1:]:
        signal.signal(sig, _raise_stopped)
    try:
        report = run(args, nginx_bin, groups)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        clean = check_cleanup(groups)
    if report is None:
        return 130 if clean else 3
    report["machine"] = {**machine_facts(nginx_bin), "loadavg_at_start": load_at_start}
    report["settings"] = {
        k: v for k, v in vars(args).items() if k not in ("payloads", "pgids", "out")
    }
    report["wall_seconds"] = time.monotonic() - started
    print()
    print(render(report["summary"], args))
    rss = f"{report['sidecar_rss_mib']:.1f} MiB, native {report['native_rss_mib']:.1f} MiB"
    print(f"\nsidecar RSS after the run: {rss}; wall time {report['wall_seconds']:.0f} s")
    path = args.out / "sidecar_overhead.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"raw figures: {path}")
    return 0 if clean else 3


if __name__ == "__main__":
    sys.exit(main())

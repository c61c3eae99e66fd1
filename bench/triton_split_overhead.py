"""What per-request Triton splits cost: added p50 with Triton tracing + the gateway's receiver.

Two identical stacks, each a real ``tritonserver`` (bundled repository) behind an
``infergw serve`` process: *plain* (no tracing, as before) and *traced* (Triton's
OpenTelemetry tracing at ``rate=0`` exporting every 100 ms to the gateway's receiver,
which gives each attempt a traceparent and joins the spans). The load generator's gRPC
sender drives each in turn, interleaved rounds in rotating order, closed loop; the
figures are medians over rounds of each round's p50 (and of achieved req/s at higher
concurrency), with the added cost as the difference and ratio in the same run.

    .venv/bin/python bench/triton_split_overhead.py [--rounds 7] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from servers import ManagedProcess, free_ports, tail, wait_grpc_ready

from infergw.deploy.triton.launcher import TritonServer
from infergw.loadgen.runner import closed_loop
from infergw.loadgen.targets import GrpcSender

CONFIG = """\
listen: {{host: 127.0.0.1}}
backends:
  triton: {{kind: triton, url: "{triton}"}}
models:
  "*": {{backend: triton}}
"""
RECEIVER = "tracing: {{triton_receiver: {{host: 127.0.0.1, port: {port}}}}}\n"
INPUTS = {"input": np.ones((1, 16), dtype=np.float32)}


class Gateway(ManagedProcess):
    """``infergw serve`` in front of one Triton; with ``receiver_port``, receiving its spans."""

    def __init__(self, name: str, triton: str, receiver_port: int | None, ports: list[int]) -> None:
        super().__init__(name)
        self.config = CONFIG.format(triton=triton)
        if receiver_port is not None:
            self.config += RECEIVER.format(port=receiver_port)
        self.ports = ports  # gRPC, HTTP, metrics: picked with the receiver's, all distinct
        self.grpc = self.metrics = ""

    def start(self) -> str:
        path = self.tmp / "gateway.yaml"
        path.write_text(self.config)
        grpc_port, http_port, metrics_port = self.ports
        cli = Path(sys.executable).parent / "infergw"
        args = [str(cli), "serve", "--config", str(path), "--grpc-port", str(grpc_port)]
        args += ["--http-port", str(http_port), "--metrics-port", str(metrics_port)]
        self.spawn(args, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.grpc, self.metrics = f"127.0.0.1:{grpc_port}", f"127.0.0.1:{metrics_port}"
        assert self.proc is not None
        wait_grpc_ready(self.grpc, self.proc, self.log)
        return self.grpc


@contextlib.contextmanager
def stacks() -> Iterator[dict[str, str]]:
    """{"plain": gRPC address, "traced": gRPC address}; everything stopped on exit."""
    receiver, *ports = free_ports(7)
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(TritonServer(models=["identity"]))
        traced = stack.enter_context(
            TritonServer(
                models=["identity"],
                otlp_traces_url=f"http://127.0.0.1:{receiver}/v1/traces",
                trace_rate=0,
                trace_export_delay_ms=100,
            )
        )
        gateways = {
            "plain": Gateway("plain", plain.endpoints.grpc, None, ports[:3]),
            "traced": Gateway("traced", traced.endpoints.grpc, receiver, ports[3:]),
        }
        for gateway in gateways.values():
            stack.callback(gateway.stop)
            gateway.start()
        try:
            yield {name: g.grpc for name, g in gateways.items()} | {
                "traced-metrics": gateways["traced"].metrics
            }
        except BaseException:
            for name, server in (("plain", plain), ("traced", traced)):
                print(f"--- triton {name}:\n{server.log_tail()}", file=sys.stderr)
            for gateway in gateways.values():
                print(f"--- {gateway.name}:\n{tail(gateway.log)}", file=sys.stderr)
            raise


async def measure(address: str, concurrency: int, requests: int) -> tuple[float, float]:
    """(p50 ms, achieved req/s) of one closed-loop run."""
    sender = GrpcSender(address, "identity", INPUTS)
    await sender.open()
    try:
        rec = await closed_loop(
            sender, concurrency=concurrency, max_requests=requests, warmup_s=0.3
        )
    finally:
        await sender.close()
    run = rec.run_dict("r", "closed", {}, offered=False)
    assert not run["errors"], run["errors"]
    return float(run["latency_ms"]["p50"]), float(run["achieved_rps"])


def split_outcomes(metrics: str) -> dict[str, int]:
    """The traced gateway's requests and split outcomes (joined, unknown, unmatched)."""
    text = urllib.request.urlopen(f"http://{metrics}/metrics").read().decode()
    counts = {"requests": 0}
    for line in text.splitlines():
        if line.startswith("infergw_requests_total{"):
            counts["requests"] += int(float(line.split()[-1]))
        elif line.startswith('infergw_triton_splits_total{outcome="'):
            counts[line.split('"')[1]] = int(float(line.split()[-1]))
    return counts


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[int, list[tuple[float, float]]]] = {"plain": {}, "traced": {}}
    with stacks() as addresses:
        for round_no in range(args.rounds):
            order = ["plain", "traced"] if round_no % 2 == 0 else ["traced", "plain"]
            for concurrency in args.concurrency:
                for name in order:
                    figures = asyncio.run(measure(addresses[name], concurrency, args.requests))
                    results[name].setdefault(concurrency, []).append(figures)
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        time.sleep(1.0)  # the last run's spans: Triton exports every 100 ms
        outcomes = split_outcomes(addresses["traced-metrics"])
    summary: dict[str, Any] = {"rounds": args.rounds, "requests": args.requests, "levels": {}}
    for concurrency in args.concurrency:
        plain, traced = results["plain"][concurrency], results["traced"][concurrency]
        p50 = [statistics.median(p for p, _ in runs) for runs in (plain, traced)]
        rps = [statistics.median(r for _, r in runs) for runs in (plain, traced)]
        paired = statistics.median(t[0] - p[0] for p, t in zip(plain, traced, strict=True))
        summary["levels"][concurrency] = {
            "p50_ms": {"plain": p50[0], "traced": p50[1]},
            "added_p50_ms": p50[1] - p50[0],
            "paired_added_p50_ms": paired,
            "p50_ratio": p50[1] / p50[0],
            "rps": {"plain": rps[0], "traced": rps[1]},
            "rps_ratio": rps[1] / rps[0],
        }
    summary["split_outcomes"] = outcomes
    return summary


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"identity via the gateway, {summary['rounds']} interleaved rounds x "
        f"{summary['requests']} requests; medians over rounds",
        f"{'in flight':>9} {'p50 plain':>10} {'p50 traced':>11} {'added':>8} {'ratio':>6}"
        f" {'rps plain':>10} {'rps traced':>11} {'ratio':>6}",
    ]
    for level, f in summary["levels"].items():
        lines.append(
            f"{level:>9} {f['p50_ms']['plain']:>10.3f} {f['p50_ms']['traced']:>11.3f}"
            f" {f['added_p50_ms'] * 1000:>6.0f}us {f['p50_ratio']:>6.2f}"
            f" {f['rps']['plain']:>10.0f} {f['rps']['traced']:>11.0f} {f['rps_ratio']:>6.2f}"
        )
    lines.append(f"traced gateway: {summary['split_outcomes']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000, help="per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", type=Path, help="also write the summary here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    print(render(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

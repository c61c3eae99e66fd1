"""The sidecar's REST half: direct Triton HTTP vs nginx proxy_pass vs `infergw sidecar` on the
Python proxy (``sidecar``, aiohttp) and on the native plane (``native``).

    .venv/bin/python bench/sidecar_rest_overhead.py [--rounds R] [--requests N]
                                                    [--duration S] [--out out/bench]

Starts Triton, nginx (one worker, HTTP/1.1 keep-alive upstream, bodies streamed both ways)
and ``infergw sidecar --http-upstream`` twice, with INFERGW_NATIVE=0 and =1 (each its own
process group). The requests are OIP REST with the binary tensor extension, as
``tritonclient.http`` sends them with ``binary_data=True``, built once, so the client's
cost is the same for every target: tiny (1x16 FP32) and 5 MB (1x1310720 FP32), one at a
time on one keep-alive connection, p50/p99 per round, interleaved; then throughput with
8 in flight (h2load ``--h1``, 8 connections, a C client, every window checked against
Triton's own statistics). Prints medians over rounds and writes every raw figure as JSON;
stops everything, also on Ctrl-C. Issue 13 sets its overhead targets on gRPC; the same
bounds are shown here for comparison.

    .venv/bin/python bench/sidecar_rest_overhead.py --soak-minutes 10 --soak-rate 3200

instead holds the native sidecar's REST half at a fixed rate (tiny requests, h2load
``--rps`` over 8 connections) and samples its RSS every 10 s: the leak check.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2load
import numpy as np
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
from sidecar_overhead import figure_rows, per_target

from infergw.deploy.triton.launcher import TritonServer

TARGETS = ("direct", "nginx", "sidecar", "native")
PROXIES = TARGETS[1:]
INFER_PATH = "/v2/models/identity/infer"
TINY_COLUMNS = 16
LARGE_COLUMNS = 1310720  # 1 x 1310720 FP32 = 5 MiB
LIMITS = {
    "native_tiny_ratio": Limit("tiny added p50, native/nginx", 1.0, None, higher_is_better=False),
    "native_large_ratio": Limit("5 MB added p50, native/nginx", 0.5, None, higher_is_better=False),
    "native_rps_ratio": Limit("throughput, native/direct", 0.90, None, higher_is_better=True),
    "python_tiny_ratio": Limit("tiny added p50, python/nginx", 1.0, None, higher_is_better=False),
    "python_large_ratio": Limit("5 MB added p50, python/nginx", 0.5, None, higher_is_better=False),
    "python_rps_ratio": Limit("throughput, python/direct", 0.90, None, higher_is_better=True),
}


@dataclass(frozen=True)
class Payload:
    """One OIP binary-extension request of the identity model, and the bytes it echoes."""

    name: str
    body: bytes
    header_length: int
    tensor: bytes

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(self.header_length),
        }


def payload(name: str, columns: int, seed: int = 0) -> Payload:
    tensor = np.random.default_rng(seed).standard_normal((1, columns), dtype=np.float32).tobytes()
    size = {"binary_data_size": len(tensor)}
    header = json.dumps(
        {
            "inputs": [{"name": "input", "shape": [1, columns], "datatype": "FP32",
                        "parameters": size}],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    return Payload(name, header + tensor, len(header), tensor)


class RestClient:
    """One keep-alive HTTP/1.1 connection; every reply checked (200, the tensor echoed)."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def call(self, p: Payload) -> None:
        self.conn.request("POST", INFER_PATH, body=p.body, headers=p.headers)
        reply = self.conn.getresponse()
        body = reply.read()
        if reply.status != 200 or not body.endswith(p.tensor):
            raise RuntimeError(f"{p.name}: HTTP {reply.status}, {len(body)} bytes: {body[:200]!r}")

    def latencies_ms(self, p: Payload, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.call(p)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    def close(self) -> None:
        self.conn.close()


class RestSidecar(servers.ManagedProcess):
    """``infergw sidecar`` with its REST half in front of Triton's HTTP endpoint."""

    def __init__(self, grpc: str, http: str, registry: list[int], native: bool) -> None:
        super().__init__("native" if native else "sidecar", registry)
        self.upstreams = (grpc, http)
        self.native = native

    def start(self) -> str:
        grpc_port, http_port, metrics_port = servers.free_ports(3)
        cli = Path(sys.executable).parent / "infergw"
        args = [str(cli), "sidecar", "--upstream", self.upstreams[0], "--host", "127.0.0.1"]
        args += ["--http-upstream", self.upstreams[1], "--http-port", str(http_port)]
        args += ["--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
        plane = {"INFERGW_NATIVE": "1" if self.native else "0"}
        self.spawn(args, env={**os.environ, "PYTHONUNBUFFERED": "1", **plane})
        assert self.proc is not None
        address = f"127.0.0.1:{http_port}"
        servers.wait_http_ready(address, self.proc, self.log)
        want = "native" if self.native else "python"
        deadline = time.monotonic() + 10
        while f"(data plane: {want})" not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sidecar is not on the {want} plane: see {self.log}")
            time.sleep(0.05)
        return address


def rotated(round_no: int) -> list[str]:
    k = round_no % len(TARGETS)
    return [*TARGETS[k:], *TARGETS[:k]]


def measure(args: Any, clients: dict[str, RestClient], addresses: dict[str, str],
            triton_http: str, body_file: Path) -> dict[str, Any]:  # fmt: skip
    """Per target, one entry per round: latency samples, throughput and CPU windows."""
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
            result = h2load.run_h2load(
                args.h2load, f"{addresses[name]}", body_file, args.concurrency, args.duration,
                triton_http, h1=True, path=INFER_PATH, headers=tiny.headers,
            )  # fmt: skip
            after = _cpu(args.pgids)
            if not result.verified:
                print(f"  ! {name}: h2load window not verified: {result}")
            raw["rps"][name].append(result.rps)
            # Triton's count includes h2load's warm-up, which the CPU window covers too.
            requests = max(result.triton_success, 1)
            raw["cpu"][name].append({p: (after[p] - before[p]) * 1e6 / requests for p in after})
        line = "; ".join(
            f"{t} {percentile(raw['tiny'][t][-1], 50):.3f}/"
            f"{percentile(raw['large'][t][-1], 50):.1f} ms {raw['rps'][t][-1]:.0f} rps"
            for t in TARGETS
        )
        print(f"  round {round_no + 1}/{args.rounds}: {line}", flush=True)
    return raw


def _cpu(pgids: dict[str, int]) -> dict[str, float]:
    return {name: servers.group_cpu_s(pgid) for name, pgid in pgids.items()}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    targets = per_target(raw, TARGETS)
    nginx, direct = targets["nginx"], targets["direct"]
    out: dict[str, Any] = {"targets": targets}
    for plane, name in (("native", "native"), ("python", "sidecar")):
        t = targets[name]
        out[f"{plane}_tiny_ratio"] = ratio(t["tiny_added_p50_ms"], nginx["tiny_added_p50_ms"])
        out[f"{plane}_large_ratio"] = ratio(t["large_added_p50_ms"], nginx["large_added_p50_ms"])
        out[f"{plane}_rps_ratio"] = ratio(t["rps"], direct["rps"])
    out["nginx_rps_ratio"] = ratio(nginx["rps"], direct["rps"])
    out["verdicts"] = {key: limit.verdict(out[key]) for key, limit in LIMITS.items()}
    return out


def render(summary: dict[str, Any], args: Any) -> str:
    t = summary["targets"]
    head = f"{'':30}" + "".join(f"{n:>11}" for n in TARGETS)
    rows = [
        f"sidecar REST overhead: medians over {args.rounds} rounds; {args.requests} tiny + "
        f"{args.large_requests} x 5 MB sequential, {args.duration:g} s at {args.concurrency} "
        "in flight (h2load --h1), per target per round",
        head,
        "-" * len(head),
    ]
    rows += figure_rows(t, TARGETS, 30)
    for proc in ("triton", *PROXIES):
        cells = "".join(f"{t[n]['cpu_us_per_request'][proc]:>11.0f}" for n in TARGETS)
        rows.append(f"{'  CPU us/req, ' + proc:30}{cells}")
    nginx_rps = summary["nginx_rps_ratio"] or 0.0
    rows += ["", f"nginx reaches {nginx_rps * 100:.0f}% of direct's throughput"]
    rows.append(f"{'figure':34}{'measured':>10}{'bound':>9}  verdict")
    for key, limit in LIMITS.items():
        value = summary[key]
        if value is None:
            shown = "-"
        elif key.endswith("rps_ratio"):
            shown = f"{value * 100:.0f}%"
        else:
            shown = f"{value:.2f}x"
        bound = f">={limit.target * 100:.0f}%" if limit.higher_is_better else f"<={limit.target}x"
        rows.append(f"{limit.label:34}{shown:>10}{bound:>9}  {summary['verdicts'][key]}")
    return "\n".join(rows)


def run(args: Any, nginx_bin: str, groups: list[int]) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        print("starting tritonserver ...", flush=True)
        triton = TritonServer(models=["identity"])
        stack.callback(shielded(triton.stop))
        endpoints = triton.start()
        groups.append(triton.pid or 0)
        print("starting nginx and the sidecars ...", flush=True)
        listen = f"127.0.0.1:{servers.free_ports(1)[0]}"
        nginx = servers.NginxHttpProxy(nginx_bin, listen, endpoints.http, registry=groups)
        stack.callback(shielded(nginx.stop))
        sidecar = RestSidecar(endpoints.grpc, endpoints.http, groups, native=False)
        stack.callback(shielded(sidecar.stop))
        native = RestSidecar(endpoints.grpc, endpoints.http, groups, native=True)
        stack.callback(shielded(native.stop))
        addresses = {
            "direct": endpoints.http,
            "nginx": nginx.start(),
            "sidecar": sidecar.start(),
            "native": native.start(),
        }
        print(f"targets: {addresses}", flush=True)
        args.pgids = {
            "triton": groups[0],
            "nginx": nginx.pid,
            "sidecar": sidecar.pid,
            "native": native.pid,
        }
        clients = {name: RestClient(addr) for name, addr in addresses.items()}
        for client in clients.values():
            stack.callback(client.close)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="infergw-bench-rest-")))
        body_file = tmp / "tiny.bin"
        tiny, large = args.payloads
        body_file.write_bytes(tiny.body)
        print("warming up ...", flush=True)
        for name, client in clients.items():
            client.latencies_ms(tiny, args.warmup)
            client.latencies_ms(large, 5)
            h2load.run_h2load(
                args.h2load, addresses[name], body_file, args.concurrency, 1.0, endpoints.http,
                h1=True, path=INFER_PATH, headers=tiny.headers,
            )  # fmt: skip
        print(f"measuring {args.rounds} rounds ...", flush=True)
        raw = measure(args, clients, addresses, endpoints.http, body_file)
        rss = {"sidecar": servers.vm_rss_mib(sidecar.pid), "native": servers.vm_rss_mib(native.pid)}
        print("stopping servers ...", flush=True)
    return {"raw": raw, "summary": summarize(raw), "rss_mib": rss}


SOAK_SAMPLE_S = 10.0


def soak(args: Any, groups: list[int]) -> dict[str, Any]:
    """The native sidecar's REST half at ``soak_rate`` req/s for ``soak_minutes``: RSS
    samples, and h2load's and Triton's counts (every request answered, none failed)."""
    with contextlib.ExitStack() as stack:
        triton = TritonServer(models=["identity"])
        stack.callback(shielded(triton.stop))
        endpoints = triton.start()
        groups.append(triton.pid or 0)
        native = RestSidecar(endpoints.grpc, endpoints.http, groups, native=True)
        stack.callback(shielded(native.stop))
        address = native.start()
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="infergw-bench-rest-")))
        tiny = args.payloads[0]
        (tmp / "tiny.bin").write_bytes(tiny.body)
        seconds = args.soak_minutes * 60
        per_connection = max(1, round(args.soak_rate / args.concurrency))
        print(f"soak: {address} at {per_connection * args.concurrency} req/s for {seconds:.0f} s")
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            load = pool.submit(
                h2load.run_h2load, args.h2load, address, tmp / "tiny.bin", args.concurrency,
                seconds, endpoints.http, h1=True, path=INFER_PATH, headers=tiny.headers,
                rps=per_connection,
            )  # fmt: skip
            while not load.done():
                samples.append((time.monotonic() - t0, servers.vm_rss_mib(native.pid)))
                print(f"  {samples[-1][0]:5.0f} s  RSS {samples[-1][1]:.1f} MiB", flush=True)
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    load.result(timeout=SOAK_SAMPLE_S)
            result = load.result()
        samples.append((time.monotonic() - t0, servers.vm_rss_mib(native.pid)))
    return {"samples": samples, "h2load": result.as_dict(), "rps": result.rps}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    p.add_argument("--requests", type=int, default=300, help="tiny requests per round (300)")
    p.add_argument("--large-requests", type=int, default=40, help="5 MB requests per round (40)")
    p.add_argument("--duration", type=float, default=3.0, help="throughput seconds (default 3)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--warmup", type=int, default=200, help="tiny warm-up requests per target")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="output directory")
    p.add_argument("--soak-minutes", type=float, help="soak the native REST half instead")
    p.add_argument("--soak-rate", type=float, default=3200.0, help="soak req/s (3200)")
    args = p.parse_args(argv)
    args.payloads = (
        payload("tiny 1x16", TINY_COLUMNS),
        payload("5 MB 1x1310720", LARGE_COLUMNS, seed=1),
    )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nginx_bin = servers.nginx_binary()
    args.h2load = h2load.h2load_binary()
    if nginx_bin is None or args.h2load is None:
        hints = f"{servers.NGINX_INSTALL_HINT}\n  {h2load.INSTALL_HINT}"
        print(f"nginx and h2load are needed; install them with:\n  {hints}", file=sys.stderr)
        return 2
    started, load_at_start = time.monotonic(), os.getloadavg()
    groups: list[int] = []
    report: dict[str, Any] | None = None
    for sig in STOP_SIGNALS[1:]:
        signal.signal(sig, _raise_stopped)
    try:
        report = soak(args, groups) if args.soak_minutes else run(args, nginx_bin, groups)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        clean = check_cleanup(groups)
    if report is None:
        return 130 if clean else 3
    report["machine"] = {**machine_facts(nginx_bin), "loadavg_at_start": load_at_start}
    report["settings"] = {
        k: v for k, v in vars(args).items() if k not in ("payloads", "pgids", "out", "h2load")
    }
    report["wall_seconds"] = time.monotonic() - started
    if args.soak_minutes:
        return _soak_report(report, args, clean)
    print()
    print(render(report["summary"], args))
    rss = report["rss_mib"]
    print(f"\nRSS after the run: sidecar {rss['sidecar']:.1f} MiB, native {rss['native']:.1f} MiB;"
          f" wall time {report['wall_seconds']:.0f} s")  # fmt: skip
    path = args.out / "sidecar_rest_overhead.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"raw figures: {path}")
    return 0 if clean else 3


def _soak_report(report: dict[str, Any], args: Any, clean: bool) -> int:
    rss = [mib for _, mib in report["samples"]]
    half = rss[len(rss) // 2 :]
    h = report["h2load"]
    print(f"\nsoak: {h['succeeded']} requests at {report['rps']:.0f} req/s, {h['failed']} failed,"
          f" Triton: {h['triton_success']} OK / {h['triton_fail']} failed"
          f" ({'verified' if h['verified'] else 'NOT verified'})")  # fmt: skip
    print(f"RSS {rss[0]:.1f} -> {rss[-1]:.1f} MiB (max {max(rss):.1f}); second half"
          f" {min(half):.1f}-{max(half):.1f} MiB")  # fmt: skip
    path = args.out / "sidecar_rest_soak.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"raw figures: {path}")
    return 0 if clean and h["verified"] else 3


if __name__ == "__main__":
    sys.exit(main())

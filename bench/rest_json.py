"""REST cost through the gateway vs straight to Triton, and what a big JSON body costs.

    .venv/bin/python bench/rest_json.py [--rounds 5] [--requests 10] [--out FILE.json]
        [--baseline PACKAGE_DIR]

Starts Triton and ``infergw serve`` (its own process, routing every model to Triton),
then, with one unmodified ``tritonclient.http`` client per target:

* latency, 1 MiB FP32 ``identity`` input: JSON both ways, and the binary extension both
  ways; medians per round, interleaved direct/gateway, the median of the rounds; and each
  gateway's CPU time per request (user + system, all threads, from /proc), which a busy
  shared box disturbs far less than latency;
* with ``--baseline DIR``, a second gateway in the same run, started with
  ``PYTHONPATH=DIR`` (a directory holding an ``infergw`` package view of another tree,
  e.g. the last commit's): interleaved with the others, so before/after come from one run.
  To make one: ``git archive HEAD | tar -x -C /tmp/old``, copy ``proto/*_pb2.py`` and
  ``proto/tfs/*_pb2.py`` there, then ``python /tmp/old/tools/package_view.py /tmp/old-view``;
* memory: the gateway's resident set before a 32 MB JSON body and its peak (VmHWM) while
  it answers it (the body comes back as JSON too), next to the body size;
* event-loop blocking: the slowest tiny gRPC ``ModelInfer`` to the gateway while it
  parses and answers a 16 MB JSON body.

Issue 9 item 8's targets: the gateway adds <= 20% of direct for JSON, <= 1.5 ms for 1 MiB
binary, peak memory < ~3x the body. A script, not a test (timings on a shared box are
noise for assertions). Run a tree's gateway with ``PYTHONPATH`` set to compare code.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import servers
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from infergw.deploy.triton.launcher import TritonServer

ONE_MIB_COLUMNS = (1 << 20) // 4  # FP32 elements in 1 MiB
TIMEOUT_S = 300.0


def http_client(url: str) -> thttp.InferenceServerClient:
    return thttp.InferenceServerClient(url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)


def infer(client: thttp.InferenceServerClient, array: np.ndarray, binary: bool) -> np.ndarray:
    tensor = thttp.InferInput("input", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    output = thttp.InferRequestedOutput("output", binary_data=binary)
    result = client.infer("identity", [tensor], outputs=[output])
    out: np.ndarray = result.as_numpy("output")
    return out


def timed_ms(client: thttp.InferenceServerClient, array: np.ndarray, binary: bool) -> float:
    t0 = time.perf_counter()
    infer(client, array, binary)
    return (time.perf_counter() - t0) * 1e3


def cpu_ms(pid: int) -> float:
    """CPU time a process has used, user + system, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1e3 / os.sysconf("SC_CLK_TCK")


def latency(
    clients: dict[str, thttp.InferenceServerClient],
    pids: dict[str, int],
    binary: bool,
    rounds: int,
    requests: int,
) -> dict[str, float]:
    """Median latency per target; ``cpu_<name>``: ms of CPU per request for ``pids``."""
    array = np.random.default_rng(0).random((1, ONE_MIB_COLUMNS), dtype=np.float32)
    for client in clients.values():  # warm up, and check the answer once
        np.testing.assert_array_equal(infer(client, array, binary), array)
    medians: dict[str, list[float]] = {name: [] for name in clients}
    cpu = dict.fromkeys(pids, 0.0)
    for _ in range(rounds):
        for name, client in clients.items():
            before = cpu_ms(pids[name]) if name in pids else 0.0
            medians[name].append(
                statistics.median(timed_ms(client, array, binary) for _ in range(requests))
            )
            if name in pids:
                cpu[name] += cpu_ms(pids[name]) - before
    figures = {name: statistics.median(values) for name, values in medians.items()}
    figures.update({f"cpu_{name}": used / (rounds * requests) for name, used in cpu.items()})
    return figures


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def json_columns(target_bytes: int) -> int:
    """FP32 columns whose JSON request body (as tritonclient writes it) is ~``target_bytes``."""
    sample = np.random.default_rng(1).random((1, 1000), dtype=np.float32)
    per_value = len(json.dumps(sample.tolist())) / 1000
    return int(target_bytes / per_value)


def request_bytes(array: np.ndarray) -> int:
    tensor = thttp.InferInput("input", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=False)
    body, _ = thttp.InferenceServerClient.generate_request_body(
        [tensor], outputs=[thttp.InferRequestedOutput("output", binary_data=False)]
    )
    return len(body)


def memory(gateway: servers.GatewayProcess, body_mb: int) -> dict[str, float]:
    array = np.random.default_rng(2).random((1, json_columns(body_mb * 10**6)), dtype=np.float32)
    size = request_bytes(array)
    client = http_client(gateway.http)
    try:
        infer(client, array[:, :1000], binary=False)
        time.sleep(1.0)  # let the warm-up's garbage go
        before = proc_kib(gateway.pid, "VmRSS")
        hwm_before = proc_kib(gateway.pid, "VmHWM")
        infer(client, array, binary=False)
        time.sleep(0.5)
        after, hwm = proc_kib(gateway.pid, "VmRSS"), proc_kib(gateway.pid, "VmHWM")
    finally:
        client.close()
    peak_added = (max(hwm, hwm_before) - before) * 1024
    return {
        "body_mb": size / 1e6,
        "rss_before_mb": before * 1024 / 1e6,
        "peak_added_mb": peak_added / 1e6,
        "rss_after_added_mb": (after - before) * 1024 / 1e6,
        "peak_over_body": peak_added / size,
        "hwm_was_already_higher": hwm_before > hwm,
    }


def _big_request(url: str, columns: int, pipe: Any) -> None:
    """In a process of its own: building and parsing a big JSON body in tritonclient holds
    the GIL for hundreds of ms, which would stall the measuring thread, not the gateway."""
    array = np.random.default_rng(3).random((1, columns), dtype=np.float32)
    client = http_client(url)
    try:
        pipe.send(("ready", request_bytes(array)))
        pipe.recv()  # go
        pipe.send(("done", timed_ms(client, array, binary=False)))
    finally:
        client.close()


def blocking(gateway: servers.GatewayProcess, body_mb: int) -> dict[str, float]:
    """The slowest tiny gRPC calls while a ``body_mb`` JSON body is in the gateway."""
    grpc_client = tgrpc.InferenceServerClient(gateway.grpc)
    tiny = tgrpc.InferInput("input", [1, 4], "FP32")
    tiny.set_data_from_numpy(np.ones((1, 4), np.float32))

    def tiny_ms() -> float:
        t0 = time.perf_counter()
        grpc_client.infer("identity", [tiny])
        return (time.perf_counter() - t0) * 1e3

    def live_ms() -> float:  # answered by the gateway alone: pure event-loop lag
        t0 = time.perf_counter()
        grpc_client.is_server_live()
        return (time.perf_counter() - t0) * 1e3

    idle = [tiny_ms() for _ in range(50)]
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(
        target=_big_request, args=(gateway.http, json_columns(body_mb * 10**6), theirs)
    )
    child.start()
    try:
        if not ours.poll(TIMEOUT_S):
            raise RuntimeError("the big request's process did not get ready")
        _, size = ours.recv()
        ours.send("go")
        during, live = [], []
        deadline = time.monotonic() + TIMEOUT_S
        while not ours.poll() and time.monotonic() < deadline:
            during.append(tiny_ms())
            live.append(live_ms())
        _, big_ms = ours.recv() if ours.poll(TIMEOUT_S) else (None, float("nan"))
    finally:
        child.join(TIMEOUT_S)
        if child.is_alive():
            child.kill()
            child.join()
        grpc_client.close()
    return {
        "body_mb": size / 1e6,
        "big_request_ms": big_ms,
        "tiny_idle_p50_ms": statistics.median(idle),
        "tiny_during_max_ms": max(during) if during else float("nan"),
        "tiny_during_p50_ms": statistics.median(during) if during else float("nan"),
        "tiny_calls_during": len(during),
        "live_during_max_ms": max(live) if live else float("nan"),
    }


def added(
    figures: dict[str, float], gateways: dict[str, servers.GatewayProcess]
) -> dict[str, float]:
    """What each gateway adds to direct, in ms and in % of direct."""
    out: dict[str, float] = {}
    for name in gateways:
        extra = figures[name] - figures["direct"]
        out[f"added_ms_{name}"], out[f"added_pct_{name}"] = extra, 100 * extra / figures["direct"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--memory-mb", type=int, default=32)
    parser.add_argument("--blocking-mb", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("out/bench/rest_json.json"))
    parser.add_argument(
        "--baseline", help="PYTHONPATH of a second gateway to compare, in the same run"
    )
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "baseline": args.baseline,
    }
    with TritonServer() as triton:
        gateway = servers.GatewayProcess(triton.endpoints.grpc)
        baseline = (
            servers.GatewayProcess(triton.endpoints.grpc, env={"PYTHONPATH": args.baseline})
            if args.baseline
            else None
        )
        try:
            gateways = {"gateway": gateway, **({"baseline": baseline} if baseline else {})}
            for started in gateways.values():
                started.start()
            clients = {"direct": http_client(triton.endpoints.http)}
            clients.update({name: http_client(g.http) for name, g in gateways.items()})
            pids = {name: g.pid for name, g in gateways.items()}
            try:
                for mode, binary in (("json", False), ("binary", True)):
                    figures = latency(clients, pids, binary, args.rounds, args.requests)
                    report[mode] = {**figures, **added(figures, gateways)}
                    print(f"REST {mode:6s} 1 MiB: direct {figures['direct']:8.2f} ms", end="")
                    for name in gateways:
                        print(
                            f", {name} {figures[name]:8.2f} ms (added "
                            f"{report[mode][f'added_ms_{name}']:7.2f} ms, "
                            f"{report[mode][f'added_pct_{name}']:5.1f}%; "
                            f"CPU {figures[f'cpu_{name}']:.2f} ms/request)",
                            end="",
                        )
                    print()
            finally:
                for client in clients.values():
                    client.close()
            for name, measured in gateways.items():
                report["memory" if measured is gateway else f"memory_{name}"] = m = memory(
                    measured, args.memory_mb
                )
                print(
                    f"memory ({name}), {m['body_mb']:.1f} MB JSON body: peak "
                    f"+{m['peak_added_mb']:.0f} MB ({m['peak_over_body']:.1f}x the body), "
                    f"RSS after +{m['rss_after_added_mb']:.0f} MB"
                )
                if measured is baseline:
                    baseline.stop()  # the blocking figure is the gateway's, alone on the box
            report["blocking"] = blocking(gateway, args.blocking_mb)
            b = report["blocking"]
            print(
                f"tiny gRPC call during a {b['body_mb']:.1f} MB JSON body "
                f"({b['big_request_ms']:.0f} ms): "
                f"max {b['tiny_during_max_ms']:.1f} ms, p50 {b['tiny_during_p50_ms']:.2f} ms "
                f"(idle p50 {b['tiny_idle_p50_ms']:.2f} ms, {b['tiny_calls_during']} calls); "
                f"ServerLive max {b['live_during_max_ms']:.1f} ms"
            )
        finally:
            for started in (gateway, baseline):
                if started is not None:
                    started.stop()  # idempotent, and safe after a failed start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

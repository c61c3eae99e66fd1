"""The CLI as users run it: `infergw local up` in the foreground, `infergw demo`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from infergw.gateway.processes import ProcessGroup

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "infergw.gateway.cli"]


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (by parent pid), whatever session it started."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running: a zombie has exited (an orphan waits for init to reap it, which can take a
    moment here: Triton's python-backend stubs are orphaned when tritonserver exits)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (tritonserver carries its ports there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and "tritonserver" in cmdline:
            found.append(int(entry.name))
    return found


def test_local_up_serves_until_sigterm_then_stops_everything(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    argv = [*CLI, "local", "up", "--ready-file", str(ready), *ports]
    log = tmp_path / "local-up.log"
    # Stopped (SIGTERM, then SIGKILL) when the block exits, also when an assertion fails.
    with ProcessGroup.start(argv, log=log, name="local up", grace_s=60) as proc:
        proc.wait_ready(ready.exists, timeout_s=120)  # fails with the log tail if it died
        info = json.loads(ready.read_text())
        assert set(info["gateway"]) == {"grpc", "http", "metrics"}
        assert set(info["backends"]) == {"triton", "lambda", "sagemaker", "cloudrun"}
        assert set(info["backends"]["triton"]) == {"grpc", "http"}

        client = tgrpc.InferenceServerClient(info["gateway"]["grpc"])
        tensor = tgrpc.InferInput("input", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 3), np.float32))
        for backend in ("triton", "lambda", "sagemaker", "cloudrun"):  # starts workers too
            reply = client.infer("identity", [tensor], headers={"x-infergw-backend": backend})
            assert reply.as_numpy("output").tolist() == [[1, 1, 1]]
        client.close()
        triton_port = info["backends"]["triton"]["grpc"].rsplit(":", 1)[1]
        assert processes_mentioning(triton_port)
        children = descendants(proc.pid)
        assert len(children) >= 5  # tritonserver, moto, one worker per serverless backend

        proc.send_signal(signal.SIGTERM)  # to local up alone, as Ctrl-C/kill would
        assert proc.wait(60) == 0
        assert processes_mentioning(triton_port) == []
        assert [pid for pid in children if alive(pid)] == []


def test_demo_prints_table_and_writes_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [*CLI, "demo", "--requests", "5", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "e2e p50" in done.stdout and "Protocols (Triton backend)" in done.stdout
    rows = json.loads((out / "result.json").read_text())
    assert {(r["backend"], r["protocol"]) for r in rows} == {
        ("triton", "grpc"),
        ("triton", "rest-binary"),
        ("triton", "rest-json"),
        ("lambda", "grpc"),
        ("sagemaker", "grpc"),
        ("cloudrun", "grpc"),
    }
    for row in rows:
        assert row["e2e_p50_ms"] >= row["backend_rtt_p50_ms"] > 0
        if row["backend"] != "triton":
            assert row["compute_p50_ms"] > 0  # reported per request by function/container
    cold = [r for r in rows if r["workload"].startswith("identity") and r["backend"] != "triton"]
    assert len(cold) == 3 and all(r["first_coldstart_ms"] > 0 for r in cold)
    assert (out / "report.md").read_text().startswith("# infergw demo")

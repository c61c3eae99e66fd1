"""The CLI as users run it: `infergw local up` in the foreground, `infergw demo`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "infergw.gateway.cli"]


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
    proc = subprocess.Popen(
        [*CLI, "local", "up", "--ready-file", str(ready), *ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "local up did not become ready"
            time.sleep(0.2)
        info = json.loads(ready.read_text())
        assert set(info["gateway"]) == {"grpc", "http", "metrics"}
        assert set(info["backends"]["triton"]) == {"grpc", "http"}

        client = tgrpc.InferenceServerClient(info["gateway"]["grpc"])
        tensor = tgrpc.InferInput("input", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 3), np.float32))
        assert client.infer("identity", [tensor]).as_numpy("output").tolist() == [[1, 1, 1]]
        client.close()
        triton_port = info["backends"]["triton"]["grpc"].rsplit(":", 1)[1]
        assert processes_mentioning(triton_port)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert processes_mentioning(triton_port) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_demo_prints_table_and_writes_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [*CLI, "demo", "--requests", "10", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "e2e p50" in done.stdout and "T compute" in done.stdout
    rows = json.loads((out / "result.json").read_text())
    assert {(r["workload"].split()[0], r["protocol"]) for r in rows} >= {
        ("identity", "grpc"),
        ("minilm", "rest-json"),
    }
    for row in rows:
        assert row["e2e_p50_ms"] >= row["gateway_total_p50_ms"] > 0
        assert row["triton_compute_mean_ms"] > 0
    assert (out / "report.md").read_text().startswith("# infergw demo")

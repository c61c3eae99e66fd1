"""`infergw serve` with a low open-file limit, flooded with idle REST connections
(issue 9, item 7: new requests timed out and 9,591 "Too many open files" tracebacks).

The connection limit (a quarter of the file limit by default) is met before the
descriptors run out: connections beyond it get a 503, gRPC keeps serving, an accept that
still runs out (a burst of refusals holds descriptors for a moment) is one log line, not
a traceback per connection, and once the idle timeout has closed the flood (the client
never does) REST serves again.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from infergw.gateway.processes import ProcessGroup
from tests.integration.test_serve_cli import FREE_PORTS, GOOD, INFERGW, SERVING, TIMEOUT_S

pytestmark = pytest.mark.integration

FILE_LIMIT = 256  # the default connection limit is then 64
FLOOD = 400
IDLE_S = 5.0  # the flood outlives the checks made while it is open
# Runs the installed command under a lowered RLIMIT_NOFILE (soft and hard).
LIMITED = (
    "import os, resource, sys;"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FILE_LIMIT}, {FILE_LIMIT}));"
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def ready(address: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/health/ready", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return 0  # refused or reset (a 503 sent before our request was read)


def grpc_identity(address: str) -> list[list[float]]:
    client = tgrpc.InferenceServerClient(address)
    try:
        tensor = tgrpc.InferInput("input", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.array([[1, 2]], np.float32))
        output = client.infer("identity", [tensor], client_timeout=10).as_numpy("output")
        return output.tolist()  # type: ignore[no-any-return]
    finally:
        client.close()


def test_a_flood_of_idle_connections_under_a_low_file_limit_is_refused_cleanly(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        GOOD.replace("{host: 127.0.0.1}", f"{{host: 127.0.0.1, idle_timeout_s: {IDLE_S}}}")
    )
    stderr = tmp_path / "stderr.log"
    argv = [sys.executable, "-c", LIMITED, INFERGW, "serve", "--config", config, *FREE_PORTS]
    with stderr.open("wb") as err:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            start_new_session=True,
        )  # fmt: skip
    flood: list[socket.socket] = []
    with ProcessGroup(popen, name="infergw serve (low file limit)") as group:
        assert popen.stdout is not None
        line = popen.stdout.readline().decode()
        assert line.startswith(SERVING), line + stderr.read_text()
        addresses = json.loads(line.removeprefix(SERVING))
        host, port = addresses["http"].rsplit(":", 1)
        flooded = time.monotonic()
        try:
            for _ in range(FLOOD):
                flood.append(socket.create_connection((host, int(port)), timeout=5))
            # REST is full (503 or refused at once, no hang); gRPC still serves.
            started = time.monotonic()
            assert ready(addresses["http"]) in (0, 503)
            assert time.monotonic() - started < 5
            assert grpc_identity(addresses["grpc"]) == [[1.0, 2.0]]
            # The server closes the idle flood itself: REST serves again.
            deadline = time.monotonic() + TIMEOUT_S
            while ready(addresses["http"]) != 200:
                assert time.monotonic() < deadline, "REST never served again"
                time.sleep(0.1)
            assert time.monotonic() - flooded >= IDLE_S * 0.9
        finally:
            for sock in flood:
                sock.close()
        group.stop()
    log = stderr.read_text()
    assert "Traceback" not in log, log[:4000]
    assert log.count("Too many open files") <= 1, log[:4000]  # once per interval at most
    assert log.count("the limit; refused") == 1, log[:4000]  # once per interval

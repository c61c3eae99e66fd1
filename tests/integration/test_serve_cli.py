"""`infergw serve --config FILE` as a user runs it: the installed command, a real config file.

A good file serves a real inference (the in-process ``runtime`` backend: no other server)
and SIGTERM ends it cleanly; each bad file ends it with exit 2 and one line on stderr.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from infergw.gateway.processes import ProcessGroup

pytestmark = pytest.mark.integration

INFERGW = Path(sys.executable).with_name("infergw")  # the console script, as installed
FREE_PORTS = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
SERVING = "infergw serving: "
TIMEOUT_S = 60.0

GOOD = """\
listen: {host: 127.0.0.1}
allow_backend_pinning: false
backends:
  local:
    kind: runtime
    models: [identity]
    max_concurrency: 2
    max_queue: 4
    timeout_ms: 10000
models:
  identity: local
"""


@contextmanager
def serve(*args: str | Path, stderr: Path) -> Iterator[tuple[ProcessGroup, queue.Queue[str]]]:
    """Start ``infergw serve ARGS`` in its own process group; stdout lines go to a queue.

    The group is stopped on exit (SIGTERM, then SIGKILL), also when the test fails.
    """
    with stderr.open("wb") as err:
        popen = subprocess.Popen(
            [INFERGW, "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            lines.put(line.decode())
        lines.put("")  # EOF: the process closed stdout (exited)

    threading.Thread(target=read, daemon=True).start()
    with ProcessGroup(popen, name="infergw serve") as group:
        yield group, lines


def test_serve_good_config_infers_then_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(GOOD)
    stderr = tmp_path / "stderr.log"
    with serve("--config", config, *FREE_PORTS, stderr=stderr) as (group, lines):
        line = lines.get(timeout=TIMEOUT_S)
        assert line.startswith(SERVING), line + stderr.read_text()
        addresses = json.loads(line.removeprefix(SERVING))
        assert set(addresses) == {"grpc", "http", "metrics"}
        assert all(not a.endswith(":0") for a in addresses.values())  # bound ports reported

        with urllib.request.urlopen(f"http://{addresses['http']}/v2/health/ready") as reply:
            assert reply.status == 200
        client = tgrpc.InferenceServerClient(addresses["grpc"])
        try:
            tensor = tgrpc.InferInput("input", [1, 3], "FP32")
            tensor.set_data_from_numpy(np.array([[1, 2, 3]], np.float32))
            result = client.infer("identity", [tensor])
            assert result.as_numpy("output").tolist() == [[1, 2, 3]]
        finally:
            client.close()

        group.send_signal(signal.SIGTERM)  # what `kill PID` or a supervisor does
        assert group.wait(TIMEOUT_S) == 0, stderr.read_text()
    assert "Traceback" not in stderr.read_text()


# (file text, or None for no file; the one line expected on stderr after "infergw: error: ")
BAD_FILES = {
    "port as a string": (
        GOOD.replace("{host: 127.0.0.1}", '{host: 127.0.0.1, grpc_port: "eight"}'),
        "{path}: listen.grpc_port: must be an integer, got string 'eight'",
    ),
    "boolean as a string": (
        GOOD.replace("allow_backend_pinning: false", 'allow_backend_pinning: "false"'),
        "{path}: allow_backend_pinning: must be a boolean (true or false), got string 'false'",
    ),
    "integer as a string": (
        GOOD.replace("max_queue: 4", 'max_queue: "5"'),
        "{path}: backends.local.max_queue: must be an integer, got string '5'",
    ),
    "backends as a string": (
        "backends: triton\nmodels: {identity: triton}\n",
        "{path}: backends: must be a mapping, got string 'triton'",
    ),
    "misspelt key": (
        GOOD.replace("{host: 127.0.0.1}", "{host: 127.0.0.1, grcp_port: 1}"),
        "{path}: listen.grcp_port: unknown key; did you mean 'grpc_port'?",
    ),
    "route to an unknown backend": (
        GOOD.replace("identity: local", "identity: locl"),
        "{path}: models.identity.backend: unknown backend 'locl'; did you mean 'local'?",
    ),
    "unknown backend kind": (
        GOOD.replace("kind: runtime", "kind: runtim"),
        "{path}: unknown backend kind 'runtim'; installed kinds: ",
    ),
    "option the backend does not take": (
        GOOD.replace("models: [identity]", "models: [identity]\n    preload_all: true"),
        "{path}: backend 'local': unknown options ['preload_all']",
    ),
    "missing file": (None, "cannot read config {path}: No such file or directory"),
    "unreadable YAML": (
        "backends: [unclosed\n",
        "cannot read config {path}: line 2, column 1: expected ',' or ']', but got '<stream end>'",
    ),
    "top level not a mapping": (
        "- backends\n- models\n",
        "{path}: the top level must be a mapping, got a list",
    ),
}


@pytest.mark.parametrize(("text", "expected"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_serve_bad_config_exits_2_with_one_line(
    tmp_path: Path, text: str | None, expected: str
) -> None:
    config = tmp_path / "gateway.yaml"
    if text is not None:
        config.write_text(text)
    stderr = tmp_path / "stderr.log"
    with serve("--config", config, *FREE_PORTS, stderr=stderr) as (group, lines):
        assert group.wait(TIMEOUT_S) == 2
        assert lines.get(timeout=TIMEOUT_S) == ""  # nothing on stdout: it never served
    (line,) = stderr.read_text().splitlines()
    assert line.startswith("infergw: error: " + expected.format(path=config)), line

"""The real tritonserver (nvidia-pytriton wheel) serving the bundled model repository.

Driven with unmodified tritonclient (gRPC and HTTP) exactly as users would; the MiniLM
results must equal the numpy runtime's, since both run the same code.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from infergw.deploy.triton.launcher import BUNDLED_REPOSITORY, TritonServer, TritonStartError
from infergw.models import load_model

pytestmark = pytest.mark.integration

MODELS = {
    "identity": ([("input", "FP32", [-1, -1])], [("output", "FP32", [-1, -1])]),
    "identity_int64": ([("input", "INT64", [-1, -1])], [("output", "INT64", [-1, -1])]),
    "minilm": ([("text", "BYTES", [-1])], [("embedding", "FP32", [-1, 384])]),
    "mobilenet": ([("image", "FP32", [-1, 224, 224, 3])], [("probs", "FP32", [-1, 1000])]),
    "yolo": ([("images", "FP32", [1, 3, 640, 640])], [("output", "FP32", [1, 25200, 85])]),
}
SENTENCES = ["A man is eating food.", "The quick brown fox jumps over the lazy dog.", ""]


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServer]:
    triton = TritonServer()
    try:
        triton.start()
        yield triton
    finally:
        triton.stop()


@pytest.fixture(scope="module")
def grpc_client(server: TritonServer) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(server.endpoints.grpc)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(server: TritonServer) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(server.endpoints.http)
    yield client
    client.close()


def live_group_members(pgid: int) -> list[int]:
    """Pids of processes (zombies excluded) in process group ``pgid``, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


# -- the shared server ---------------------------------------------------------------


def test_server_and_models_ready(
    server: TritonServer,
    grpc_client: tgrpc.InferenceServerClient,
    http_client: thttp.InferenceServerClient,
) -> None:
    assert server.endpoints.grpc.startswith("127.0.0.1:")
    assert grpc_client.is_server_ready() and http_client.is_server_ready()
    for model in MODELS:
        assert grpc_client.is_model_ready(model) and http_client.is_model_ready(model)
    # Both stub processes of identity (instance_group count 2) run in the server's group.
    assert server.pid is not None and len(live_group_members(server.pid)) >= 6


@pytest.mark.parametrize("model", list(MODELS))
def test_model_metadata(
    model: str,
    grpc_client: tgrpc.InferenceServerClient,
    http_client: thttp.InferenceServerClient,
) -> None:
    inputs, outputs = MODELS[model]
    grpc_meta = grpc_client.get_model_metadata(model, as_json=True)
    http_meta = http_client.get_model_metadata(model)
    for meta in (grpc_meta, http_meta):
        assert meta["name"] == model
        assert meta["platform"] == "python"
        got_in = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]]
        got_out = [
            (t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["outputs"]
        ]
        assert (got_in, got_out) == (inputs, outputs)


@pytest.mark.parametrize("shape", [(1, 16), (4, 1000)])
def test_identity_fp32_round_trip(
    shape: tuple[int, int],
    grpc_client: tgrpc.InferenceServerClient,
    http_client: thttp.InferenceServerClient,
) -> None:
    data = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    g_in = tgrpc.InferInput("input", list(shape), "FP32")
    g_in.set_data_from_numpy(data)
    g_out = grpc_client.infer("identity", [g_in]).as_numpy("output")
    h_in = thttp.InferInput("input", list(shape), "FP32")
    h_in.set_data_from_numpy(data, binary_data=True)
    h_out = http_client.infer("identity", [h_in]).as_numpy("output")
    for out in (g_out, h_out):
        assert out is not None and out.dtype == np.float32
        np.testing.assert_array_equal(out, data)


def test_identity_int64_round_trip(
    grpc_client: tgrpc.InferenceServerClient, http_client: thttp.InferenceServerClient
) -> None:
    data = np.array([[np.iinfo(np.int64).min, -1, 0, 1, np.iinfo(np.int64).max]], dtype=np.int64)
    g_in = tgrpc.InferInput("input", list(data.shape), "INT64")
    g_in.set_data_from_numpy(data)
    h_in = thttp.InferInput("input", list(data.shape), "INT64")
    h_in.set_data_from_numpy(data, binary_data=False)  # JSON numbers on the wire
    for out in (
        grpc_client.infer("identity_int64", [g_in]).as_numpy("output"),
        http_client.infer("identity_int64", [h_in]).as_numpy("output"),
    ):
        np.testing.assert_array_equal(out, data)


def test_minilm_equals_numpy_runtime(
    grpc_client: tgrpc.InferenceServerClient, http_client: thttp.InferenceServerClient
) -> None:
    text = np.array([s.encode() for s in SENTENCES], dtype=np.object_)
    expected = load_model("minilm").infer({"text": text})["embedding"]
    g_in = tgrpc.InferInput("text", [len(SENTENCES)], "BYTES")
    g_in.set_data_from_numpy(text)
    h_in = thttp.InferInput("text", [len(SENTENCES)], "BYTES")
    h_in.set_data_from_numpy(text, binary_data=True)
    for out in (
        grpc_client.infer("minilm", [g_in]).as_numpy("embedding"),
        http_client.infer("minilm", [h_in]).as_numpy("embedding"),
    ):
        assert out is not None and out.shape == (len(SENTENCES), 384)
        np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("model", "name", "shape", "output"),
    [
        ("mobilenet", "image", (2, 224, 224, 3), "probs"),
        ("yolo", "images", (1, 3, 640, 640), "output"),
    ],
)
def test_vision_models_equal_numpy_runtime(
    model: str,
    name: str,
    shape: tuple[int, ...],
    output: str,
    grpc_client: tgrpc.InferenceServerClient,
    http_client: thttp.InferenceServerClient,
) -> None:
    """Random weights from a fixed seed: the Triton instance computes what a local load does."""
    data = np.random.default_rng(2).random(shape, dtype=np.float32)
    expected = load_model(model).infer({name: data})[output]
    g_in = tgrpc.InferInput(name, list(shape), "FP32")
    g_in.set_data_from_numpy(data)
    h_in = thttp.InferInput(name, list(shape), "FP32")
    h_in.set_data_from_numpy(data, binary_data=True)
    for out in (
        grpc_client.infer(model, [g_in]).as_numpy(output),
        http_client.infer(model, [h_in]).as_numpy(output),
    ):
        assert out is not None and out.dtype == np.float32 and out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_vision_wrong_shape_is_rejected(grpc_client: tgrpc.InferenceServerClient) -> None:
    nchw = tgrpc.InferInput("image", [1, 3, 224, 224], "FP32")  # Triton checks fixed dims
    nchw.set_data_from_numpy(np.zeros((1, 3, 224, 224), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"(?i)shape") as err:
        grpc_client.infer("mobilenet", [nchw])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_bad_input_is_invalid_argument_and_model_keeps_serving(
    grpc_client: tgrpc.InferenceServerClient,
) -> None:
    bad = tgrpc.InferInput("text", [2], "BYTES")
    bad.set_data_from_numpy(np.array([b"fine", b"\xff\xfe"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="not valid UTF-8") as err:
        grpc_client.infer("minilm", [bad])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"

    wrong_dtype = tgrpc.InferInput("input", [1, 2], "INT64")  # Triton checks this itself
    wrong_dtype.set_data_from_numpy(np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(InferenceServerException, match=r"(?i)data-type|datatype"):
        grpc_client.infer("identity", [wrong_dtype])

    good = tgrpc.InferInput("text", [1], "BYTES")
    good.set_data_from_numpy(np.array([b"still alive"], dtype=np.object_))
    assert grpc_client.infer("minilm", [good]).as_numpy("embedding").shape == (1, 384)


# -- lifecycle -----------------------------------------------------------------------


FAILING_MODEL = """
from infergw.models.identity import Identity
from infergw.deploy.triton.python_model import TritonPythonModel as Adapter


class Failing(Identity):
    def _infer(self, inputs):
        raise RuntimeError("model exploded")


class TritonPythonModel(Adapter):
    def initialize(self, args):
        self.model = Failing("failing")
"""


def test_explicit_models_model_failure_and_clean_stop(tmp_path: Path) -> None:
    """Loads a subset, turns a crashing model into INTERNAL, and stop() leaves nothing behind."""
    repo = tmp_path / "repo"
    shutil.copytree(BUNDLED_REPOSITORY, repo, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "failing" / "1").mkdir(parents=True)
    (repo / "failing" / "1" / "model.py").write_text(FAILING_MODEL)
    config = (repo / "identity" / "config.pbtxt").read_text()
    (repo / "failing" / "config.pbtxt").write_text(
        config.replace('"identity"', '"failing"').replace("identity_model.py", "model.py")
    )
    triton = TritonServer(repo, models=["identity", "failing"])  # explicit model control
    with triton:
        pid, tmp = triton.pid, triton.log_path.parent if triton.log_path else None
        assert pid is not None and tmp is not None and tmp.is_dir()
        client = tgrpc.InferenceServerClient(triton.endpoints.grpc)
        assert client.is_model_ready("identity")
        assert not client.is_model_ready("minilm")
        request = tgrpc.InferInput("input", [1, 2], "FP32")
        request.set_data_from_numpy(np.ones((1, 2), dtype=np.float32))
        with pytest.raises(InferenceServerException, match="model exploded") as err:
            client.infer("failing", [request])
        assert err.value.status() == "StatusCode.INTERNAL"
        assert client.infer("identity", [request]).as_numpy("output").shape == (1, 2)
        client.close()
        assert len(live_group_members(pid)) == 5  # server + 2 stubs per model
    assert live_group_members(pid) == []
    assert processes_mentioning(str(tmp)) == []
    assert not tmp.exists()
    assert not list(Path("/dev/shm").glob(f"{tmp.name}-*"))
    triton.stop()  # idempotent


def test_failed_start_reports_log_tail_and_cleans_up(tmp_path: Path) -> None:
    broken = tmp_path / "repo" / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('backend: "python"\nthis is not pbtxt\n')
    triton = TritonServer(tmp_path / "repo", startup_timeout_s=60)
    with pytest.raises(TritonStartError, match="broken") as err:
        triton.start()
    assert "failed to read text proto" in str(err.value)
    assert "log tail:" in str(err.value)
    assert triton.pid is None and triton.log_path is None
    triton.stop()  # still safe
    assert processes_mentioning(str(tmp_path / "repo")) == []

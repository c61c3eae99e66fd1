"""Triton's control plane through the gateway answers as Triton does (issue 10).

Unmodified tritonclient (grpc and http) against the real Triton directly and through
the gateway, in the same test: statistics, repository index and model control, model
config, trace and log settings, system shared memory (gateway and Triton share this
host), server metadata, Triton's error texts and codes, and server reflection in both
versions. Where Triton defines the answer, the gateway's must be equal to it.
"""

from __future__ import annotations

import collections
import contextlib
import random
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from grpc_reflection.v1alpha import reflection_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from infergw.deploy.local.stack import local_config
from infergw.deploy.triton.launcher import TritonEndpoints, TritonServer
from infergw.gateway.core.config import parse_config
from infergw.gateway.frontends.control_grpc import REQUEST_SHAPES
from tests.integration.conftest import GatewayThread

pytestmark = pytest.mark.integration

MODELS = ["identity", "identity_int64"]
PIN = "x-infergw-backend"
INPUT = np.arange(12, dtype=np.float32).reshape(3, 4)
REFLECTION = [
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
]


@pytest.fixture(scope="module")
def triton() -> Iterator[TritonEndpoints]:
    # Explicit model control, so that loads and unloads are Triton's to accept.
    with TritonServer(models=MODELS) as server:
        yield server.endpoints


LISTEN = {"grpc_port": 0, "http_port": 0, "metrics_port": 0}


def gateway_for(triton: TritonEndpoints, **config: Any) -> GatewayThread:
    backend = {"kind": "triton", "url": triton.grpc, "http_url": f"http://{triton.http}"}
    doc: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": 0},
        "backends": {"triton": backend},
        "models": {"*": "triton"},
        **config,
    }
    return GatewayThread(parse_config(doc))


@pytest.fixture(scope="module")
def gateway(triton: TritonEndpoints) -> Iterator[GatewayThread]:
    """Every model to Triton through ``*``, model control allowed."""
    gw = gateway_for(triton, allow_model_control=True)
    try:
        yield gw
    finally:
        gw.close()


@pytest.fixture(scope="module")
def explicit(triton: TritonEndpoints) -> Iterator[GatewayThread]:
    """Only ``identity`` routed, by name; model control left at its default (off)."""
    gw = gateway_for(triton, models={"identity": "triton"})
    try:
        yield gw
    finally:
        gw.close()


@pytest.fixture(scope="module")
def two_tritons(triton: TritonEndpoints) -> Iterator[GatewayThread]:
    """Two Triton backends (the same server twice): server-wide calls need a choice."""
    backend = {"kind": "triton", "url": triton.grpc, "http_url": f"http://{triton.http}"}
    gw = gateway_for(triton, backends={"a": backend, "b": backend}, models={"*": "a"})
    try:
        yield gw
    finally:
        gw.close()


Clients = tuple[grpcclient.InferenceServerClient, httpclient.InferenceServerClient]


@contextlib.contextmanager
def clients(grpc_url: str, http_url: str) -> Iterator[Clients]:
    g, h = grpcclient.InferenceServerClient(grpc_url), httpclient.InferenceServerClient(http_url)
    try:
        yield g, h
    finally:
        g.close()
        h.close()


@pytest.fixture
def direct(triton: TritonEndpoints) -> Iterator[Clients]:
    with clients(triton.grpc, triton.http) as pair:
        yield pair


@pytest.fixture
def through(gateway: GatewayThread) -> Iterator[Clients]:
    with clients(gateway.grpc, gateway.http) as pair:
        yield pair


def error_of(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), info.value.message()


def infer_identity(g: grpcclient.InferenceServerClient, times: int = 3) -> None:
    tensor = grpcclient.InferInput("input", list(INPUT.shape), "FP32")
    tensor.set_data_from_numpy(INPUT)
    for _ in range(times):
        np.testing.assert_array_equal(g.infer("identity", [tensor]).as_numpy("output"), INPUT)


# -- statistics (item 2) ------------------------------------------------------------------


def test_statistics_are_triton_s_on_both_wires(direct: Clients, through: Clients) -> None:
    infer_identity(through[0])
    for model in ("identity", ""):
        assert through[0].get_inference_statistics(model, as_json=True) == direct[
            0
        ].get_inference_statistics(model, as_json=True)
        assert through[1].get_inference_statistics(model) == direct[1].get_inference_statistics(
            model
        )
    stats = through[1].get_inference_statistics("identity")["model_stats"][0]
    # The fields the gateway used to drop are there, as Triton sends them.
    assert {"batch_stats", "response_stats", "memory_usage"} <= stats.keys()
    assert stats["batch_stats"][0]["batch_size"] == 1
    grpc_stats = through[0].get_inference_statistics("identity", as_json=True)["model_stats"][0]
    assert {"cache_hit", "cache_miss"} <= grpc_stats["inference_stats"].keys()
    assert int(grpc_stats["batch_stats"][0]["compute_infer"]["count"]) >= 3


def test_all_model_statistics_keep_the_routed_models(
    direct: Clients, explicit: GatewayThread
) -> None:
    with clients(explicit.grpc, explicit.http) as (g, h):
        names = [s["name"] for s in g.get_inference_statistics("", as_json=True)["model_stats"]]
        assert names == ["identity"]
        assert h.get_inference_statistics()["model_stats"] == [
            direct[1].get_inference_statistics("identity")["model_stats"][0]
        ]


# -- repository index and model control (item 3) -------------------------------------------


def test_repository_index_lists_the_backend_s_models(direct: Clients, through: Clients) -> None:
    index = through[1].get_model_repository_index()
    assert index == direct[1].get_model_repository_index()
    assert {"name": "identity", "version": "1", "state": "READY"} in index
    assert through[0].get_model_repository_index(as_json=True) == direct[
        0
    ].get_model_repository_index(as_json=True)


def test_repository_index_of_explicit_routes(explicit: GatewayThread) -> None:
    with clients(explicit.grpc, explicit.http) as (g, h):
        assert h.get_model_repository_index() == [
            {"name": "identity", "version": "1", "state": "READY"}
        ]
        assert [m["name"] for m in g.get_model_repository_index(as_json=True)["models"]] == [
            "identity"
        ]


def test_load_and_unload_are_forwarded(direct: Clients, through: Clients) -> None:
    g, h = through
    try:
        g.unload_model("identity_int64")
        assert not direct[0].is_model_ready("identity_int64")
        h.load_model("identity_int64")
        assert direct[0].is_model_ready("identity_int64")
        h.unload_model("identity_int64")
        assert not direct[1].is_model_ready("identity_int64")
        g.load_model("identity_int64")
        assert direct[1].is_model_ready("identity_int64")
    finally:
        direct[0].load_model("identity_int64")
    # Triton's own refusal comes back as Triton words it.
    assert error_of(lambda: g.load_model("nope")) == error_of(lambda: direct[0].load_model("nope"))
    assert error_of(lambda: h.load_model("nope")) == error_of(lambda: direct[1].load_model("nope"))


def test_model_control_is_off_unless_configured(direct: Clients, explicit: GatewayThread) -> None:
    with clients(explicit.grpc, explicit.http) as (g, h):
        status, message = error_of(lambda: g.unload_model("identity"))
        assert status == "StatusCode.FAILED_PRECONDITION"
        assert "allow_model_control" in message
        status, message = error_of(lambda: h.unload_model("identity"))
        assert status == "400"
        assert "allow_model_control" in message
    assert direct[0].is_model_ready("identity")


# -- model config, trace and log settings, shared memory (item 4) ----------------------------


def test_model_config_is_triton_s(direct: Clients, through: Clients) -> None:
    assert through[0].get_model_config("identity", as_json=True) == direct[0].get_model_config(
        "identity", as_json=True
    )
    assert through[1].get_model_config("identity") == direct[1].get_model_config("identity")
    for ours, theirs in zip(through, direct, strict=True):
        assert error_of(partial(ours.get_model_config, "nope")) == error_of(
            partial(theirs.get_model_config, "nope")
        )


def test_trace_settings_of_a_model_and_of_the_server(direct: Clients, through: Clients) -> None:
    g, h = through
    assert g.get_trace_settings(as_json=True) == direct[0].get_trace_settings(as_json=True)
    assert h.get_trace_settings() == direct[1].get_trace_settings()
    try:
        h.update_trace_settings("identity", {"trace_rate": "7"})
        assert direct[0].get_trace_settings("identity", as_json=True)["settings"]["trace_rate"] == {
            "value": ["7"]
        }
        assert g.get_trace_settings("identity", as_json=True) == direct[0].get_trace_settings(
            "identity", as_json=True
        )
    finally:
        direct[1].update_trace_settings("identity", {"trace_rate": None})


def test_log_settings(direct: Clients, through: Clients) -> None:
    g, h = through
    assert g.get_log_settings(as_json=True) == direct[0].get_log_settings(as_json=True)
    try:
        g.update_log_settings({"log_verbose_level": 1})
        assert direct[1].get_log_settings()["log_verbose_level"] == 1
        assert h.get_log_settings() == direct[1].get_log_settings()
    finally:
        direct[1].update_log_settings({"log_verbose_level": 0})


def released(unregister: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Unregister once Triton lets go: it releases a region a little after the response
    ("currently in use" until then), direct as through the gateway."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            unregister()
            return
        except InferenceServerException as exc:
            if "in use" not in exc.message() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_system_shared_memory_infer_as_triton_s_example(direct: Clients, through: Clients) -> None:
    """simple_grpc_shm_client.py's steps, through the gateway, on the identity model."""
    g, h = through
    size = INPUT.nbytes
    tag = f"infergw-parity-{id(g):x}"
    inp = shm.create_shared_memory_region("in", f"/{tag}-in", size)
    out = shm.create_shared_memory_region("out", f"/{tag}-out", size)
    try:
        shm.set_shared_memory_region(inp, [INPUT])
        g.register_system_shared_memory("in", f"/{tag}-in", size)
        h.register_system_shared_memory("out", f"/{tag}-out", size)
        assert g.get_system_shared_memory_status(as_json=True) == direct[
            0
        ].get_system_shared_memory_status(as_json=True)
        assert sorted(r["name"] for r in h.get_system_shared_memory_status()) == ["in", "out"]
        tensor = grpcclient.InferInput("input", list(INPUT.shape), "FP32")
        tensor.set_shared_memory("in", size)
        wanted = grpcclient.InferRequestedOutput("output")
        wanted.set_shared_memory("out", size)
        result = g.infer("identity", [tensor], outputs=[wanted])
        output = result.get_output("output")
        assert list(output.shape) == list(INPUT.shape)
        got = shm.get_contents_as_numpy(out, np.float32, INPUT.shape)
        np.testing.assert_array_equal(got, INPUT)
        released(lambda: h.unregister_system_shared_memory("in"))  # through the gateway,
        released(lambda: g.unregister_system_shared_memory("out"))  # on both wires
        assert h.get_system_shared_memory_status() == []
    finally:
        with contextlib.suppress(InferenceServerException):  # a failed test's leftovers
            direct[0].unregister_system_shared_memory()
        shm.destroy_shared_memory_region(inp)
        shm.destroy_shared_memory_region(out)
    assert g.get_cuda_shared_memory_status(as_json=True) == direct[0].get_cuda_shared_memory_status(
        as_json=True
    )


def test_system_shared_memory_infer_over_rest(
    direct: Clients, through: Clients, gateway: GatewayThread, triton: TritonEndpoints
) -> None:
    """simple_http_shm_client.py's steps through the gateway's REST port: the input is read
    from a region, the output written to one, the body carries neither."""
    _, h = through
    size = INPUT.nbytes
    tag = f"infergw-parity-rest-{id(h):x}"
    inp = shm.create_shared_memory_region("rin", f"/{tag}-in", size)
    out = shm.create_shared_memory_region("rout", f"/{tag}-out", size)
    try:
        shm.set_shared_memory_region(inp, [INPUT])
        h.register_system_shared_memory("rin", f"/{tag}-in", size)
        h.register_system_shared_memory("rout", f"/{tag}-out", size)
        tensor = httpclient.InferInput("input", list(INPUT.shape), "FP32")
        tensor.set_shared_memory("rin", size)
        wanted = httpclient.InferRequestedOutput("output", binary_data=True)
        wanted.set_shared_memory("rout", size)
        result = h.infer("identity", [tensor], outputs=[wanted])
        output = result.get_output("output")
        assert output is not None and output["shape"] == list(INPUT.shape)
        assert "data" not in output
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(out, np.float32, INPUT.shape), INPUT
        )
        # The same mistake, the same answer as direct: data given as well as a region.
        region = {"shared_memory_region": "rin", "shared_memory_byte_size": size}
        both = {"name": "input", "datatype": "FP32", "shape": list(INPUT.shape)}
        body = {"inputs": [{**both, "parameters": region, "data": INPUT.ravel().tolist()}]}
        answers = [
            requests.post(f"http://{url}/v2/models/identity/infer", json=body, timeout=30)
            for url in (gateway.http, triton.http)
        ]
        assert [a.status_code for a in answers] == [400, 400]
        assert answers[0].json() == answers[1].json()
        released(lambda: h.unregister_system_shared_memory("rin"))
        released(lambda: h.unregister_system_shared_memory("rout"))
    finally:
        with contextlib.suppress(InferenceServerException):
            direct[1].unregister_system_shared_memory()
        shm.destroy_shared_memory_region(inp)
        shm.destroy_shared_memory_region(out)


def test_server_wide_calls_need_a_choice_of_backend(two_tritons: GatewayThread) -> None:
    with clients(two_tritons.grpc, two_tritons.http) as (g, h):
        status, message = error_of(lambda: g.get_log_settings())
        assert status == "StatusCode.FAILED_PRECONDITION"
        assert "'a', 'b'" in message and PIN in message
        status, message = error_of(lambda: h.get_system_shared_memory_status())
        assert status == "400" and "'a', 'b'" in message
        assert "log_info" in g.get_log_settings(headers={PIN: "b"}, as_json=True)["settings"]
        assert h.get_trace_settings(headers={PIN: "a"})["trace_mode"] == "triton"
        # Calls about one model follow its route: no choice to make.
        assert h.get_model_config("identity")["name"] == "identity"


def test_rest_control_without_http_url_names_the_option(triton: TritonEndpoints) -> None:
    gw = GatewayThread(local_config(triton.grpc, LISTEN))  # no triton_http: no http_url
    try:
        with clients(gw.grpc, gw.http) as (g, h):
            status, message = error_of(lambda: h.get_model_config("identity"))
            assert status == "400" and "http_url" in message
            assert g.get_model_config("identity").config.name == "identity"  # gRPC forwards
            # Statistics still answer, through the backend contract.
            (entry,) = h.get_inference_statistics("identity")["model_stats"]
            assert entry["name"] == "identity"
    finally:
        gw.close()


# -- server metadata (item 5) -----------------------------------------------------------------


def test_server_metadata_names_the_gateway_and_triton_s_extensions(
    direct: Clients, through: Clients
) -> None:
    triton_extensions = direct[1].get_server_metadata()["extensions"]
    for meta in (through[1].get_server_metadata(), through[0].get_server_metadata(as_json=True)):
        assert meta["name"] == "infergw"
        assert set(triton_extensions) <= set(meta["extensions"])
        assert "server_timing" in meta["extensions"]


# -- error texts and codes (item 7) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("contents", "raw", "text"),
    [
        (True, 1, "contents field must not be specified when using raw_input_contents for"),
        (False, 0, "unable to find data for input tensor 'input' for model 'identity'"),
    ],
    ids=["contents-and-raw", "no-data"],
)
def test_input_data_errors_are_triton_s(
    triton: TritonEndpoints, gateway: GatewayThread, contents: bool, raw: int, text: str
) -> None:
    request = service_pb2.ModelInferRequest(model_name="identity")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    if contents:
        tensor.contents.fp32_contents.extend([1.0, 2.0])
    request.raw_input_contents.extend([np.zeros(2, np.float32).tobytes()] * raw)
    answers = []
    for url in (triton.grpc, gateway.grpc):
        with grpc.insecure_channel(url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, timeout=10)
            answers.append((info.value.code(), info.value.details()))
    assert answers[0] == answers[1]
    assert answers[1][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert text in answers[1][1]


def test_unknown_model_and_bad_version_are_answered_as_triton_does(
    direct: Clients, through: Clients
) -> None:
    for ours, theirs in zip(through, direct, strict=True):
        # The model is checked before the (missing) inputs: 404, not 400.
        assert error_of(partial(ours.infer, "nope", [])) == error_of(
            partial(theirs.infer, "nope", [])
        )
        assert error_of(partial(ours.infer, "identity", [], model_version="7")) == error_of(
            partial(theirs.infer, "identity", [], model_version="7")
        )
    assert error_of(lambda: through[1].infer("identity", [], model_version="abc"))[0] == "404"
    assert error_of(lambda: through[0].infer("identity", [], model_version="abc")) == error_of(
        lambda: direct[0].infer("identity", [], model_version="abc")
    )


def test_unknown_model_without_a_route_is_404_before_inputs(explicit: GatewayThread) -> None:
    with clients(explicit.grpc, explicit.http) as (g, h):
        assert error_of(lambda: g.infer("nope", []))[0] == "StatusCode.NOT_FOUND"
        assert error_of(lambda: h.infer("nope", []))[0] == "404"


def test_malformed_control_requests_are_invalid_argument(gateway: GatewayThread) -> None:
    """Triton answers INTERNAL to bytes it cannot parse; the gateway, the client's error."""
    rng = random.Random(10)
    seen: collections.Counter[str] = collections.Counter()
    with grpc.insecure_channel(gateway.grpc) as channel:
        for method in REQUEST_SHAPES:
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            for size in range(1, 16):
                with pytest.raises(grpc.RpcError) as info:
                    # A string field cut short, or bytes that are not UTF-8.
                    call(b"\x0a" + bytes([size + 1]) + rng.randbytes(size), timeout=10)
                seen[info.value.code().name] += 1
    assert set(seen) == {"INVALID_ARGUMENT"}, seen


# -- server reflection (item 8) ----------------------------------------------------------------


@pytest.mark.parametrize("method", REFLECTION)
def test_reflection_answers_both_versions_the_same_every_time(
    gateway: GatewayThread, method: str
) -> None:
    list_services = reflection_pb2.ServerReflectionRequest(list_services="")
    describe_v1 = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="grpc.reflection.v1.ServerReflection"
    )
    answers = set()
    with grpc.insecure_channel(gateway.grpc) as channel:
        call = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        for _ in range(10):
            replies = list(call(iter([list_services, describe_v1]), timeout=10))
            services = tuple(s.name for s in replies[0].list_services_response.service)
            described = replies[1].WhichOneof("message_response")
            answers.add((services, described))
    assert answers == {
        (
            (
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
                "inference.GRPCInferenceService",
                "tensorflow.serving.PredictionService",
            ),
            "file_descriptor_response",
        )
    }

"""SageMaker backend against the local SageMaker Serverless stand-in running our container.

Everything is real on 127.0.0.1: the stand-in speaks InvokeEndpoint, aiobotocore signs
with dummy credentials, every instance is a ``serve`` process that loads the models.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from infergw.backends.sagemaker import SERVERLESS_MAX_PAYLOAD, SageMakerBackend
from infergw.deploy.local.instances import READY_PREFIX
from infergw.deploy.local.sagemaker_standin import (
    ENDPOINT_CONFIG,
    SageMakerStandIn,
    ServerlessEndpoint,
    container_command,
)
from infergw.gateway.core.context import RequestContext
from infergw.models.registry import load_model
from infergw.vocab.datatypes import tensor_from_numpy, tensor_to_numpy
from infergw.vocab.errors import (
    BackendError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    ResourceExhausted,
)
from infergw.vocab.types import InferRequest
from infergw.wire import sagemaker as wire
from infergw.wire.oip_json import encode_infer_request

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

MODELS = ("identity", "minilm")
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
SENTENCES = [b"The quick brown fox jumps over the lazy dog, again and again."] * 16


@pytest.fixture(scope="module", autouse=True)
def aws_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in AWS_ENV.items():
            mp.setenv(key, value)
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def standin() -> AsyncIterator[SageMakerStandIn]:
    server = SageMakerStandIn(
        [
            ServerlessEndpoint.from_endpoint_config(
                "infergw", json.loads(ENDPOINT_CONFIG.read_text()), models=MODELS
            ),
            ServerlessEndpoint("solo", MODELS, max_concurrency=1),
            ServerlessEndpoint("crash", MODELS, max_concurrency=1),
            ServerlessEndpoint("tight", ("minilm",), max_concurrency=1, invocation_timeout_s=0.3),
        ]
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def backend_for(standin: SageMakerStandIn, endpoint: str = "infergw", **options: object):  # type: ignore[no-untyped-def]
    return SageMakerBackend.from_config(
        "sagemaker",
        {"endpoint_name": endpoint, "endpoint_url": standin.endpoint, **options},
    )


def request_for(model: str, array: np.ndarray) -> InferRequest:
    name = "text" if model == "minilm" else "input"
    return InferRequest(model=model, inputs=(tensor_from_numpy(name, array),))


def example(model: str) -> np.ndarray:
    if model == "minilm":
        return np.array([b"hello world", "Grüße aus Köln".encode(), b""], dtype=object)
    return np.arange(12, dtype=np.float32).reshape(3, 4)


async def infer(backend: SageMakerBackend, request: InferRequest) -> tuple[dict, RequestContext]:  # type: ignore[type-arg]
    ctx = RequestContext(protocol="test")
    ctx.with_timeout(60)
    response = await backend.infer(request, ctx)
    return {t.name: tensor_to_numpy(t) for t in response.outputs}, ctx


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_outputs_match_the_model_run_locally(standin: SageMakerStandIn, binary: bool) -> None:
    backend = backend_for(standin, binary=binary)
    try:
        for model in MODELS:
            array = example(model)
            outputs, ctx = await infer(backend, request_for(model, array))
            key = "text" if model == "minilm" else "input"
            expected = load_model(model).infer({key: array})
            assert outputs.keys() == expected.keys()
            for name, value in expected.items():
                np.testing.assert_allclose(outputs[name], value, rtol=1e-6, atol=1e-7)
                assert outputs[name].dtype == value.dtype
            assert ctx.timings.get("compute") is not None
    finally:
        await backend.close()


async def test_payload_over_4mb_is_refused_before_any_call(standin: SageMakerStandIn) -> None:
    big = request_for("identity", np.zeros((1100, 1000), dtype=np.float32))  # 4.4 MB
    nowhere = SageMakerBackend.from_config(
        "sm", {"endpoint_name": "infergw", "endpoint_url": "http://127.0.0.1:9"}
    )
    with pytest.raises(PayloadTooLarge, match=f"exceeds the limit of {SERVERLESS_MAX_PAYLOAD}"):
        await nowhere.infer(big, RequestContext(protocol="test"))
    await nowhere.close()
    # The stand-in refuses it too, with the service's own error, mapped to the same class.
    backend = backend_for(standin)
    backend.max_payload_bytes = 8 * SERVERLESS_MAX_PAYLOAD
    try:
        with pytest.raises(PayloadTooLarge, match="limit of 4194304"):
            await infer(backend, big)
    finally:
        await backend.close()


async def test_first_request_after_scale_to_zero_reports_coldstart(
    standin: SageMakerStandIn,
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{standin.endpoint}/_infergw/endpoints/infergw/scale-to-zero") as r,
    ):
        assert r.status == 200
    assert standin.pools["infergw"].stats()["instances"] == 0
    backend = backend_for(standin)
    try:
        request = request_for("identity", example("identity"))
        _, first = await infer(backend, request)
        _, second = await infer(backend, request)
    finally:
        await backend.close()
    coldstart = first.timings.get("coldstart")
    assert coldstart is not None and coldstart > 50  # a real process start + model load
    assert second.timings.get("coldstart") is None
    assert first.timings.get("compute") is not None and second.timings.get("compute") is not None


async def test_over_max_concurrency_is_throttled_not_queued(standin: SageMakerStandIn) -> None:
    backend = backend_for(standin, "solo")
    slow = request_for("minilm", np.array(SENTENCES, dtype=object))
    try:
        await infer(backend, request_for("identity", example("identity")))  # warm: no cold wait
        async with asyncio.timeout(60):
            results = await asyncio.gather(
                *(infer(backend, slow) for _ in range(3)), return_exceptions=True
            )
    finally:
        await backend.close()
    throttled = [r for r in results if isinstance(r, ResourceExhausted)]
    served = [r for r in results if isinstance(r, tuple)]
    assert len(served) >= 1 and len(throttled) >= 1, results
    assert len(served) + len(throttled) == 3, results
    assert "throttled" in throttled[0].message
    assert getattr(throttled[0], "retry_after_s", 0) > 0


async def test_container_killed_mid_request_is_a_clear_error(standin: SageMakerStandIn) -> None:
    backend = backend_for(standin, "crash")
    pool = standin.pools["crash"]
    try:
        await infer(backend, request_for("identity", example("identity")))  # warm
        victim = pool.instances[0]
        task = asyncio.create_task(infer(backend, request_for("minilm", np.array(SENTENCES))))
        for _ in range(200):  # bounded: until the request is inside the container
            if victim.in_flight:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        victim.process.kill()
        with pytest.raises(BackendError, match="closed the connection"):
            await asyncio.wait_for(task, 30)
        outputs, ctx = await infer(backend, request_for("identity", example("identity")))
        np.testing.assert_array_equal(outputs["output"], example("identity"))
        assert ctx.timings.get("coldstart") is not None  # a fresh instance
        assert victim not in pool.instances
    finally:
        await backend.close()


async def test_container_timeout_is_deadline_exceeded(standin: SageMakerStandIn) -> None:
    backend = backend_for(standin, "tight")
    try:
        with pytest.raises(DeadlineExceeded, match="did not answer in time"):
            await infer(backend, request_for("minilm", np.array(SENTENCES * 4)))
    finally:
        await backend.close()


async def test_bad_input_is_the_containers_message(standin: SageMakerStandIn) -> None:
    backend = backend_for(standin)
    wrong = InferRequest(
        model="identity",
        inputs=(tensor_from_numpy("nope", np.zeros((1, 2), dtype=np.float32)),),
    )
    unknown = request_for("yolo", np.zeros((1, 2), dtype=np.float32))
    try:
        with pytest.raises(InvalidArgument, match="unexpected input"):
            await infer(backend, wrong)
        with pytest.raises(NotFound, match="unknown model: 'yolo'"):
            await infer(backend, unknown)
    finally:
        await backend.close()


async def test_unknown_endpoint_is_not_found(standin: SageMakerStandIn) -> None:
    backend = backend_for(standin, "missing")
    try:
        with pytest.raises(NotFound, match="Endpoint missing of account 123456789012 not found"):
            await infer(backend, request_for("identity", example("identity")))
    finally:
        await backend.close()


async def test_unsigned_requests_are_refused(standin: SageMakerStandIn) -> None:
    body, _ = encode_infer_request(request_for("identity", example("identity")), False, False)
    url = f"{standin.endpoint}/endpoints/infergw/invocations"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 403
            assert r.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        bogus = {"Authorization": "Bearer abc", "Content-Type": "application/json"}
        async with http.post(url, data=body, headers=bogus) as r:
            assert r.status == 403
            assert r.headers["x-amzn-ErrorType"] == "IncompleteSignatureException"


async def test_container_directly() -> None:
    process = await asyncio.create_subprocess_exec(
        *container_command(["identity"]),
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(60):
            line = await process.stdout.readline()
        assert line.startswith(READY_PREFIX), line
        base = f"http://127.0.0.1:{int(line[len(READY_PREFIX) :])}"
        request = request_for("identity", example("identity"))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/ping") as r:
                assert r.status == 200
            body, length = encode_infer_request(request, True, True)
            headers = {"Content-Type": wire.content_type(length)}
            async with http.post(f"{base}/invocations", data=body, headers=headers) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith(wire.BINARY_CONTENT_TYPE)
                timing = wire.parse_timing_attribute(r.headers.get(wire.CUSTOM_ATTRIBUTES))
                assert {e.name for e in timing} == {"coldstart", "compute"}
            body, _ = encode_infer_request(request, False, False)
            json_headers = {"Content-Type": "application/json"}
            async with http.post(f"{base}/invocations", data=body, headers=json_headers) as r:
                assert r.status == 200 and r.content_type == "application/json"
                doc = await r.json()
                assert doc["outputs"][0]["data"] == example("identity").ravel().tolist()
                timing = wire.parse_timing_attribute(r.headers.get(wire.CUSTOM_ATTRIBUTES))
                assert [e.name for e in timing] == ["compute"]
            async with http.post(
                f"{base}/invocations", data=b"{not json", headers=json_headers
            ) as r:
                assert r.status == 400 and "malformed JSON" in (await r.json())["error"]
            bad_size = {"Content-Type": f"{wire.BINARY_CONTENT_TYPE};json-header-size=99999"}
            async with http.post(f"{base}/invocations", data=b"{}", headers=bad_size) as r:
                assert r.status == 400 and "json-header-size" in (await r.json())["error"]
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(10):
            await process.wait()

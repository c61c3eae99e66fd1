"""LambdaBackend against the local Lambda stand-in and a real S3 (moto_server).

The stand-in runs our real handler in worker processes (cold start = process start
+ model load); S3 offload goes to moto's standalone server. Every process is
stopped at the end of the module, also when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import numpy as np
import pytest
import pytest_asyncio

from infergw.backends.aws_lambda import LambdaBackend
from infergw.deploy.local.lambda_standin import FunctionConfig, LambdaStandIn, scale_to_zero_url
from infergw.deploy.local.s3 import MotoS3
from infergw.gateway.core.config import BackendConfig, RetryConfig
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.policies import build_stack
from infergw.models import load_model
from infergw.vocab.datatypes import tensor_from_numpy, tensor_to_numpy
from infergw.vocab.errors import (
    BackendError,
    DeadlineExceeded,
    InvalidArgument,
    PayloadTooLarge,
    QueueFull,
    Throttled,
    Unavailable,
)
from infergw.vocab.types import InferRequest
from tests.integration.aws import fake_aws_env

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

BUCKET = "infergw-offload"
REPO = Path(__file__).resolve().parents[2]
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def rogue_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A misbehaving function (runs in a stand-in worker): its mode is the model name."""
    mode = event["model"]
    if mode == "sleep":
        time.sleep(30)
    if mode == "escape":  # points the gateway at an object it does not own
        ref = {"bucket": BUCKET, "key": "elsewhere/secret"}
        return {"outputs": [{"name": "o", "datatype": "UINT8", "shape": [1], "s3": ref}]}
    if mode == "write_then_fail":
        target = event["output_s3"]
        s3 = boto3.client("s3")
        s3.put_object(Bucket=target["bucket"], Key=target["prefix"] + "partial", Body=b"x")
        raise RuntimeError("failed after writing an output")
    return {"outputs": []}


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    with fake_aws_env(CREDS):
        yield


@pytest.fixture(scope="module")
def s3(aws_env: None) -> Iterator[MotoS3]:
    with MotoS3(buckets=[BUCKET]) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def standin(s3: MotoS3) -> AsyncIterator[LambdaStandIn]:
    env = {**CREDS, "AWS_ENDPOINT_URL_S3": s3.endpoint, "INFERGW_MODELS": "identity,minilm"}
    rogue_env = {**env, "PYTHONPATH": str(REPO)}
    functions = [
        FunctionConfig("models", env=env, timeout_s=30),
        FunctionConfig(
            "throttled", env={**env, "INFERGW_MODELS": "identity"}, reserved_concurrency=1
        ),
        FunctionConfig("broken", handler="infergw.deploy.lambda.handler.nope", env=env),
        FunctionConfig(
            "rogue",
            handler="tests.integration.test_lambda.rogue_handler",
            env=rogue_env,
            timeout_s=2,
        ),
    ]
    async with LambdaStandIn(functions) as server:
        yield server


def backend(standin: LambdaStandIn, s3: MotoS3 | None, **options: Any) -> LambdaBackend:
    config: dict[str, Any] = {"function_name": "models", "endpoint_url": standin.endpoint}
    if s3 is not None:
        config.update(s3_bucket=BUCKET, s3_endpoint_url=s3.endpoint)
    return LambdaBackend.from_config("lambda", {**config, **options})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lam(standin: LambdaStandIn, s3: MotoS3) -> AsyncIterator[LambdaBackend]:
    b = backend(standin, s3)
    try:
        yield b
    finally:
        await b.close()


def bucket_keys(s3: MotoS3, prefix: str = "") -> list[str]:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def identity_request(shape: tuple[int, int], model: str = "identity") -> InferRequest:
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    return InferRequest(model, (tensor_from_numpy("input", x),), id="t")


def ctx(timeout_s: float = 30.0) -> RequestContext:
    c = RequestContext(protocol="test")
    c.with_timeout(timeout_s)
    return c


async def test_identity_and_minilm_match_the_model_run_directly(lam: LambdaBackend) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    text = np.array([b"The quick brown fox", b"jumps over the lazy dog"], dtype=np.object_)
    for model, name, array in (("identity", "input", x), ("minilm", "text", text)):
        c = ctx()
        reply = await lam.infer(InferRequest(model, (tensor_from_numpy(name, array),)), c)
        expected = load_model(model).infer({name: array})
        (out,) = reply.outputs
        np.testing.assert_allclose(tensor_to_numpy(out), expected[out.name], rtol=1e-6, atol=1e-6)
        assert c.timings.get("compute") is not None and c.timings.get("offload") is None
        assert reply.parameters["lambda.billed_ms"] >= 1


async def test_large_input_and_output_travel_through_s3_and_nothing_remains(
    lam: LambdaBackend, s3: MotoS3
) -> None:
    request = identity_request((1, 2_000_000))  # 8 MB in, 8 MB out: both over 6 MB
    c = ctx()
    reply = await lam.infer(request, c)
    assert bytes(reply.outputs[0].data) == bytes(request.inputs[0].data)
    assert c.timings.get("offload") is not None
    assert bucket_keys(s3) == []


async def test_first_invoke_after_scale_to_zero_is_cold_then_warm(
    lam: LambdaBackend, standin: LambdaStandIn
) -> None:
    url = scale_to_zero_url(standin.endpoint, "models")
    async with aiohttp.ClientSession() as http, http.post(url) as resp:
        assert resp.status == 200
    cold, warm = ctx(), ctx()
    await lam.infer(identity_request((1, 4)), cold)
    await lam.infer(identity_request((1, 4)), warm)
    assert (cold.timings.get("coldstart") or 0) > 50  # a process start and a model load
    assert warm.timings.get("coldstart") is None


async def test_function_errors_carry_the_functions_message(lam: LambdaBackend, s3: MotoS3) -> None:
    with pytest.raises(InvalidArgument, match="unexpected input"):
        bad = InferRequest("identity", (tensor_from_numpy("nope", np.zeros((1, 1), np.float32)),))
        await lam.infer(bad, ctx())
    # yolo's 4.9 MB input is offloaded first; the function does not serve yolo.
    yolo = InferRequest(
        "yolo", (tensor_from_numpy("images", np.zeros((1, 3, 640, 640), np.float32)),)
    )
    with pytest.raises(BackendError, match="'yolo' is not served by this function"):
        await lam.infer(yolo, ctx())
    assert bucket_keys(s3) == []


async def test_init_failure_is_a_function_error(standin: LambdaStandIn) -> None:
    b = backend(standin, None, function_name="broken")
    try:
        with pytest.raises(BackendError, match=r"HandlerNotFound.*Handler 'nope' missing"):
            await b.infer(identity_request((1, 4)), ctx())
    finally:
        await b.close()


async def test_objects_written_before_a_failure_are_removed(
    standin: LambdaStandIn, s3: MotoS3
) -> None:
    b = backend(standin, s3, function_name="rogue")
    try:
        with pytest.raises(BackendError, match="failed after writing an output"):
            await b.infer(identity_request((1, 4), "write_then_fail"), ctx())
    finally:
        await b.close()
    assert bucket_keys(s3) == []


async def test_reference_outside_the_offload_prefix_is_refused(
    standin: LambdaStandIn, s3: MotoS3
) -> None:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    client.put_object(Bucket=BUCKET, Key="elsewhere/secret", Body=b"s")
    b = backend(standin, s3, function_name="rogue")
    try:
        with pytest.raises(BackendError, match="outside the gateway's offload"):
            await b.infer(identity_request((1, 4), "escape"), ctx())
        assert bucket_keys(s3) == ["elsewhere/secret"]  # neither read nor deleted
    finally:
        await b.close()
        client.delete_object(Bucket=BUCKET, Key="elsewhere/secret")


async def test_throttling_storm_is_mapped_or_retried_and_nothing_hangs(
    standin: LambdaStandIn,
) -> None:
    async with aiohttp.ClientSession() as http:
        await http.post(scale_to_zero_url(standin.endpoint, "throttled"))
    plain = backend(standin, None, function_name="throttled")
    # The stack a configured backend gets; `retry:` adds the Retry policy to it.
    retry = RetryConfig(max_retries=8, base_ms=50.0, max_ms=2000.0)
    patient = build_stack(
        backend(standin, None, function_name="throttled"),
        BackendConfig(name="lambda", kind="lambda", retry=retry),
    )
    contexts = [ctx(15) for _ in range(6)]
    try:
        async with asyncio.timeout(30):
            first = await asyncio.gather(
                *(plain.infer(identity_request((1, 4)), ctx()) for _ in range(6)),
                return_exceptions=True,
            )
            second = await asyncio.gather(
                *(patient.infer(identity_request((1, 4)), c) for c in contexts),
                return_exceptions=True,
            )
    finally:
        await plain.close()
        await patient.close()
    throttled = [r for r in first if isinstance(r, QueueFull)]
    assert throttled and all(isinstance(r, QueueFull) or hasattr(r, "outputs") for r in first)
    assert "throttled" in throttled[0].message and throttled[0].retry_after_s > 0
    assert all(isinstance(r, Throttled) for r in throttled)  # retryable, unlike admission's
    assert all(isinstance(r, QueueFull) or hasattr(r, "outputs") for r in second)
    retried = [r for r in second if not isinstance(r, BaseException)]
    assert any(r.parameters.get("lambda.throttled_retries", 0) > 0 for r in retried)
    for reply, c in zip(second, contexts, strict=True):
        if isinstance(reply, BaseException) or not reply.parameters.get("lambda.throttled_retries"):
            continue
        retries = int(reply.parameters["lambda.throttled_retries"])
        # each try its own backend entry; the waits one queue entry with the count
        attempts = [e.description for e in c.timings.entries if e.name == "backend"]
        assert attempts == [f"backend=lambda;attempt={n}" for n in range(1, retries + 2)]
        assert f"backend=lambda;throttled={retries}" in [e.description for e in c.timings.entries]


async def test_payload_over_the_limit_without_offload_is_413(standin: LambdaStandIn) -> None:
    b = backend(standin, None)
    try:
        with pytest.raises(PayloadTooLarge, match="6291456"):
            await b.infer(identity_request((1, 2_000_000)), ctx())
    finally:
        await b.close()


async def test_s3_down_during_offload_is_unavailable_and_leaves_nothing(
    standin: LambdaStandIn, s3: MotoS3
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once closed
    b = LambdaBackend.from_config(
        "lambda",
        {
            "function_name": "models",
            "endpoint_url": standin.endpoint,
            "s3_bucket": BUCKET,
            "s3_endpoint_url": dead,
        },
    )
    try:
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match="cannot reach AWS"):
            await b.infer(identity_request((1, 2_000_000)), ctx())
        assert time.monotonic() - t0 < 10
    finally:
        await b.close()
    assert bucket_keys(s3) == []


async def test_unsigned_requests_and_unknown_functions_are_refused(
    standin: LambdaStandIn,
) -> None:
    url = f"{standin.endpoint}/2015-03-31/functions/models/invocations"
    async with aiohttp.ClientSession() as http, http.post(url, data=b"{}") as resp:
        assert resp.status == 403
        assert (await resp.json())["message"] == "Missing Authentication Token"
    b = backend(standin, None, function_name="no-such-function")
    try:
        with pytest.raises(Unavailable, match="ResourceNotFoundException"):
            await b.infer(identity_request((1, 4)), ctx())
    finally:
        await b.close()


async def test_function_timeout_and_killed_environment_then_recovery(
    standin: LambdaStandIn,
) -> None:
    b = backend(standin, None, function_name="rogue")
    try:
        with pytest.raises(DeadlineExceeded, match=r"Task timed out after 2\.00 seconds"):
            await b.infer(identity_request((1, 4), "sleep"), ctx())

        call = asyncio.create_task(b.infer(identity_request((1, 4), "sleep"), ctx()))
        pool = standin.pools["rogue"]
        async with asyncio.timeout(10):
            while not any(i.in_flight for i in pool.instances):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        busy = next(i for i in pool.instances if i.in_flight)
        os.kill(busy.process.pid, signal.SIGKILL)
        with pytest.raises(BackendError, match="Runtime exited with error"):
            await asyncio.wait_for(call, 10)

        after = ctx()
        reply = await b.infer(identity_request((1, 4), "ok"), after)
        assert reply.outputs == () and after.timings.get("coldstart") is not None
    finally:
        await b.close()

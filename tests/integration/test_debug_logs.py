"""``infergw -v`` never prints credentials, signatures, tokens or payload bytes.

The Lambda backend (direct and through S3 offload) and the SageMaker backend (binary
and JSON bodies) run against the local stand-ins with fake credentials, a session
token among them, while the logging setup of ``infergw -v`` captures every logger at
DEBUG: botocore prints the signed requests and the bodies there. None of the
credential strings, no signature and no payload may reach the output.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
import pytest_asyncio

from infergw.backends.aws_lambda import LambdaBackend
from infergw.backends.sagemaker import SageMakerBackend
from infergw.deploy.local.lambda_standin import FunctionConfig, LambdaStandIn
from infergw.deploy.local.s3 import MotoS3
from infergw.deploy.local.sagemaker_standin import (
    ENDPOINT_CONFIG,
    SageMakerStandIn,
    ServerlessEndpoint,
)
from infergw.gateway import logs
from infergw.gateway.core.context import RequestContext
from infergw.vocab.datatypes import tensor_from_numpy
from infergw.vocab.types import InferRequest
from tests.integration.aws import fake_aws_env

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

BUCKET = "infergw-logs"
# Shaped like real ones, so that nothing passes for looking fake.
ACCESS_KEY_ID = "ASIAINFERGWFAKE12345"
SECRET_KEY = "infergwFakeSecret/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEInfergwFakeSessionToken//////////wEaCXVzLWVhc3QtMSJHMEUCIQ=="
SECRETS = (ACCESS_KEY_ID, SECRET_KEY, SESSION_TOKEN, SESSION_TOKEN[:24], SECRET_KEY[:16])
CREDS = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_SESSION_TOKEN": SESSION_TOKEN,
}
TEXT_MARKER = "INFERGW-PAYLOAD-MARKER"
# identity's input: float32 whose bytes spell a marker (seen in binary and bytes dumps).
BYTES_MARKER = b"INFERGW-BYTES-MK"
FLOATS = np.frombuffer(BYTES_MARKER * 4, dtype=np.float32).reshape(4, 4)
# ...and the same values as JSON numbers (seen in JSON bodies).
NUMBER_MARKER = repr(float(FLOATS[0, 0]))[:10]
SIGNATURE = re.compile(r"Signature\s*[=:]\s*[0-9a-f]{16}", re.IGNORECASE)  # SigV4, in hex


@pytest.fixture(scope="module", autouse=True)
def aws_env() -> Iterator[None]:
    with fake_aws_env(CREDS):
        yield


@pytest.fixture(scope="module")
def s3(aws_env: None) -> Iterator[MotoS3]:
    with MotoS3(buckets=[BUCKET]) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lambda_standin(s3: MotoS3) -> AsyncIterator[LambdaStandIn]:
    env = {**CREDS, "AWS_ENDPOINT_URL_S3": s3.endpoint, "INFERGW_MODELS": "identity,minilm"}
    async with LambdaStandIn([FunctionConfig("models", env=env, timeout_s=30)]) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sagemaker_standin() -> AsyncIterator[SageMakerStandIn]:
    config = json.loads(ENDPOINT_CONFIG.read_text())
    endpoint = ServerlessEndpoint.from_endpoint_config(
        "infergw", config, models=("identity", "minilm")
    )
    server = SageMakerStandIn([endpoint])
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def debug_output() -> Iterator[io.StringIO]:
    """What ``infergw -v`` would print, every logger at DEBUG."""
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = logs.configure(verbose=True, stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _requests() -> list[InferRequest]:
    text = np.array([f"{TEXT_MARKER} {i}".encode() for i in range(3)], dtype=np.object_)
    return [
        InferRequest("minilm", (tensor_from_numpy("text", text),), id="text"),
        InferRequest("identity", (tensor_from_numpy("input", FLOATS),), id="floats"),
    ]


def _ctx() -> RequestContext:
    ctx = RequestContext(protocol="test")
    ctx.with_timeout(60)
    return ctx


def _assert_clean(output: str) -> None:
    assert "botocore.auth" in output  # debug logging was on
    for secret in SECRETS:
        assert secret not in output
    assert logs.REDACTED in output
    assert "Signature:" in output and "Authorization" in output  # the lines were there...
    assert SIGNATURE.search(output) is None  # ...without their values
    for marker in (TEXT_MARKER, BYTES_MARKER.decode(), NUMBER_MARKER):
        assert marker not in output


async def test_lambda_debug_logs_hold_no_secret_or_payload(
    lambda_standin: LambdaStandIn, s3: MotoS3, debug_output: io.StringIO
) -> None:
    config = {"function_name": "models", "endpoint_url": lambda_standin.endpoint}
    direct = LambdaBackend.from_config("direct", config)
    offloaded = LambdaBackend.from_config(
        "offloaded",
        {
            **config,
            "s3_bucket": BUCKET,
            "s3_endpoint_url": s3.endpoint,
            "offload_threshold_bytes": 64,
        },
    )
    try:
        for backend in (direct, offloaded):
            for request in _requests():
                await backend.infer(request, _ctx())
    finally:
        await direct.close()
        await offloaded.close()
    _assert_clean(debug_output.getvalue())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_sagemaker_debug_logs_hold_no_secret_or_payload(
    sagemaker_standin: SageMakerStandIn, debug_output: io.StringIO, binary: bool
) -> None:
    backend = SageMakerBackend.from_config(
        "sagemaker",
        {"endpoint_name": "infergw", "endpoint_url": sagemaker_standin.endpoint, "binary": binary},
    )
    try:
        for request in _requests():
            await backend.infer(request, _ctx())
    finally:
        await backend.close()
    _assert_clean(debug_output.getvalue())

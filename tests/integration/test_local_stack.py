"""The whole local stack: every example model on every backend through one gateway."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import boto3
import numpy as np
import pytest

from infergw.clients import GrpcClient, HttpClient
from infergw.deploy.local.stack import BUCKET, EXAMPLE_MODELS
from infergw.gateway.processes import group_members
from infergw.loadgen import standins
from tests.integration.conftest import StackThread
from tests.integration.test_supervision import (
    RESTART_TIMEOUT_S,
    SERVE_AFTER_READY_S,
    kill_and_measure,
)

pytestmark = pytest.mark.integration
SERVERLESS = ("lambda", "sagemaker", "cloudrun")
RNG = np.random.default_rng(7)
INPUTS: dict[str, dict[str, np.ndarray]] = {
    "identity": {"input": RNG.random((2, 16), np.float32)},
    "identity_int64": {"input": np.arange(6, dtype=np.int64).reshape(1, 6)},
    "minilm": {"text": np.array([b"serverless or container?", b"it depends"], np.object_)},
    "mobilenet": {"image": RNG.random((1, 224, 224, 3), np.float32)},
}


@pytest.fixture(scope="module")
def stack() -> Iterator[StackThread]:
    st = StackThread()
    try:
        st.run(st.stack.start())
        yield st
    finally:
        st.close()


@pytest.fixture(scope="module")
def client(stack: StackThread) -> Iterator[GrpcClient]:
    with GrpcClient(stack.stack.endpoints()["gateway"]["grpc"], timeout=120) as c:
        yield c


def test_ready_file_document_lists_every_backend(stack: StackThread) -> None:
    info = stack.stack.endpoints()
    assert set(info["backends"]) == {"triton", *SERVERLESS}
    assert info["s3"]["bucket"] == BUCKET
    assert standins.scalable(info) == sorted(SERVERLESS)  # Triton's models stay loaded
    for backend in SERVERLESS:
        assert set(info["backends"][backend]["scale_to_zero"]) == set(EXAMPLE_MODELS)


@pytest.mark.parametrize("backend", SERVERLESS)
@pytest.mark.parametrize("model", sorted(INPUTS))
def test_every_model_on_every_backend_matches_triton(client: GrpcClient, model, backend) -> None:  # type: ignore[no-untyped-def]
    reference = client.infer(model, INPUTS[model])  # default route: Triton
    assert reference.timing.backend_attempts == 1
    result = client.infer(model, INPUTS[model], backend=backend)
    assert f"backend={backend}" in {e.description.split(";")[0] for e in result.timing.entries}
    assert "compute" in result.timing.server  # reported by the function/container itself
    for name, expected in reference.outputs.items():
        if expected.dtype == np.object_:
            assert result.outputs[name].tolist() == expected.tolist()
        else:
            np.testing.assert_allclose(result.outputs[name], expected, rtol=1e-5, atol=1e-6)


def test_yolo_through_lambda_travels_via_s3_and_leaves_nothing(stack: StackThread) -> None:
    images = RNG.random((1, 3, 640, 640), np.float32)  # 4.9 MB in, 8.6 MB out
    with GrpcClient(stack.stack.endpoints()["gateway"]["grpc"], timeout=120) as c:
        via_lambda = c.infer("yolo", {"images": images}, backend="lambda")
        direct = c.infer("yolo", {"images": images})
    assert via_lambda.outputs["output"].shape == (1, 25200, 85)
    np.testing.assert_allclose(via_lambda.outputs["output"], direct.outputs["output"], rtol=1e-5)
    assert via_lambda.timing.server["offload"] > 0
    s3 = boto3.client("s3", endpoint_url=stack.stack.endpoints()["s3"]["endpoint"])
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


@pytest.mark.parametrize("backend", SERVERLESS)
def test_first_request_after_scale_to_zero_is_a_cold_start(
    stack: StackThread, backend: str
) -> None:
    x = {"input": np.ones((1, 4), np.float32)}
    stack.run(stack.stack.scale_to_zero())
    with HttpClient(stack.stack.endpoints()["gateway"]["http"], binary=True, timeout=120) as c:
        cold = c.infer("identity", x, backend=backend)
        warm = c.infer("identity", x, backend=backend)
    assert cold.timing.server["coldstart"] > 0
    assert "coldstart" not in warm.timing.server
    # the split adds up: protocol is what remains of end-to-end
    t = cold.timing
    assert t.protocol_ms == pytest.approx(
        t.end_to_end_ms - sum(t.server.get(p, 0.0) for p in ("queue", "coldstart", "compute"))
    )


@pytest.mark.parametrize("backend", SERVERLESS)
def test_the_ready_files_scale_to_zero_route_makes_the_next_request_cold(
    stack: StackThread, backend: str
) -> None:
    """What ``infergw bench cold --stack-ready-file`` does: one HTTP POST per backend."""
    info = stack.stack.endpoints()
    x = {"input": np.ones((1, 4), np.float32)}
    with GrpcClient(info["gateway"]["grpc"], timeout=120) as c:
        c.infer("identity", x, backend=backend)  # an instance exists
        stack.run(standins.scale_to_zero(info, backend, "identity"))
        cold = c.infer("identity", x, backend=backend)
    assert cold.timing.server["coldstart"] > 0


def test_the_stack_supervises_triton_and_s3(stack: StackThread) -> None:
    assert set(stack.stack.supervisors) == {"tritonserver", "moto_server"}


def test_a_killed_triton_is_restarted_on_its_ports_and_served_within_a_second(
    stack: StackThread,
) -> None:
    """Item 6 of the hardening issue: it stayed a zombie with 7 stubs running."""
    before = stack.stack.endpoints()
    lag, old_pid, old_members = kill_and_measure(
        stack.stack.supervisors["tritonserver"], before["gateway"]["grpc"]
    )
    print(f"\nstack: first success through the gateway {lag * 1000:.0f} ms after Triton was ready")
    assert len(old_members) > 1 and not group_members(old_pid)  # stubs included
    assert stack.stack.endpoints()["backends"]["triton"] == before["backends"]["triton"]
    assert lag < SERVE_AFTER_READY_S


def test_a_killed_s3_is_restarted_and_lambda_offload_works_again(stack: StackThread) -> None:
    supervisor = stack.stack.supervisors["moto_server"]
    restarts, pid = supervisor.restarts, supervisor.child.pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)

    async def restarted() -> None:
        async with asyncio.timeout(RESTART_TIMEOUT_S):
            await supervisor.wait_restarted(restarts + 1)

    stack.run(restarted())
    assert not group_members(pid)
    test_yolo_through_lambda_travels_via_s3_and_leaves_nothing(stack)  # same port, bucket back

"""A supervised Triton (and moto's S3) killed under a running gateway comes back, and is used.

Triton and the gateway run as in the local stack, with the stack's ``Supervisor`` on the
gateway's event loop. Each test kills a child with SIGKILL and checks that its old
process group is gone (stubs included), that a new server is up on the same ports, and
that the gateway serves it within ``SERVE_AFTER_READY_S`` of the new server being ready
(it used to wait out gRPC's reconnect backoff: 6.5-8 s).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator

import boto3
import numpy as np
import pytest

from infergw.clients import GrpcClient
from infergw.deploy.local.s3 import MotoS3
from infergw.deploy.local.supervisor import RestartPolicy, Supervisor
from infergw.deploy.triton.launcher import TritonServer
from infergw.gateway.processes import group_members
from tests.integration.conftest import GatewayThread, free_ports_config

pytestmark = pytest.mark.integration

SERVE_AFTER_READY_S = 1.0
RESTART_TIMEOUT_S = 60.0
PROBE_INTERVAL_S = 0.01  # a client that keeps sending while Triton is down (~100 req/s)
X = {"input": np.ones((1, 4), np.float32)}
# Triton stays down ~6 s: long enough that gRPC's default reconnect backoff (1 s, x1.6,
# +-20% jitter: attempts at ~5.2 and ~9.3 s) leaves the new server unused for seconds.
HOLD_DOWN = RestartPolicy(initial_backoff_s=4.0, max_backoff_s=4.0)


class Supervised:
    """Triton, a gateway routing to it, and a supervisor on the gateway's loop."""

    def __init__(self) -> None:
        self.triton = TritonServer(models=["identity"])
        self.triton.start()
        self.gateway = GatewayThread(free_ports_config(self.triton.endpoints))
        self.supervisor = Supervisor("tritonserver", self.triton, HOLD_DOWN)
        self.gateway.run(_start(self.supervisor))

    def close(self) -> None:
        try:
            self.gateway.run(self.supervisor.stop())
        finally:
            try:
                self.gateway.close()
            finally:
                self.triton.stop()


async def _start(supervisor: Supervisor) -> None:
    supervisor.start()  # its task lives on the loop that runs this


@pytest.fixture(scope="module")
def supervised() -> Iterator[Supervised]:
    s = Supervised()
    try:
        yield s
    finally:
        s.close()


def kill_and_measure(
    supervisor: Supervisor, gateway_grpc: str, *, group: bool = True
) -> tuple[float, int, list[int]]:
    """SIGKILL the supervised child's group (or its leader) while a client keeps sending
    through the gateway; (first success - new server ready, old pid, old group members)."""
    restarts, old_pid = supervisor.restarts, supervisor.child.pid
    assert old_pid is not None
    with GrpcClient(gateway_grpc, timeout=2) as client:
        client.infer("identity", X)  # connected and serving before the kill
        old_members = group_members(old_pid)
        (os.killpg if group else os.kill)(old_pid, signal.SIGKILL)
        first_ok: float | None = None
        paced = threading.Event()
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                client.infer("identity", X)
            except Exception:  # UNAVAILABLE while Triton is down: what the gateway should say
                pass
            else:
                if supervisor.restarts > restarts:  # earlier, it was the old server's
                    first_ok = time.monotonic()
                    break
            paced.wait(PROBE_INTERVAL_S)
    assert first_ok is not None, "the gateway did not serve the restarted Triton"
    assert supervisor.ready_at is not None
    assert supervisor.child.pid not in (None, old_pid)
    return first_ok - supervisor.ready_at, old_pid, old_members


@pytest.mark.parametrize(
    ("how", "group"), [("group", True), ("leader only", False)], ids=["killpg", "kill-leader"]
)
def test_a_killed_triton_is_restarted_and_served_within_a_second(
    supervised: Supervised, how: str, group: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Killing only the leader is what left 7 stubs (~619 MB) running for minutes."""
    caplog.set_level(logging.WARNING, logger="infergw.deploy.local.supervisor")
    endpoints = supervised.triton.endpoints
    lag, old_pid, old_members = kill_and_measure(
        supervised.supervisor, supervised.gateway.grpc, group=group
    )
    print(f"\nkill {how}: first success through the gateway {lag * 1000:.0f} ms after ready")
    assert len(old_members) > 1  # the server and its python-backend stubs
    assert not group_members(old_pid)
    assert not [p for p in old_members if _alive(p)]
    assert lag < SERVE_AFTER_READY_S
    assert supervised.triton.endpoints == endpoints  # the gateway's configured address holds
    messages = [r.getMessage() for r in caplog.records]
    exits = [m for m in messages if "exited with code -9" in m]
    assert exits and "its log ends:" in exits[-1]
    assert "GRPCInferenceService" in exits[-1]  # Triton's own words, up to the kill
    assert any("restarted (pid" in m for m in messages)


def _alive(pid: int) -> bool:
    """True if ``pid`` is a live process (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_moto_s3_is_restarted_on_its_port_with_its_buckets_then_given_up_on() -> None:
    policy = RestartPolicy(initial_backoff_s=0.05, max_failures=1, window_s=600)
    loop = asyncio.new_event_loop()
    s3 = MotoS3(buckets=["kept"])
    try:
        endpoint = s3.start()
        supervisor = Supervisor("moto_server", s3, policy)

        async def kill_and_wait(count: int) -> None:
            supervisor.start()
            pid = s3.pid
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)
            async with asyncio.timeout(RESTART_TIMEOUT_S):
                await supervisor.wait_restarted(count)

        loop.run_until_complete(kill_and_wait(1))
        assert supervisor.restarts == 1 and not supervisor.gave_up
        assert s3.endpoint == endpoint
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["kept"]

        old_pid = s3.pid
        assert old_pid is not None
        loop.run_until_complete(kill_and_wait(2))  # the second failure in the window
        assert supervisor.gave_up and supervisor.restarts == 1
        assert s3.pid is None and not group_members(old_pid)
        loop.run_until_complete(supervisor.stop())
    finally:
        s3.stop()
        loop.close()

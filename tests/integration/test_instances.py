"""InstancePool with real worker processes: cold starts, reuse, limits, reaping."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from infergw.deploy.local.instances import InstancePool, InstanceStartError, Throttled

pytestmark = pytest.mark.integration

# A worker that takes `init` seconds to "load", then listens and announces its port.
WORKER = """
import socket, sys, time
time.sleep(float(sys.argv[1]))
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print("READY", s.getsockname()[1], flush=True)
time.sleep(3600)
"""


def pool(init_s: float = 0.2, **kwargs) -> InstancePool:  # type: ignore[no-untyped-def]
    return InstancePool("test", [sys.executable, "-c", WORKER, str(init_s)], **kwargs)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_first_request_is_cold_then_warm() -> None:
    p = pool(0.3)
    await p.start()
    try:
        async with p.lease() as first:
            assert first.cold and first.init_ms >= 300
        async with p.lease() as second:
            assert not second.cold and second.init_ms == 0
            assert second.instance is first.instance
        assert p.stats() == {"instances": 1, "busy": 0, "cold_starts": 1}
    finally:
        await p.close()
    assert not alive(first.instance.process.pid)


async def test_concurrency_scales_out_then_throttles() -> None:
    p = pool(0.1, concurrency=1, max_instances=2)
    await p.start()
    try:
        async with p.lease() as a, p.lease() as b:
            assert a.instance is not b.instance
            with pytest.raises(Throttled, match="all 2 instances are busy"):
                async with p.lease():
                    pass
    finally:
        await p.close()


async def test_queue_timeout_waits_for_a_free_slot() -> None:
    p = pool(0.1, concurrency=1, max_instances=1, queue_timeout_s=2.0)
    await p.start()
    try:
        async with p.lease():
            pass  # warm it

        async def hold() -> None:
            async with p.lease():
                await asyncio.sleep(0.3)

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        async with p.lease() as waited:
            assert not waited.cold
        await holder
    finally:
        await p.close()


async def test_idle_instances_are_reaped_and_dead_ones_dropped() -> None:
    p = pool(0.1, idle_timeout_s=0.3)
    await p.start()
    try:
        async with p.lease() as lease:
            pid = lease.instance.process.pid
        await asyncio.sleep(1.5)
        assert p.stats()["instances"] == 0 and not alive(pid)
        async with p.lease() as again:
            assert again.cold
        again.instance.process.kill()
        await again.instance.process.wait()
        async with p.lease() as fresh:
            assert fresh.cold and fresh.instance is not again.instance
    finally:
        await p.close()


async def test_worker_that_dies_before_ready_is_a_clear_error() -> None:
    p = InstancePool("broken", [sys.executable, "-c", "raise SystemExit(3)"])
    await p.start()
    try:
        with pytest.raises(InstanceStartError, match="exited with 3"):
            async with p.lease():
                pass
        assert p.stats()["instances"] == 0
    finally:
        await p.close()

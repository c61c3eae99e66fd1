import asyncio
import time

import numpy as np
import pytest

from infergw.gateway.core.config import RouteConfig
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.policies import Admission, Attempt
from infergw.gateway.core.router import Router
from infergw.vocab.datatypes import tensor_from_numpy
from infergw.vocab.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ModelNotFound,
    QueueFull,
    Unavailable,
)
from infergw.vocab.types import InferRequest
from tests.fakes import EchoBackend

REQUEST = InferRequest("identity", (tensor_from_numpy("input", np.ones((1, 4), np.float32)),))


def ctx(timeout_s: float | None = None) -> RequestContext:
    c = RequestContext(protocol="test")
    c.with_timeout(timeout_s)
    return c


def admission(backend: EchoBackend, limit: int = 1, queue: int = 1, wait_s: float = 5.0):  # type: ignore[no-untyped-def]
    return Admission(
        Attempt(backend), max_concurrency=limit, max_queue=queue, queue_timeout_s=wait_s
    )


async def test_attempt_records_backend_with_attempt_detail() -> None:
    c = ctx()
    await Attempt(EchoBackend("echo")).infer(REQUEST, c)
    (entry,) = [e for e in c.timings.entries if e.name == "backend"]
    assert entry.description == "backend=echo;attempt=1"
    assert c.backend_name == "echo"


async def test_attempt_cancels_backend_at_deadline() -> None:
    backend = EchoBackend(delay_s=5.0)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await Attempt(backend).infer(REQUEST, ctx(0.05))
    assert time.monotonic() - t0 < 1.0
    assert backend.cancelled == 1


async def test_attempt_timeout_tightens_deadline() -> None:
    with pytest.raises(DeadlineExceeded):
        await Attempt(EchoBackend(delay_s=5.0), timeout_s=0.05).infer(REQUEST, ctx(10.0))


async def test_admission_queues_then_rejects_when_queue_full() -> None:
    policy = admission(EchoBackend(delay_s=0.2), limit=1, queue=1)
    first = asyncio.create_task(policy.infer(REQUEST, ctx()))
    await asyncio.sleep(0.01)
    second_ctx = ctx()
    second = asyncio.create_task(policy.infer(REQUEST, second_ctx))
    await asyncio.sleep(0.01)
    assert policy.in_flight == 1 and policy.queued == 1
    with pytest.raises(QueueFull) as info:
        await policy.infer(REQUEST, ctx())
    assert info.value.http_status == 429 and info.value.retry_after_s >= 1
    await asyncio.gather(first, second)
    assert second_ctx.timings.get("queue") is not None
    assert second_ctx.timings.get("queue") >= 100  # waited for the first (~200 ms)
    assert policy.in_flight == 0 and policy.queued == 0


async def test_admission_queue_timeout_is_429_and_releases_nothing_twice() -> None:
    policy = admission(EchoBackend(delay_s=0.3), limit=1, queue=4, wait_s=0.05)
    first = asyncio.create_task(policy.infer(REQUEST, ctx()))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull, match="waited"):
        await policy.infer(REQUEST, ctx())
    await first
    assert policy.in_flight == 0 and policy.queued == 0


async def test_admission_deadline_while_queued_is_deadline_exceeded() -> None:
    policy = admission(EchoBackend(delay_s=0.3), limit=1, queue=4, wait_s=5.0)
    first = asyncio.create_task(policy.infer(REQUEST, ctx()))
    await asyncio.sleep(0.01)
    with pytest.raises(DeadlineExceeded):
        await policy.infer(REQUEST, ctx(0.05))
    await first
    assert policy.in_flight == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    policy = admission(EchoBackend(delay_s=0.1), limit=1, queue=4)
    first = asyncio.create_task(policy.infer(REQUEST, ctx()))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(policy.infer(REQUEST, ctx()))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert policy.in_flight == 0 and policy.queued == 0
    await policy.infer(REQUEST, ctx())  # the slot is usable


async def test_backend_errors_release_the_slot() -> None:
    policy = admission(EchoBackend(error=Unavailable("down")), limit=1, queue=0)
    for _ in range(3):
        with pytest.raises(Unavailable):
            await policy.infer(REQUEST, ctx())
    assert policy.in_flight == 0


def make_router(allow_pinning: bool = True) -> tuple[Router, EchoBackend, EchoBackend]:
    a, b = EchoBackend("a"), EchoBackend("b")
    routes = [RouteConfig("identity", "a", ("a", "b")), RouteConfig("echo", "a")]
    return Router({"a": a, "b": b}, routes, allow_pinning), a, b


async def test_router_default_and_pinned_backend() -> None:
    router, a, b = make_router()
    await router.infer(REQUEST, ctx())
    c = ctx()
    c.pinned_backend = "b"
    await router.infer(REQUEST, c)
    assert len(a.calls) == 1 and len(b.calls) == 1


async def test_router_rejects_unknown_model_and_disallowed_pins() -> None:
    router, _, _ = make_router()
    with pytest.raises(ModelNotFound, match="'nope'"):
        router.select("nope")
    with pytest.raises(InvalidArgument, match="not available"):
        router.select("identity", "zzz")
    router_no_pin, _, _ = make_router(allow_pinning=False)
    with pytest.raises(InvalidArgument, match="disabled"):
        router_no_pin.select("identity", "b")
    assert router_no_pin.select("identity", "a").name == "a"  # pinning the default is fine

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import pytest

from infergw.gateway.core import policies
from infergw.gateway.core.backend import Backend
from infergw.gateway.core.config import BackendConfig, RetryConfig, RouteConfig, parse_config
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.policies import Admission, Attempt, Policy, Retry, build_stack
from infergw.gateway.core.router import Router
from infergw.gateway.core.routing.budget import RetryBudget
from infergw.vocab.datatypes import tensor_from_numpy
from infergw.vocab.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ModelNotFound,
    QueueFull,
    Throttled,
    Unavailable,
)
from infergw.vocab.types import InferRequest, InferResponse, ModelStatistics
from tests.fakes import EchoBackend

REQUEST = InferRequest("identity", (tensor_from_numpy("input", np.ones((1, 4), np.float32)),))
T = TypeVar("T")


def ctx(timeout_s: float | None = None) -> RequestContext:
    c = RequestContext(protocol="test")
    c.with_timeout(timeout_s)
    return c


def admission(backend: Backend, limit: int = 1, queue: int = 1, wait_s: float = 5.0) -> Admission:
    return Admission(
        Attempt(backend), max_concurrency=limit, max_queue=queue, queue_timeout_s=wait_s
    )


class GateBackend(EchoBackend):
    """Holds every call until ``release`` is set; ``started`` is set by the first call."""

    def __init__(self, name: str = "gate") -> None:
        super().__init__(name)
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await super().infer(request, ctx)


class ScriptedBackend(EchoBackend):
    """Call N raises the script's Nth error (None: answers); past the script it answers."""

    def __init__(self, *script: Exception | None, name: str = "lambda") -> None:
        super().__init__(name)
        self.script = list(script)

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            self.calls.append(request)
            raise outcome
        return await super().infer(request, ctx)


async def spawn(call: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
    """Start ``call`` in a task; return once it has run to its first suspension.

    ``entered`` is set right before the call, which then runs without yielding until
    it waits (queued for a slot, or held by a backend): when this returns, it waits.
    """
    entered = asyncio.Event()

    async def run() -> T:
        entered.set()
        return await call()

    task = asyncio.create_task(run())
    await entered.wait()
    return task


def throttled(hint_s: float | None = None) -> Throttled:
    return Throttled("backend 'lambda': Lambda throttled the invoke (Rate Exceeded.)", hint_s)


class Sleeps:
    """A ``sleep`` for Retry that records each wait and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def retry(
    backend: Backend,
    max_retries: int = 3,
    base_s: float = 0.01,
    max_s: float = 1.0,
    uniform: Callable[[float, float], float] = lambda low, high: high,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> Retry:
    return Retry(
        Attempt(backend),
        max_retries=max_retries,
        base_s=base_s,
        max_s=max_s,
        parameter="lambda.throttled_retries",
        uniform=uniform,
        sleep=sleep or Sleeps(),
    )


def backend_entries(c: RequestContext) -> list[str]:
    return [e.description for e in c.timings.entries if e.name == "backend"]


def queue_entries(c: RequestContext) -> list[str]:
    return [e.description for e in c.timings.entries if e.name == "queue"]


def layers(backend: Backend) -> list[type]:
    chain: list[type] = []
    while isinstance(backend, Policy):
        chain.append(type(backend))
        backend = backend.inner
    return [*chain, type(backend)]


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
    backend = GateBackend()
    policy = admission(backend, limit=1, queue=1)
    first = await spawn(lambda: policy.infer(REQUEST, ctx()))
    second_ctx = ctx()
    second = await spawn(lambda: policy.infer(REQUEST, second_ctx))
    assert policy.in_flight == 1 and policy.queued == 1
    with pytest.raises(QueueFull) as info:
        await policy.infer(REQUEST, ctx())
    assert info.value.http_status == 429 and info.value.retry_after_s >= 1
    asyncio.get_running_loop().call_later(0.2, backend.release.set)  # the first holds ~200 ms
    await asyncio.gather(first, second)
    assert second_ctx.timings.get("queue") is not None
    assert second_ctx.timings.get("queue") >= 100  # waited for the first (~200 ms)
    assert policy.in_flight == 0 and policy.queued == 0


async def test_admission_queue_timeout_is_429_and_releases_nothing_twice() -> None:
    backend = GateBackend()
    policy = admission(backend, limit=1, queue=4, wait_s=0.05)
    first = await spawn(lambda: policy.infer(REQUEST, ctx()))
    with pytest.raises(QueueFull, match="waited"):
        await policy.infer(REQUEST, ctx())
    backend.release.set()
    await first
    assert policy.in_flight == 0 and policy.queued == 0


async def test_admission_deadline_while_queued_is_deadline_exceeded() -> None:
    backend = GateBackend()
    policy = admission(backend, limit=1, queue=4, wait_s=5.0)
    first = await spawn(lambda: policy.infer(REQUEST, ctx()))
    with pytest.raises(DeadlineExceeded):
        await policy.infer(REQUEST, ctx(0.05))
    backend.release.set()
    await first
    assert policy.in_flight == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    backend = GateBackend()
    policy = admission(backend, limit=1, queue=4)
    first = await spawn(lambda: policy.infer(REQUEST, ctx()))
    waiter = await spawn(lambda: policy.infer(REQUEST, ctx()))
    waiter.cancel()
    backend.release.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert policy.in_flight == 0 and policy.queued == 0
    await policy.infer(REQUEST, ctx())  # the slot is usable


async def test_waiter_granted_as_it_is_cancelled_passes_the_slot_on() -> None:
    backend = GateBackend()
    policy = admission(backend, limit=1, queue=4, wait_s=1.0)
    first = await spawn(lambda: policy.infer(REQUEST, ctx()))
    granted = await spawn(lambda: policy.infer(REQUEST, ctx()))
    next_ctx = ctx()
    following = await spawn(lambda: policy.infer(REQUEST, next_ctx))
    assert policy.in_flight == 1 and policy.queued == 2
    # The first finishes and hands its slot to `granted` (its waiter gets a result), and
    # `granted` is cancelled in the same loop iteration, before it can run: the race.
    backend.release.set()  # wakes the first ...
    asyncio.get_running_loop().call_soon(granted.cancel)  # ... the cancel runs right after it
    await first
    with pytest.raises(asyncio.CancelledError):
        await granted
    assert len(backend.calls) == 1  # `granted` never reached the backend
    response = await following  # the slot passed on: no leak, the next waiter got it
    assert response.outputs and next_ctx.timings.get("queue") is not None
    assert policy.in_flight == 0 and policy.queued == 0


async def test_backend_errors_release_the_slot() -> None:
    policy = admission(EchoBackend(error=Unavailable("down")), limit=1, queue=0)
    for _ in range(3):
        with pytest.raises(Unavailable):
            await policy.infer(REQUEST, ctx())
    assert policy.in_flight == 0


async def test_retry_retries_throttling_each_try_its_own_attempt() -> None:
    backend = ScriptedBackend(throttled(), throttled())
    sleeps = Sleeps()
    c = ctx(10.0)
    response = await retry(backend, base_s=0.01, max_s=1.0, sleep=sleeps).infer(REQUEST, c)
    assert response.outputs[0].name == "output"
    assert len(backend.calls) == 3 and c.attempts == 3
    assert backend_entries(c) == [f"backend=lambda;attempt={n}" for n in (1, 2, 3)]
    assert queue_entries(c) == ["backend=lambda;throttled=2"]  # the waits, one entry
    assert response.parameters["lambda.throttled_retries"] == 2
    assert sleeps.delays == [0.01, 0.02]  # full jitter's upper bound: base * 2**n


async def test_retry_backoff_is_full_jitter_capped_at_max() -> None:
    bounds: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        return high / 2

    sleeps = Sleeps()
    backend = ScriptedBackend(*(throttled() for _ in range(4)))
    policy = retry(backend, max_retries=4, base_s=0.1, max_s=0.3, uniform=uniform, sleep=sleeps)
    await policy.infer(REQUEST, ctx(10.0))
    assert bounds == [(0.0, 0.1), (0.0, 0.2), (0.0, 0.3), (0.0, 0.3)]
    assert sleeps.delays == [0.05, 0.1, 0.15, 0.15]


async def test_retry_stops_at_max_retries() -> None:
    backend = ScriptedBackend(*(throttled() for _ in range(10)))
    sleeps = Sleeps()
    c = ctx(10.0)
    with pytest.raises(Throttled, match="throttled"):
        await retry(backend, max_retries=2, sleep=sleeps).infer(REQUEST, c)
    assert len(backend.calls) == 3 and c.attempts == 3 and len(sleeps.delays) == 2
    assert queue_entries(c) == ["backend=lambda;throttled=2"]  # waits are reported on failure


class HeldSleeps:
    """A ``sleep`` that holds every wait until ``release`` is set: retries stay in flight."""

    def __init__(self) -> None:
        self.waiting = 0
        self.release = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.waiting += 1
        await self.release.wait()


async def test_the_retry_budget_bounds_retries_in_flight_and_gives_the_place_back() -> None:
    backend = ScriptedBackend(*(throttled() for _ in range(8)))  # the first 8 tries throttle
    sleeps = HeldSleeps()
    policy = Retry(
        Attempt(backend),
        max_retries=3,
        base_s=0.01,
        max_s=0.01,
        budget=RetryBudget(budget_percent=0, min_concurrent=2),
        sleep=sleeps,
    )
    tasks = [await spawn(lambda: policy.infer(REQUEST, ctx(10.0))) for _ in range(6)]
    await asyncio.sleep(0)
    refused = [t for t in tasks if t.done()]
    assert sleeps.waiting == 2 and policy.budget.retrying == 2  # two places, both taken
    assert len(refused) == 4  # the others got the throttling error at once
    for task in refused:
        with pytest.raises(Throttled):
            task.result()
    sleeps.release.set()
    answered = await asyncio.gather(*(t for t in tasks if t not in refused))
    assert all(r.outputs for r in answered)
    assert policy.budget.retrying == 0 and policy.budget.active == 0  # every place given back


@pytest.mark.parametrize(
    "error",
    [QueueFull("gateway admission is full"), Unavailable("down"), DeadlineExceeded("late")],
    ids=["own-queue-full", "unavailable", "deadline"],
)
async def test_retry_retries_only_throttling(error: Exception) -> None:
    backend = ScriptedBackend(error)
    sleeps = Sleeps()
    c = ctx(10.0)
    with pytest.raises(type(error)):
        await retry(backend, sleep=sleeps).infer(REQUEST, c)
    assert len(backend.calls) == 1 and sleeps.delays == [] and queue_entries(c) == []


async def test_retry_never_sleeps_past_the_deadline() -> None:
    backend = ScriptedBackend(*(throttled() for _ in range(20)))
    policy = retry(backend, max_retries=20, base_s=0.05, max_s=5.0, sleep=asyncio.sleep)
    c = ctx(0.3)
    t0 = time.monotonic()
    with pytest.raises(Throttled):  # the backend's own answer, not a DeadlineExceeded
        await policy.infer(REQUEST, c)
    assert time.monotonic() - t0 < 0.3
    assert len(backend.calls) == 3  # waited 0.05 and 0.1; 0.2 more would reach the deadline
    sleeps = Sleeps()
    with pytest.raises(Throttled):
        await retry(ScriptedBackend(throttled()), base_s=1.0, sleep=sleeps).infer(REQUEST, ctx(0.5))
    assert sleeps.delays == []


async def test_retry_honours_retry_after_as_a_floor_within_the_deadline() -> None:
    sleeps = Sleeps()
    no_jitter = retry(
        ScriptedBackend(throttled(0.25)), max_s=0.1, uniform=lambda low, high: low, sleep=sleeps
    )
    await no_jitter.infer(REQUEST, ctx(10.0))
    assert sleeps.delays == [0.25]  # the hint, above both the jitter and max_s
    sleeps = Sleeps()
    backend = ScriptedBackend(throttled(5.0))
    with pytest.raises(Throttled) as info:
        await retry(backend, sleep=sleeps).infer(REQUEST, ctx(1.0))
    assert sleeps.delays == [] and len(backend.calls) == 1  # the hint is past the deadline
    assert info.value.retry_after_s == 5.0  # and reaches the client as Retry-After
    assert throttled(None).retry_after_s == 1.0 and throttled(None).retry_after_hint_s is None


async def test_admission_holds_one_slot_across_retries_and_its_429_is_not_retried() -> None:
    backend = ScriptedBackend(throttled())
    resume = asyncio.Event()

    async def held_sleep(delay: float) -> None:
        await resume.wait()

    inner = retry(backend, sleep=held_sleep)
    policy = Admission(inner, max_concurrency=1, max_queue=0, queue_timeout_s=1.0)
    first_ctx = ctx(10.0)
    first = await spawn(lambda: policy.infer(REQUEST, first_ctx))  # throttled, backing off
    assert policy.in_flight == 1 and len(backend.calls) == 1
    rejected_ctx = ctx(10.0)
    with pytest.raises(QueueFull) as info:
        await policy.infer(REQUEST, rejected_ctx)
    assert not isinstance(info.value, Throttled) and rejected_ctx.attempts == 0
    resume.set()
    await first
    assert len(backend.calls) == 2 and first_ctx.attempts == 2
    assert queue_entries(first_ctx) == ["backend=lambda", "backend=lambda;throttled=1"]
    assert policy.in_flight == 0


def config(retry: RetryConfig | None = None) -> BackendConfig:
    return BackendConfig(name="echo", kind="echo", timeout_ms=1000.0, retry=retry)


def test_default_stack_is_admission_retry_attempt() -> None:
    assert (policies.admission, policies.retry, policies.attempt) == policies.DEFAULT_STACK
    echo = EchoBackend()
    stacked = build_stack(echo, config(RetryConfig(max_retries=2, base_ms=25.0, max_ms=250.0)))
    assert layers(stacked) == [Admission, Retry, Attempt, EchoBackend]
    assert isinstance(stacked, Admission) and isinstance(stacked.inner, Retry)
    assert stacked.inner.max_retries == 2 and stacked.inner.max_s == 0.25
    assert stacked.inner.parameter == "echo.throttled_retries"
    assert layers(build_stack(echo, config(None))) == [Admission, Attempt, EchoBackend]


def test_stack_is_built_from_the_declared_list_outermost_first() -> None:
    class Tag(Policy):
        def __init__(self, inner: Backend, tag: str) -> None:
            super().__init__(inner)
            self.tag = tag

    def tag(label: str) -> policies.PolicyFactory:
        return lambda backend, cfg: Tag(backend, f"{label}:{cfg.name}")

    def unconfigured(backend: Backend, cfg: BackendConfig) -> Backend | None:
        return None

    stacked = build_stack(EchoBackend(), config(), [tag("outer"), unconfigured, tag("inner")])
    assert isinstance(stacked, Tag) and stacked.tag == "outer:echo"
    assert isinstance(stacked.inner, Tag) and stacked.inner.tag == "inner:echo"
    assert isinstance(stacked.inner.inner, EchoBackend)


def test_router_from_config_builds_the_default_stack() -> None:
    cfg = parse_config(
        {
            "backends": {
                "plain": {"kind": "runtime"},
                "patient": {"kind": "runtime", "retry": {"max_retries": 1}},
            },
            "models": {"*": {"backend": "plain"}},
        }
    )
    router = Router.from_config(cfg)
    assert layers(router.backends["plain"])[:-1] == [Admission, Attempt]
    assert layers(router.backends["patient"])[:-1] == [Admission, Retry, Attempt]


class StatsEcho(EchoBackend):
    native_deadline = True

    async def model_statistics(self, model: str, version: str = "") -> list[ModelStatistics]:
        return [ModelStatistics(name=model, version=version)]


async def test_policies_implement_exactly_the_backend_contract() -> None:
    echo = StatsEcho()
    stacked = build_stack(echo, config(RetryConfig(max_retries=1, base_ms=1.0, max_ms=1.0)))
    assert await stacked.ready() and await stacked.model_ready("identity")
    assert not await stacked.model_ready("nope")
    assert (await stacked.model_metadata("identity")).platform == "fake"
    assert [s.name for s in await stacked.model_statistics("identity", "1")] == ["identity"]
    assert stacked.name == "echo" and stacked.native_deadline  # Attempt enforces it
    assert Policy(echo).native_deadline and not Policy(EchoBackend()).native_deadline
    assert isinstance(stacked, Backend)
    with pytest.raises(AttributeError):
        stacked.calls  # type: ignore[attr-defined]  # noqa: B018  # nothing else leaks through
    await stacked.close()
    assert echo.closed


def make_router(allow_pinning: bool = True) -> tuple[Router, EchoBackend, EchoBackend]:
    a, b = EchoBackend("a"), EchoBackend("b")
    routes = [
        RouteConfig(model="identity", backend="a", backends=("a", "b")),
        RouteConfig(model="echo", backend="a"),
    ]
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

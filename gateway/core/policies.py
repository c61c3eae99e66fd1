"""Policies: backends that wrap a backend, composed from a declared list.

- ``Admission``: a concurrency limit with a bounded FIFO queue in front of it.
  Waiting time is recorded as ``queue``; a full queue or a wait longer than
  ``queue_timeout_s`` is ``QueueFull`` (429 / RESOURCE_EXHAUSTED, Retry-After).
- ``Retry``: retries what the backend itself throttled (``Throttled``) with
  full-jitter exponential backoff, never sleeping past the request deadline. The
  gateway's own ``QueueFull`` (Admission, above it) is never retried.
- ``Attempt``: the innermost wrapper. Times one round trip as ``backend``
  (``attempt=N``), opens a client span and injects W3C trace context for the
  backend to send on, and enforces the request deadline (cancelling the backend
  call when it passes) — unless the backend's transport does exactly that itself
  (``native_deadline``).

A backend's stack is built from ``DEFAULT_STACK``, outermost first, the way
starlette builds its middleware stack: Admission holds one slot for the whole
request, retries included; Retry sits above Attempt so each try is its own attempt.
Each entry is a factory ``(backend, cfg) -> Backend | None`` (None: not configured,
skipped), so a new policy is a new entry.

A backend's streaming capability (``Backend.streaming``) passes through every policy.
Admission adds its part: each request of a stream holds one slot from its admission
until its last response (``StreamSlots``), so a stream of requests counts like as many
calls. A stream is not retried (its requests are not replayable once sent) and has no
per-request ``timeout_ms``: it is bounded by the client's deadline for the whole call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from infergw.gateway.core import tracing
from infergw.gateway.core.backend import Backend, InferStream, Release, StreamingBackend
from infergw.gateway.core.config import BackendConfig
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.routing.budget import RetryBudget
from infergw.gateway.core.warmth import Observation
from infergw.vocab.errors import DeadlineExceeded, InferGWError, QueueFull, Throttled
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata, ModelStatistics

PolicyFactory = Callable[[Backend, BackendConfig], Backend | None]


class Policy(Backend):
    """Implements the backend contract by delegating each method to ``inner``.

    Subclasses override ``infer``; everything else reaches the wrapped backend
    unchanged, spelled out so a type checker sees the whole contract.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name

    @property
    def native_deadline(self) -> bool:
        return self.inner.native_deadline

    @property
    def streaming(self) -> StreamingBackend | None:
        return self.inner.streaming

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        return await self.inner.infer(request, ctx)

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def model_ready(self, model: str, version: str = "") -> bool:
        return await self.inner.model_ready(model, version)

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        return await self.inner.model_metadata(model, version)

    async def model_statistics(self, model: str, version: str = "") -> list[ModelStatistics]:
        return await self.inner.model_statistics(model, version)

    async def close(self) -> None:
        await self.inner.close()


class Attempt(Policy):
    def __init__(self, inner: Backend, timeout_s: float | None = None) -> None:
        super().__init__(inner)
        self.timeout_s = timeout_s
        # A backend whose transport enforces ctx.deadline itself (gRPC deadlines cancel the
        # call) needs no event-loop timer on top: that timer was a fifth of our overhead.
        self._inner_native = inner.native_deadline

    @property
    def native_deadline(self) -> bool:
        return True  # enforced here, natively or by a timer

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        ctx.with_timeout(self.timeout_s)
        ctx.remaining()  # raises DeadlineExceeded if already past
        ctx.backend_name = self.name
        ctx.attempts += 1
        attempt = ctx.attempts
        t0 = time.perf_counter()
        with tracing.backend_span(self.name, request.model, attempt, ctx.headers) as span:
            try:
                if ctx.deadline is None or self._inner_native:
                    return await self.inner.infer(request, ctx)
                async with asyncio.timeout_at(_loop_time(ctx.deadline)):
                    return await self.inner.infer(request, ctx)
            except TimeoutError as exc:
                err = DeadlineExceeded(f"backend {self.name!r} did not answer within the deadline")
                tracing.record_error(span, err)
                raise err from exc
            except InferGWError as exc:
                tracing.record_error(span, exc)
                raise
            finally:
                ctx.timings.add_since("backend", t0, f"backend={self.name};attempt={attempt}")


def _loop_time(monotonic_deadline: float) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())


class Retry(Policy):
    """Retries ``Throttled`` with full-jitter backoff within the deadline.

    Try ``n`` (from 0) waits ``uniform(0, min(max_s, base_s * 2**n))``, at least the
    backend's Retry-After hint; a wait that would reach the deadline is not taken
    (the throttling error goes to the client). The waits of one request are one
    ``queue`` entry, ``backend=NAME;throttled=N`` (N retries), because waiting out
    throttling is waiting for the backend's capacity. The response also gets
    ``parameter: N`` (``KIND.throttled_retries``; a raw pass-through response, sent as
    the backend's bytes, carries the count in the timing only). ``uniform`` and
    ``sleep`` are the jitter and the wait, replaceable so tests need not sleep.

    A ``budget`` (Envoy's retry budget, ``routing.budget.RetryBudget``) bounds the retries
    in flight to a share of the requests in flight: during a long throttling storm every
    request would retry, and the budget keeps that extra load to ``budget_percent``
    (never fewer than ``min_concurrent``); a retry the budget refuses gives the client
    the throttling error at once.
    """

    def __init__(
        self,
        inner: Backend,
        max_retries: int,
        base_s: float,
        max_s: float,
        *,
        parameter: str = "",
        budget: RetryBudget | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(inner)
        self.budget = budget if budget is not None else RetryBudget(100.0, max_retries)
        self.max_retries = max_retries
        self.base_s = base_s
        self.max_s = max_s
        self.parameter = parameter
        self._uniform = uniform
        self._sleep = sleep

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        retries = 0
        waited_ms = 0.0
        budget = self.budget
        retrying = False  # holds a place in the budget from its wait to its try's end
        budget.active += 1
        try:
            while True:
                try:
                    response = await self.inner.infer(request, ctx)
                except Throttled as exc:
                    delay = self._delay(retries, exc, ctx)
                    if retrying:
                        budget.end_retry()
                        retrying = False
                    if delay is None or not budget.start_retry():
                        raise
                    retrying = True
                    retries += 1
                    t0 = time.perf_counter()
                    try:
                        await self._sleep(delay)
                    finally:
                        waited_ms += (time.perf_counter() - t0) * 1000.0
                    continue
                if retries and self.parameter:
                    params = {**response.parameters, self.parameter: retries}
                    response = dataclasses.replace(response, parameters=params)
                return response
        finally:
            budget.active -= 1
            if retrying:
                budget.end_retry()
            if retries:
                ctx.timings.add("queue", waited_ms, f"backend={self.name};throttled={retries}")

    def _delay(self, retries: int, exc: Throttled, ctx: RequestContext) -> float | None:
        """The wait before the next try, or None to give up."""
        if retries >= self.max_retries:
            return None
        delay = self._uniform(0.0, min(self.max_s, self.base_s * 2.0 ** min(retries, 64)))
        if exc.retry_after_hint_s is not None:
            delay = max(delay, exc.retry_after_hint_s)
        if ctx.deadline is not None and delay >= ctx.deadline - time.monotonic():
            return None
        return delay


class Observer(Protocol):
    def observe(self, answer: Observation) -> None: ...


class ObservedWarmth(Policy):
    """Feeds each answer of a serverless backend to its observer (the warm-state
    estimator, or the keep-warm runner that feeds it): whether it came back cold (a
    ``coldstart`` timing) and how long it took. Spill-over and hedging read the
    estimate; ``infergw_warm_state`` shows it."""

    def __init__(self, inner: Backend, observer: Observer) -> None:
        super().__init__(inner)
        self.observer = observer

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        response = await self.inner.infer(request, ctx)
        observed = Observation.from_entries(time.monotonic(), ctx.timings.entries, self.name)
        self.observer.observe(observed)
        return response


class Admission(Policy):
    def __init__(
        self,
        inner: Backend,
        max_concurrency: int,
        max_queue: int,
        queue_timeout_s: float,
    ) -> None:
        super().__init__(inner)
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.in_flight = 0
        self.peak_demand = 0  # most in flight + queued since the autoscaler last read it
        self._queue_desc = f"backend={self.name}"
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def resize(self, max_concurrency: int) -> None:
        """Change the slot count now (``autoscale.py``): new slots go to the waiters at
        once; when shrinking, requests in flight finish and their slots are not reused."""
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, not {max_concurrency}")
        self.max_concurrency = max_concurrency
        while self.in_flight < max_concurrency and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def take_peak_demand(self) -> int:
        """The most requests in flight and queued at once since the last call."""
        peak, self.peak_demand = self.peak_demand, self.in_flight + len(self._waiters)
        return peak

    @property
    def streaming(self) -> StreamingBackend | None:
        inner = self.inner.streaming
        return None if inner is None else StreamSlots(inner, self)

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        t0 = time.perf_counter()
        try:
            await self._acquire(ctx)
        finally:
            ctx.timings.add_since("queue", t0, self._queue_desc)
        try:
            return await self.inner.infer(request, ctx)
        finally:
            self._release()

    async def _acquire(self, ctx: RequestContext) -> None:
        demand = self.in_flight + len(self._waiters) + 1
        if demand > self.peak_demand:
            self.peak_demand = demand
        if self.in_flight < self.max_concurrency and not self._waiters:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise QueueFull(
                f"backend {self.name!r} is at its limit of {self.max_concurrency} in flight "
                f"and {self.max_queue} queued",
                retry_after_s=max(1.0, self.queue_timeout_s),
            )
        remaining = ctx.remaining()
        wait = self.queue_timeout_s if remaining is None else min(self.queue_timeout_s, remaining)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait):
                await waiter
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted a slot just as we gave up: pass it on
            if not isinstance(exc, TimeoutError):
                raise
            if remaining is not None and remaining <= self.queue_timeout_s:
                raise DeadlineExceeded("deadline exceeded while queued for the backend") from exc
            raise QueueFull(
                f"waited {self.queue_timeout_s:.3f}s in the queue for backend {self.name!r}",
                retry_after_s=max(1.0, self.queue_timeout_s),
            ) from exc

    def _release(self) -> None:
        if self.in_flight > self.max_concurrency:  # shrunk: this slot is gone
            self.in_flight -= 1
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next waiter
                return
        self.in_flight -= 1


class StreamSlots:
    """A streaming capability whose requests each hold a slot of ``admission``."""

    def __init__(self, inner: StreamingBackend, admission: Admission) -> None:
        self.inner = inner
        self.admission = admission
        self.name = inner.name
        self.encoding = inner.encoding

    async def open_stream(self, ctx: RequestContext) -> InferStream:
        return await self.inner.open_stream(ctx)

    async def needs_stream(self, model: str) -> bool:
        return await self.inner.needs_stream(model)

    async def admit(self, ctx: RequestContext) -> Release:
        """Wait for a slot as ``Admission.infer`` does (``queue``); the release gives it back."""
        admission = self.admission
        t0 = time.perf_counter()
        try:
            await admission._acquire(ctx)
        finally:
            ctx.timings.add_since("queue", t0, admission._queue_desc)
        try:
            inner_release = await self.inner.admit(ctx)
        except BaseException:
            admission._release()
            raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:  # once: a second release would free someone else's slot
                released = True
                try:
                    inner_release()
                finally:
                    admission._release()

        return release


def admission(backend: Backend, cfg: BackendConfig) -> Backend:
    """``max_concurrency`` / ``max_queue`` / ``queue_timeout_ms``: always configured."""
    return Admission(
        backend,
        max_concurrency=cfg.max_concurrency,
        max_queue=cfg.max_queue,
        queue_timeout_s=cfg.queue_timeout_ms / 1000.0,
    )


def retry(backend: Backend, cfg: BackendConfig) -> Backend | None:
    """``retry: {max_retries, base_ms, max_ms, budget_percent, min_concurrent}``; absent:
    no retries."""
    if cfg.retry is None:
        return None
    return Retry(
        backend,
        max_retries=cfg.retry.max_retries,
        base_s=cfg.retry.base_ms / 1000.0,
        max_s=cfg.retry.max_ms / 1000.0,
        parameter=f"{cfg.kind}.throttled_retries",
        budget=RetryBudget(cfg.retry.budget_percent, cfg.retry.min_concurrent),
    )


def attempt(backend: Backend, cfg: BackendConfig) -> Backend:
    """``timeout_ms``: the per-request backend deadline (the client's, if shorter)."""
    timeout_s = None if cfg.timeout_ms is None else cfg.timeout_ms / 1000.0
    return Attempt(backend, timeout_s=timeout_s)


DEFAULT_STACK: tuple[PolicyFactory, ...] = (admission, retry, attempt)


def build_stack(
    backend: Backend, cfg: BackendConfig, stack: Sequence[PolicyFactory] = DEFAULT_STACK
) -> Backend:
    """Wrap ``backend`` in the policies of ``stack``, listed outermost first."""
    for factory in reversed(stack):
        wrapped = factory(backend, cfg)
        if wrapped is not None:
            backend = wrapped
    return backend

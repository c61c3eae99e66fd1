"""Policies that wrap a backend and are backends themselves.

- ``Attempt``: the innermost wrapper. Times one round trip as ``backend``, opens a
  client span and injects W3C trace context for the backend to send on, and
  enforces the request deadline (cancelling the backend call when it passes) —
  unless the backend declares ``native_deadline = True`` because its transport
  already does exactly that.
- ``Admission``: a concurrency limit with a bounded FIFO queue in front of it.
  Waiting time is recorded as ``queue``; a full queue or a wait longer than
  ``queue_timeout_s`` is ``QueueFull`` (429 / RESOURCE_EXHAUSTED, Retry-After).

Everything that is not ``infer`` is delegated unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from infergw.gateway.core import tracing
from infergw.gateway.core.backend import Backend
from infergw.gateway.core.context import RequestContext
from infergw.vocab.errors import DeadlineExceeded, InferGWError, QueueFull
from infergw.vocab.types import InferRequest, InferResponse


class Wrapper:
    """Delegates every attribute but ``infer`` to the wrapped backend."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def close(self) -> None:
        await self.inner.close()


class Attempt(Wrapper):
    def __init__(self, inner: Backend, timeout_s: float | None = None) -> None:
        super().__init__(inner)
        self.timeout_s = timeout_s
        # A backend whose transport enforces ctx.deadline itself (gRPC deadlines cancel the
        # call) needs no event-loop timer on top: that timer was a fifth of our overhead.
        self.native_deadline = bool(getattr(inner, "native_deadline", False))

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        ctx.with_timeout(self.timeout_s)
        ctx.remaining()  # raises DeadlineExceeded if already past
        ctx.backend_name = self.name
        ctx.attempts += 1
        attempt = ctx.attempts
        t0 = time.perf_counter()
        with tracing.backend_span(self.name, request.model, attempt, ctx.headers) as span:
            try:
                if ctx.deadline is None or self.native_deadline:
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


class Admission(Wrapper):
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
        self._queue_desc = f"backend={self.name}"
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

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
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next waiter
                return
        self.in_flight -= 1

"""Fakes for the routing tests (no tests here): a clock the test moves, backends that
answer when the test says so, and a decision recorder. Unit tests only."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Sequence

import numpy as np

from infergw.gateway.core.backend import BackendBase
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.routing.attempts import Attempts, Target
from infergw.gateway.core.routing.decisions import Reason
from infergw.gateway.core.routing.latency import LatencyWindow
from infergw.vocab.datatypes import tensor_from_numpy
from infergw.vocab.errors import InferGWError
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata

SAFETY_S = 5.0  # only a broken test waits this long; nothing is timed against it


def request(request_id: str = "") -> InferRequest:
    data = tensor_from_numpy("input", np.ones((1, 4), np.float32))
    return InferRequest("identity", (data,), id=request_id)


class FakeClock:
    """Monotonic time that moves only when the test calls ``advance``.

    It starts at the real ``time.monotonic()``, so a deadline set on it is also in the
    future for code that reads the real clock (``RequestContext.remaining``).
    """

    def __init__(self) -> None:
        self._now = time.monotonic()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.sleep_started = asyncio.Event()  # set by each sleep; the test clears it

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        self.sleep_started.set()
        await future

    def advance(self, seconds: float) -> None:
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    @property
    def sleeping(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())


class Gate(BackendBase):
    """Answers each call when ``open`` is called (at once with ``hold=False``): with
    ``error`` raised if set, else an echo. Counts calls and cancellations."""

    def __init__(
        self,
        name: str,
        *,
        hold: bool = True,
        error: InferGWError | None = None,
        clock: FakeClock | None = None,
        service_s: float = 0.0,
    ) -> None:
        self.name = name
        self.hold = hold
        self.error = error
        self.clock = clock
        self.service_s = service_s  # the fake clock moves this much per answered call
        self.calls = 0
        self.cancelled = 0
        self.deadlines: list[float | None] = []
        self.started = asyncio.Event()
        self.was_cancelled = asyncio.Event()
        self.answered = asyncio.Event()  # a call ended with an answer or its error
        self._release = asyncio.Event()

    def open(self, error: InferGWError | None = None) -> None:
        self.error = error
        self._release.set()

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        self.calls += 1
        self.deadlines.append(ctx.deadline)
        self.started.set()
        try:
            if self.hold:
                await self._release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            self.was_cancelled.set()
            raise
        self.answered.set()
        if self.clock is not None and self.service_s:
            self.clock.advance(self.service_s)
        if self.error is not None:
            raise self.error
        ctx.timings.add("compute", 0.001)
        return InferResponse(request.model, request.inputs, id=request.id, version=self.name)

    async def ready(self) -> bool:
        return True

    async def model_ready(self, model: str, version: str = "") -> bool:
        return True

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        return ModelMetadata(model, ("1",), self.name, (), ())


class Decisions:
    """A ``DecisionSink`` that keeps every decision."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, Reason]] = []

    def record(self, route: str, backend: str, reason: Reason) -> None:
        self.seen.append((route, backend, reason))


def attempts(clock: FakeClock, sink: Decisions | None = None, route: str = "m") -> Attempts:
    return Attempts(route, clock, sink or Decisions())


def window(*samples_s: float) -> LatencyWindow:
    w = LatencyWindow(min_samples=len(samples_s) or 1)
    for s in samples_s:
        w.add(s)
    return w


def targets(*backends: BackendBase) -> list[Target]:
    return [Target(b.name, b) for b in backends]


def backend_descs(ctx: RequestContext) -> Sequence[str]:
    return [e.description for e in ctx.timings.entries if e.name == "backend"]


async def wait_for(event: asyncio.Event) -> None:
    async with asyncio.timeout(SAFETY_S):
        await event.wait()

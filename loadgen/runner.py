"""Open and closed loops on asyncio.

Open loop: requests leave at the times the schedule says, whether or not earlier
ones have answered, and each latency is measured from its *intended* send time, so
a server that stalls is charged for every request that should have been sent during
the stall (no coordinated omission). The scheduler wakes half a millisecond early
(epoll rounds timeouts up to whole milliseconds) and sends everything due within
that half millisecond; a send dispatched more than 1 ms after its time counts as
late; beyond ``max_outstanding`` requests in flight, arrivals are dropped and counted.

Closed loop: N workers, each sending its next request when its previous one has
answered. Simple and what "concurrency N" means, but it hides stalls: use it for
throughput curves, not for tail latency.

Both run with the heap that existed before them frozen (``frozen_heap``), so the
garbage collector's full passes cannot add their pauses to the latencies measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any, ParamSpec, Protocol, TypeVar

from infergw.loadgen.progress import Progress
from infergw.loadgen.recorder import Outcome, Recorder

EARLY_S = 0.0005
LEAD_S = 0.01  # the first send happens this long after the run starts
Hook = Callable[[], Coroutine[Any, Any, None]]
P = ParamSpec("P")
R = TypeVar("R")
_frozen_runs = 0


class Sender(Protocol):
    """What the loops drive (see ``targets``). ``send`` never raises for a failed request:
    it returns the error code in the outcome."""

    sent_bytes: int

    async def send(self) -> Outcome: ...


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the garbage collector's full passes out of the measurement.

    A run's own objects (tasks, outcomes) are young and cheap to collect, but a full
    (generation 2) pass also walks everything the process held before the run: about
    570k objects once numpy, gRPC, TensorFlow's stubs and friends are loaded, measured
    here at 240-400 ms per pass, a pause that lands in whichever latencies are in
    flight. ``gc.freeze()`` puts those objects out of the collector's reach for the run
    and ``gc.unfreeze()`` hands them back; runs that overlap share one freeze.
    """
    global _frozen_runs
    if _frozen_runs == 0:
        gc.collect()
        gc.freeze()
    _frozen_runs += 1
    try:
        yield
    finally:
        _frozen_runs -= 1
        if _frozen_runs == 0:
            gc.unfreeze()


def _on_frozen_heap(run: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(run)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        with frozen_heap():
            return await run(*args, **kwargs)

    return wrapped


@_on_frozen_heap
async def open_loop(
    sender: Sender,
    schedule: Iterable[float],
    *,
    duration_s: float | None = None,
    max_requests: int | None = None,
    warmup_s: float = 0.0,
    max_outstanding: int = 10_000,
    drain_s: float = 60.0,
    stop: asyncio.Event | None = None,
    on_measure_start: Hook | None = None,
    progress: Progress | None = None,
) -> Recorder:
    """Send at ``start + offset`` for each offset until ``duration_s`` (after warm-up),
    ``max_requests`` measured arrivals, the schedule's end, or ``stop``."""
    if duration_s is None and max_requests is None:
        raise ValueError("an open loop needs a duration or a request count")
    start = time.perf_counter() + LEAD_S
    end = start + warmup_s + duration_s if duration_s is not None else float("inf")
    rec = Recorder(start, warmup_s, sender.sent_bytes)
    tasks: set[asyncio.Task[None]] = set()
    hooks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()

    async def one(intended: float, dispatched: float) -> None:
        sent = time.perf_counter()
        outcome = await sender.send()
        rec.record(intended, max(sent, dispatched), time.perf_counter(), outcome)

    if on_measure_start is not None and warmup_s <= 0:
        await on_measure_start()
        on_measure_start = None
    ticker = _ticker(progress, rec, start, end, max_requests)
    try:
        for offset in schedule:
            intended = start + offset
            if intended >= end or (stop is not None and stop.is_set()):
                break
            if on_measure_start is not None and intended >= rec.measure_from:
                hooks.append(loop.create_task(on_measure_start()))
                on_measure_start = None
            delay = intended - time.perf_counter() - EARLY_S
            if delay > 0:
                await asyncio.sleep(delay)
                if stop is not None and stop.is_set():
                    break
            now = time.perf_counter()
            rec.arrival(intended)
            if len(tasks) >= max_outstanding:
                rec.drop(intended)
            else:
                task = loop.create_task(one(intended, now))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if max_requests is not None and rec.arrivals >= max_requests:
                break
        rec.send_end = time.perf_counter()
        await _drain(tasks, rec, 2.0 if stop is not None and stop.is_set() else drain_s)
        for hook in hooks:
            await hook
    finally:
        ticker.cancel()
        for task in (*tasks, *hooks):
            task.cancel()
    return rec


@_on_frozen_heap
async def closed_loop(
    sender: Sender,
    *,
    concurrency: int,
    duration_s: float | None = None,
    max_requests: int | None = None,
    warmup_s: float = 0.0,
    stop: asyncio.Event | None = None,
    on_measure_start: Hook | None = None,
    progress: Progress | None = None,
) -> Recorder:
    """``concurrency`` workers, each with one request in flight, for ``warmup_s`` and then
    ``duration_s`` or ``max_requests`` measured requests (whichever comes first)."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if duration_s is None and max_requests is None:
        raise ValueError("a closed loop needs a duration or a request count")
    start = time.perf_counter()
    end = start + warmup_s + duration_s if duration_s is not None else float("inf")
    rec = Recorder(start, warmup_s, sender.sent_bytes)
    issued = 0  # measured requests started, so --requests N sends exactly N

    async def worker() -> None:
        nonlocal issued
        while stop is None or not stop.is_set():
            t0 = time.perf_counter()
            if t0 >= end:
                return
            if t0 >= rec.measure_from:
                if max_requests is not None and issued >= max_requests:
                    return
                issued += 1
            rec.timeseries.at(t0).offered += 1
            outcome = await sender.send()
            rec.record(t0, t0, time.perf_counter(), outcome)

    hook: asyncio.Task[None] | None = None
    if on_measure_start is not None:
        if warmup_s > 0:
            hook = asyncio.get_running_loop().create_task(_after(warmup_s, on_measure_start))
        else:
            await on_measure_start()
    ticker = _ticker(progress, rec, start, end, max_requests)
    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        await asyncio.gather(*workers)
        rec.send_end = time.perf_counter()
        if hook is not None:
            await hook
    finally:
        ticker.cancel()
        for task in workers:
            task.cancel()
        if hook is not None:
            hook.cancel()
    return rec


async def _after(delay: float, hook: Hook) -> None:
    await asyncio.sleep(delay)
    await hook()


async def _drain(tasks: set[asyncio.Task[None]], rec: Recorder, wait_s: float) -> None:
    """Wait for the requests still in flight; those that do not finish count as unfinished."""
    if not tasks:
        return
    _, pending = await asyncio.wait(set(tasks), timeout=wait_s)
    rec.unfinished += len(pending)
    for task in pending:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*pending, return_exceptions=True)


def _ticker(
    progress: Progress | None, rec: Recorder, start: float, end: float, max_requests: int | None
) -> asyncio.Task[None]:
    async def tick() -> None:
        while True:
            await asyncio.sleep(0.25)
            if progress is None:
                continue
            now = time.perf_counter()
            if end != float("inf"):
                fraction = (now - start) / max(end - start, 1e-9)
            elif max_requests:
                fraction = rec.completed / max_requests
            else:
                fraction = 0.0
            progress.update(fraction, f"{rec.ok} ok, {sum(rec.errors.values())} err")

    return asyncio.get_running_loop().create_task(tick())

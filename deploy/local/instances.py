"""Instances of a function or container, run the way the serverless stand-ins need.

An instance is a real worker process. It prints ``READY <port>`` on stdout once it
listens and its model is loaded; the time from spawn to that line is the
instance's cold start — measured, never slept. Warm instances are reused, each
serves at most ``concurrency`` requests at once, idle ones are stopped after
``idle_timeout_s`` (scale to zero unless ``min_instances``), and at most
``max_instances`` exist. When all are busy a request waits up to
``queue_timeout_s`` for a slot, then ``Throttled`` — each stand-in turns that into
its service's real error (Lambda 429 TooManyRequestsException, SageMaker
ThrottlingException, Cloud Run 429).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from infergw.gateway.processes import AsyncProcessGroup

log = logging.getLogger(__name__)

READY_PREFIX = b"READY "
STOP_GRACE_S = 5.0


class Throttled(Exception):
    """No instance can take the request within the queue timeout."""


class InstanceStartError(RuntimeError):
    """A worker exited or timed out before it was ready."""


@dataclass(eq=False)
class Instance:
    id: int
    group: AsyncProcessGroup  # the worker leads it: stopping it stops all it spawned
    port: int
    init_ms: float
    in_flight: int = 0
    served: int = 0
    last_used: float = field(default_factory=time.monotonic)

    @property
    def process(self) -> asyncio.subprocess.Process:
        return self.group.process

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self) -> None:
        await self.group.stop(STOP_GRACE_S)


@dataclass(frozen=True)
class Lease:
    instance: Instance
    cold: bool  # this request waited for the instance to start
    init_ms: float  # the instance's start-up time if cold, else 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.instance.port}"


class InstancePool:
    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        concurrency: int = 1,
        max_instances: int = 10,
        min_instances: int = 0,
        idle_timeout_s: float = 300.0,
        queue_timeout_s: float = 0.0,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = {**os.environ, **(env or {})}
        self.concurrency = concurrency
        self.max_instances = max_instances
        self.min_instances = min_instances
        self.idle_timeout_s = idle_timeout_s
        self.queue_timeout_s = queue_timeout_s
        self.start_timeout_s = start_timeout_s
        self.instances: list[Instance] = []
        self.cold_starts = 0
        self._starting = 0
        self._next_id = 0
        self._changed = asyncio.Condition()
        self._reaper: asyncio.Task[None] | None = None
        self._drains: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for _ in range(self.min_instances):
            self.instances.append(await self._spawn())
        self._reaper = asyncio.create_task(self._reap_idle())

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        lease = await self._acquire()
        instance = lease.instance
        try:
            yield lease
        finally:
            instance.in_flight -= 1
            instance.served += 1
            instance.last_used = time.monotonic()
            async with self._changed:
                self._changed.notify_all()

    async def _acquire(self) -> Lease:
        deadline = time.monotonic() + self.queue_timeout_s
        async with self._changed:
            while True:
                self._drop_dead()
                warm = [i for i in self.instances if i.in_flight < self.concurrency]
                if warm:
                    instance = max(warm, key=lambda i: i.last_used)  # keep the hottest busy
                    instance.in_flight += 1
                    return Lease(instance, cold=False, init_ms=0.0)
                if len(self.instances) + self._starting < self.max_instances:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Throttled(
                        f"{self.name}: all {self.max_instances} instances are busy "
                        f"({self.concurrency} requests each)"
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._changed.wait()
            self._starting += 1
        try:
            instance = await self._spawn()
        finally:
            self._starting -= 1
        instance.in_flight += 1
        self.instances.append(instance)
        self.cold_starts += 1
        return Lease(instance, cold=True, init_ms=instance.init_ms)

    def _drop_dead(self) -> None:
        dead = [i for i in self.instances if not i.alive]
        for instance in dead:
            log.warning(
                "%s: instance %d exited (%s)", self.name, instance.id, instance.process.returncode
            )
            self.instances.remove(instance)

    async def _spawn(self) -> Instance:
        self._next_id += 1
        t0 = time.perf_counter()
        group = await AsyncProcessGroup.start(
            self.command, env=self.env, stdout=asyncio.subprocess.PIPE
        )
        process = group.process
        try:
            async with asyncio.timeout(self.start_timeout_s):
                port = await _read_ready(process)
        except BaseException as exc:
            await group.stop(STOP_GRACE_S)
            if isinstance(exc, TimeoutError):
                raise InstanceStartError(
                    f"{self.name}: worker not ready in {self.start_timeout_s}s"
                ) from exc
            raise
        init_ms = (time.perf_counter() - t0) * 1000.0
        drain = asyncio.create_task(_drain(process))
        self._drains.add(drain)
        drain.add_done_callback(self._drains.discard)
        log.info(
            "%s: instance %d ready on port %d in %.0f ms", self.name, self._next_id, port, init_ms
        )
        return Instance(self._next_id, group, port, init_ms)

    async def scale_to_zero(self) -> int:
        """Stop every idle instance now (what the idle timeout would do later)."""
        idle = [i for i in self.instances if i.in_flight == 0]
        for instance in idle:
            self.instances.remove(instance)
        await asyncio.gather(*(i.stop() for i in idle))
        return len(idle)

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout_s / 4))
            now = time.monotonic()
            expired = [
                i
                for i in self.instances
                if i.in_flight == 0 and now - i.last_used > self.idle_timeout_s
            ][: max(0, len(self.instances) - self.min_instances)]
            for instance in expired:
                self.instances.remove(instance)
                await instance.stop()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        instances, self.instances = self.instances, []
        await asyncio.gather(*(i.stop() for i in instances))

    def stats(self) -> dict[str, int]:
        return {
            "instances": len(self.instances),
            "busy": sum(1 for i in self.instances if i.in_flight),
            "cold_starts": self.cold_starts,
        }


async def _read_ready(process: asyncio.subprocess.Process) -> int:
    assert process.stdout is not None
    while True:
        line = await process.stdout.readline()
        if not line:
            raise InstanceStartError(f"worker exited with {await process.wait()} before READY")
        if line.startswith(READY_PREFIX):
            return int(line[len(READY_PREFIX) :].strip())


async def _drain(process: asyncio.subprocess.Process) -> None:
    """Keep reading the worker's stdout so it never blocks on a full pipe."""
    assert process.stdout is not None
    while await process.stdout.read(65536):
        pass

"""Keep the local stack's child servers running: notice an exit, reap, restart with backoff.

A server the stack started (Triton, moto's S3) can die under it: killed by an operator
or the OOM killer, or crashed. Left alone, its exited leader stays a zombie and its
helpers (Triton's python-backend stubs) keep running and holding memory. A
``Supervisor`` waits on the leader (``ProcessGroup.wait``: a pidfd, so the exit is
seen at once, not at the next poll), then stops the child, which SIGKILLs and reaps
what is left of its process group, and starts it again on the same ports, so the
addresses the gateway and the stand-ins were given stay valid.

Restarts back off (0.5 s doubling to 10 s by default); after ``max_failures`` exits or
failed starts within ``window_s`` the supervisor gives up and leaves the child stopped.
Every event is logged at WARNING, giving up at ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

WAIT_SLICE_S = 0.5  # a waiting thread checks this often whether supervision has stopped


class Child(Protocol):
    """A server run as a process group; ``start`` and ``stop`` block (run in a thread)."""

    @property
    def pid(self) -> int | None: ...

    def start(self) -> Any:
        """Start it (again, on the ports it had) and return once it is ready; raise if not."""

    def stop(self) -> None:
        """Stop it and reap its whole process group; idempotent."""

    def wait(self, timeout: float | None = None) -> int:
        """Block until the running server exits; its exit code."""

    def log_tail(self) -> str:
        """The end of its log: why it exited, in its own words (logged with the exit)."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How soon to restart, and when to stop trying."""

    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    max_failures: int = 5  # exits or failed starts within window_s before giving up
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("need 0 <= initial_backoff_s <= max_backoff_s")
        if self.max_failures < 1 or self.window_s <= 0:
            raise ValueError("need max_failures >= 1 and window_s > 0")

    def backoff_s(self, recent_failures: int) -> float:
        """The delay before the restart that follows the ``recent_failures``-th failure."""
        return min(self.max_backoff_s, self.initial_backoff_s * 2 ** max(0, recent_failures - 1))


class FailureWindow:
    """Failures within the last ``window_s`` seconds (older ones are forgotten, so a
    child that stays up long enough starts again from the shortest backoff)."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._times: deque[float] = deque()

    def record(self, now: float) -> int:
        """Count one failure at ``now``; the failures now within the window."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.policy.window_s:
            self._times.popleft()
        return len(self._times)

    def exhausted(self, count: int) -> bool:
        return count > self.policy.max_failures


class Supervisor:
    """Restart ``child`` whenever it exits, until ``stop()`` or the policy gives up.

    ``start()`` expects the child to be running already. ``restarts`` counts successful
    restarts, ``ready_at`` is the ``time.monotonic()`` at which the last one was ready,
    and ``gave_up`` says the policy was exhausted.
    """

    def __init__(self, name: str, child: Child, policy: RestartPolicy | None = None) -> None:
        self.name = name
        self.child = child
        self.policy = policy or RestartPolicy()
        self.restarts = 0
        self.ready_at: float | None = None
        self.gave_up = False
        # Its own threads: waiting on a child blocks for its whole life, which must not
        # take a slot of the loop's default executor.
        self._threads = ThreadPoolExecutor(2, thread_name_prefix=f"supervise-{name}")
        self._closing = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy: asyncio.Future[Any] | None = None  # a stop or start of the child
        self._restarted = asyncio.Condition()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"supervise {self.name}")

    async def stop(self) -> None:
        """Stop supervising (the child keeps running; the caller stops it next).

        A reap or restart in progress is let finish, so the caller's ``stop`` of the
        child cannot race a start in another thread and leave a server behind.
        """
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._busy is not None:
            with contextlib.suppress(Exception):
                await self._busy
        self._threads.shutdown(wait=False)  # the waiting thread sees _closing within a slice

    async def wait_restarted(self, count: int) -> None:
        """Return once ``restarts >= count`` (bound it with ``asyncio.timeout``)."""
        async with self._restarted:
            await self._restarted.wait_for(lambda: self.restarts >= count or self.gave_up)

    async def _in_thread(self, fn: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn)

    async def _to_the_end(self, fn: Any) -> Any:
        """Run blocking ``fn`` in a thread; a cancelled caller does not cut it short
        (``stop()`` waits for it instead)."""
        self._busy = busy = asyncio.get_running_loop().run_in_executor(self._threads, fn)
        try:
            return await asyncio.shield(busy)
        finally:
            if busy.done():
                self._busy = None

    def _wait_exit(self) -> int | None:
        """The child's exit code, or None once supervision stops (in slices, so that the
        thread never outlives it: the interpreter joins executor threads at exit)."""
        while not self._closing.is_set():
            with contextlib.suppress(subprocess.TimeoutExpired):
                return self.child.wait(WAIT_SLICE_S)
        return None

    async def _supervise(self) -> None:
        try:
            await self._watch()
        except Exception:  # a bug here must not pass silently: the child is unwatched now
            log.exception("supervising %s failed; it is no longer restarted", self.name)

    async def _watch(self) -> None:
        failures = FailureWindow(self.policy)
        while True:
            pid = self.child.pid
            code = await self._in_thread(self._wait_exit)
            if code is None:
                return
            count = failures.record(time.monotonic())
            tail = await self._in_thread(self.child.log_tail)  # before stop removes the log
            log.warning(
                "%s (pid %s) exited with code %s; its log ends:\n%s", self.name, pid, code, tail
            )
            while True:
                # Reap first: the exited leader is a zombie and its helpers may still run.
                await self._to_the_end(self.child.stop)
                if failures.exhausted(count):
                    log.error(
                        "%s failed %d times within %g s; giving up: it stays stopped",
                        self.name,
                        count,
                        self.policy.window_s,
                    )
                    await self._notify(gave_up=True)
                    return
                delay = self.policy.backoff_s(count)
                log.warning("%s: its process group is reaped; restarting in %g s", self.name, delay)
                await asyncio.sleep(delay)
                if await self._restart():
                    break
                count = failures.record(time.monotonic())

    async def _restart(self) -> bool:
        began = time.monotonic()
        try:
            await self._to_the_end(self.child.start)
        except Exception as exc:  # the child's own start error, with its log excerpt
            log.warning("%s did not restart: %s", self.name, exc)
            return False
        self.ready_at = time.monotonic()
        log.warning(
            "%s restarted (pid %s), ready after %.1f s",
            self.name,
            self.child.pid,
            self.ready_at - began,
        )
        await self._notify()
        return True

    async def _notify(self, *, gave_up: bool = False) -> None:
        async with self._restarted:
            if gave_up:
                self.gave_up = True
            else:
                self.restarts += 1
            self._restarted.notify_all()

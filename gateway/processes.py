"""Child processes that lead their own process group: start, wait ready, stop, reap.

Servers spawn helpers (Triton its python-backend stubs, nginx its workers), so a child
is started in a new session: it leads a process group holding everything it spawns,
one signal to the group reaches all of them, and stopping means the group is empty.

``stop()`` sends SIGTERM to the group, waits up to a grace period for the leader (which
normally waits for its own children), SIGKILLs whatever is left of the group, reaps
the leader and returns once no live member remains. The sync ``ProcessGroup`` leaves
an exited leader unreaped (a zombie) until then: the zombie keeps the group id
allocated, so the final SIGKILL can never reach an unrelated group that reused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

STOP_GRACE_S = 5.0
REAP_TIMEOUT_S = 10.0  # after SIGKILL; members die within milliseconds
POLL_S = 0.02
LOG_TAIL_CHARS = 3000

StrPath = str | os.PathLike[str]


class ProcessStartError(RuntimeError):
    """A child exited, or did not become ready in time, while it was starting.

    ``returncode`` is the child's exit code, or None if it was still running (a
    timeout); ``log_tail`` is the end of its log ("" without one).
    """

    def __init__(self, message: str, returncode: int | None, log_tail: str = "") -> None:
        super().__init__(f"{message}\n{log_tail}" if log_tail else message)
        self.returncode = returncode
        self.log_tail = log_tail


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to group ``pgid`` (0: only check); False if the group is gone, never raises."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member that changed user; the group is there
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes (zombies excluded) in group ``pgid``.

    Orphans killed with the group are reaped by init, which may take seconds in a
    container; they hold nothing but their pid, so they do not count. Reads /proc
    where there is one, else asks the kernel whether the group exists at all.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid] if signal_group(pgid, 0) else []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]  # after "pid (comm)"
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def _wait_group_empty(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)  # nothing to wait on: members are not our children
    return True


def _wait_pid(pid: int, timeout_s: float | None) -> None:
    """Sleep until unreaped child ``pid`` exits or ``timeout_s`` passes (None: no limit)."""
    try:
        pidfd = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process has exited
    except (AttributeError, OSError):
        time.sleep(POLL_S if timeout_s is None else min(POLL_S, timeout_s))
        return
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll(None if timeout_s is None else max(1, round(timeout_s * 1000)))
    finally:
        os.close(pidfd)


def _exit_status(pid: int) -> int | None:
    """The exit code of child ``pid`` if it has exited, without reaping it."""
    try:
        result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped
        return None
    if result is None:
        return None
    if result.si_code == os.CLD_EXITED:
        return result.si_status
    return -result.si_status  # killed or dumped: -signal, as subprocess reports it


class ProcessGroup:
    """A child process leading its own process group (a sync ``subprocess.Popen``).

    Start it with ``ProcessGroup.start(argv, ...)``; use it as a context manager or
    call ``stop()``, which is idempotent and safe whatever state the child is in.
    ``grace_s`` is how long ``stop()`` waits after SIGTERM unless told otherwise.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        name: str = "process",
        log: Path | None = None,
        grace_s: float = STOP_GRACE_S,
    ) -> None:
        with contextlib.suppress(ProcessLookupError):  # gone already: nothing to check
            if popen.returncode is None and os.getpgid(popen.pid) != popen.pid:
                raise ValueError(f"{name} does not lead its process group (start_new_session)")
        self.popen = popen
        self.name = name
        self.log = log
        self.grace_s = grace_s
        self._returncode: int | None = None

    @classmethod
    def start(
        cls,
        argv: Sequence[StrPath],
        *,
        env: Mapping[str, str] | None = None,
        cwd: StrPath | None = None,
        log: Path | None = None,
        name: str | None = None,
        grace_s: float = STOP_GRACE_S,
    ) -> Self:
        """Spawn ``argv`` in a new session, stdin closed.

        stdout and stderr go to the file ``log`` (truncated), or are discarded.
        """
        output: IO[bytes] | int
        with contextlib.ExitStack() as stack:
            output = stack.enter_context(log.open("wb")) if log else subprocess.DEVNULL
            popen = subprocess.Popen(
                [os.fspath(arg) for arg in argv],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        return cls(popen, name=name or Path(os.fspath(argv[0])).name, log=log, grace_s=grace_s)

    @property
    def pid(self) -> int:
        """The leader's pid, which is also the group's id."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def poll(self) -> int | None:
        """The leader's exit code, or None while it runs."""
        if self._returncode is None:
            self._returncode = self.popen.returncode
        if self._returncode is None:
            self._returncode = _exit_status(self.pid)
        return self._returncode

    def wait(self, timeout: float | None = None) -> int:
        """Block until the leader exits; ``subprocess.TimeoutExpired`` after ``timeout``."""
        if not self._wait_exit(timeout):
            raise subprocess.TimeoutExpired(self.popen.args, timeout or 0.0)
        code = self.poll()
        assert code is not None
        return code

    def _wait_exit(self, timeout: float | None) -> bool:
        """True once the leader has exited (it stays unreaped), False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            _wait_pid(self.pid, left)
        return True

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the leader only (e.g. SIGTERM to a server that stops its own children)."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait_ready(
        self, probe: Callable[[], bool], timeout_s: float, interval_s: float = 0.05
    ) -> None:
        """Call ``probe`` until it returns True; ``ProcessStartError`` if the child exits
        first (with its exit code and log tail) or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.poll()
            if code is not None:
                raise ProcessStartError(
                    f"{self.name} exited with code {code} during start-up", code, self.log_tail()
                )
            if probe():
                return
            if time.monotonic() > deadline:
                raise ProcessStartError(
                    f"{self.name} not ready after {timeout_s:g} s", None, self.log_tail()
                )
            self._wait_exit(interval_s)  # the interval, cut short if the child exits

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The last ``chars`` characters of the log ("" without one)."""
        if self.log is None:
            return ""
        try:
            with self.log.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - chars))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace_s: float | None = None) -> int:
        """SIGTERM the group, SIGKILL what is left after ``grace_s``, reap; the exit code."""
        if self.popen.returncode is not None:  # reaped: stopped before
            return self.popen.returncode
        if self.poll() is None:
            signal_group(self.pid, signal.SIGTERM)
            self._wait_exit(self.grace_s if grace_s is None else grace_s)
        # The leader, running or a zombie, still holds the group id: the group is ours.
        signal_group(self.pid, signal.SIGKILL)
        code = self.popen.wait()
        _wait_group_empty(self.pid, REAP_TIMEOUT_S)
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class AsyncProcessGroup:
    """An ``asyncio.subprocess.Process`` leading its own process group.

    asyncio's child watcher reaps the leader as soon as it exits, so a group whose
    leader was already gone before ``stop()`` is not signalled (its id may have been
    reused); a live leader's group is SIGKILLed right after it is reaped.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(
        cls,
        argv: Sequence[StrPath],
        *,
        env: Mapping[str, str] | None = None,
        cwd: StrPath | None = None,
        stdout: int = asyncio.subprocess.DEVNULL,
        stderr: int | None = None,
    ) -> Self:
        """Spawn ``argv`` in a new session, stdin closed (stdout/stderr as for asyncio)."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def stop(self, grace_s: float = STOP_GRACE_S) -> int:
        """SIGTERM the group, SIGKILL what is left after ``grace_s``, reap; the exit code."""
        if self.process.returncode is not None:
            return self.process.returncode
        signal_group(self.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self.process.wait()
        signal_group(self.pid, signal.SIGKILL)
        code = await self.process.wait()
        if group_members(self.pid):
            await asyncio.to_thread(_wait_group_empty, self.pid, REAP_TIMEOUT_S)
        return code

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

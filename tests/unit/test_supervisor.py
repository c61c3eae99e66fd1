"""The local stack's supervisor: backoff, the failure window, giving up, a clean stop.

The child is a fake with the ``Child`` interface (no process, no socket); its "exit" is
an event the test sets.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading

import pytest

from infergw.deploy.local.supervisor import FailureWindow, RestartPolicy, Supervisor

QUICK = RestartPolicy(initial_backoff_s=0.001, max_backoff_s=0.004, max_failures=3, window_s=600)
BOUND_S = 10.0


class FakeChild:
    def __init__(self, starts: list[Exception | None]) -> None:
        self.starts = starts  # what each start does: None succeeds, an exception is raised
        self.exited = threading.Event()
        self.calls: list[str] = []
        self.pid: int | None = 100
        self.start_entered = threading.Event()
        self.start_release = threading.Event()
        self.start_release.set()

    def kill(self) -> None:
        self.exited.set()

    def wait(self, timeout: float | None = None) -> int:
        if not self.exited.wait(timeout):
            raise subprocess.TimeoutExpired("fake", timeout or 0.0)
        return -9

    def stop(self) -> None:
        self.calls.append("stop")
        self.pid = None

    def log_tail(self) -> str:
        assert self.pid is not None, "read after stop, which removes the log"
        return "fake: the last words"

    def start(self) -> None:
        self.calls.append("start")
        self.start_entered.set()
        self.start_release.wait(BOUND_S)
        outcome = self.starts.pop(0)
        if outcome is not None:
            raise outcome
        self.exited.clear()
        self.pid = 200 + len(self.calls)


def test_backoff_doubles_from_half_a_second_to_ten() -> None:
    policy = RestartPolicy()
    assert [policy.backoff_s(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_failures_older_than_the_window_are_forgotten() -> None:
    window = FailureWindow(RestartPolicy(window_s=60, max_failures=2))
    assert [window.record(t) for t in (0.0, 10.0, 20.0)] == [1, 2, 3]
    assert window.exhausted(3)
    assert window.record(75.0) == 2  # 0 and 10 have aged out; the backoff starts over


@pytest.mark.parametrize(
    "bad", [{"initial_backoff_s": -1}, {"max_backoff_s": 0.1}, {"max_failures": 0}]
)
def test_a_policy_that_makes_no_sense_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RestartPolicy(**bad)  # type: ignore[arg-type]


async def test_an_exit_is_reaped_then_restarted_and_a_failed_start_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="infergw.deploy.local.supervisor")
    child = FakeChild([RuntimeError("port taken"), None])
    supervisor = Supervisor("fake", child, QUICK)
    supervisor.start()
    try:
        child.kill()
        async with asyncio.timeout(BOUND_S):
            await supervisor.wait_restarted(1)
    finally:
        await supervisor.stop()
    assert child.calls == ["stop", "start", "stop", "start"]  # reaped before every start
    assert supervisor.restarts == 1 and not supervisor.gave_up
    assert supervisor.ready_at is not None
    messages = [r.getMessage() for r in caplog.records]
    assert "fake (pid 100) exited with code -9; its log ends:\nfake: the last words" in messages
    assert "fake did not restart: port taken" in messages
    assert all(r.levelno == logging.WARNING for r in caplog.records)


async def test_it_gives_up_after_max_failures_in_the_window_and_leaves_it_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    child = FakeChild([RuntimeError("crash on start")] * 5)
    supervisor = Supervisor("fake", child, QUICK)
    supervisor.start()
    try:
        child.kill()
        async with asyncio.timeout(BOUND_S):
            await supervisor.wait_restarted(1)  # returns on giving up too
    finally:
        await supervisor.stop()
    assert supervisor.gave_up and supervisor.restarts == 0
    # The exit and two failed starts are the 3 allowed; the third failed start gives up.
    assert child.calls == ["stop", "start", "stop", "start", "stop", "start", "stop"]
    assert any(r.levelno == logging.ERROR and "giving up" in r.getMessage() for r in caplog.records)
    exit_report = next(
        r.getMessage() for r in caplog.records if "exited with code" in r.getMessage()
    )
    assert exit_report.endswith("its log ends:\nfake: the last words")  # why, in its words


async def test_stop_lets_a_restart_in_progress_finish() -> None:
    """Else the stack's stop of the child could race a start in another thread."""
    child = FakeChild([None])
    child.start_release.clear()
    supervisor = Supervisor("fake", child, QUICK)
    supervisor.start()
    child.kill()
    assert await asyncio.to_thread(child.start_entered.wait, BOUND_S)
    stopping = asyncio.create_task(supervisor.stop())
    done, _ = await asyncio.wait({stopping}, timeout=0.2)  # ample to cancel a task
    assert not done  # still waiting for the start
    child.start_release.set()
    async with asyncio.timeout(BOUND_S):
        await stopping
    assert child.calls == ["stop", "start"] and child.pid is not None  # started, for the caller


async def test_stop_ends_supervision_of_a_running_child() -> None:
    child = FakeChild([])
    supervisor = Supervisor("fake", child, QUICK)
    supervisor.start()
    async with asyncio.timeout(BOUND_S):
        await supervisor.stop()
    assert child.calls == []  # never touched: stopping it is the caller's job

"""ProcessGroup / AsyncProcessGroup with real short-lived ``python -c`` children (no sockets).

Each child says "ready" on stdout (its log) once it has set up what the test is about,
so the tests wait on that line, not on a sleep.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infergw.gateway.processes import (
    AsyncProcessGroup,
    ProcessGroup,
    ProcessStartError,
    group_members,
    signal_group,
)

# Ignores SIGTERM, so only SIGKILL ends it.
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""

# Exits on SIGTERM, leaving behind a grandchild (same group) that ignores SIGTERM,
# as Triton's python-backend stubs can outlive the server. "ready" comes once the
# grandchild has said that it ignores SIGTERM.
WITH_GRANDCHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("armed", flush=True)
time.sleep(60)
'''], stdout=subprocess.PIPE)
assert child.stdout.readline() == b"armed\\n"
print("ready", child.pid, flush=True)
time.sleep(60)
"""

QUICK_EXIT = "print('ready', flush=True)"
DIES = "import sys; print('model file is broken', file=sys.stderr); sys.exit(3)"


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def said(group: ProcessGroup, word: str) -> bool:
    return word in group.log_tail()


def state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (Z: zombie), None once it is gone entirely."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def live(pid: int) -> bool:
    return state(pid) not in (None, "Z")


@pytest.fixture
def groups() -> Iterator[list[ProcessGroup]]:
    """Every group a test starts is stopped, also when the test fails."""
    started: list[ProcessGroup] = []
    yield started
    for group in started:
        group.stop(grace_s=0)


def start(groups: list[ProcessGroup], tmp_path: Path, code: str) -> ProcessGroup:
    group = ProcessGroup.start(python(code), log=tmp_path / f"child{len(groups)}.log")
    groups.append(group)
    return group


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(
    groups: list[ProcessGroup], tmp_path: Path
) -> None:
    group = start(groups, tmp_path, STUBBORN)
    group.wait_ready(lambda: said(group, "ready"), timeout_s=30)
    t0 = time.monotonic()
    assert group.stop(grace_s=0.5) == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - t0 < 5
    assert state(group.pid) is None  # reaped


def test_grandchildren_are_gone_after_stop(groups: list[ProcessGroup], tmp_path: Path) -> None:
    group = start(groups, tmp_path, WITH_GRANDCHILD)
    group.wait_ready(lambda: said(group, "ready"), timeout_s=30)
    grandchild = int(group.log_tail().split("ready", 1)[1].split()[0])
    assert sorted(group_members(group.pid)) == sorted([group.pid, grandchild])
    t0 = time.monotonic()
    assert group.stop(grace_s=10) == -signal.SIGTERM  # the leader obeyed ...
    # ... so neither the grace nor init's reaping of the killed orphan (seconds in some
    # containers; a zombie holds nothing) was waited out.
    assert time.monotonic() - t0 < 1.0
    assert group_members(group.pid) == []
    assert not live(grandchild)  # ... and what it left behind was killed


def test_stop_twice_and_stop_after_exit_are_fine(
    groups: list[ProcessGroup], tmp_path: Path
) -> None:
    group = start(groups, tmp_path, QUICK_EXIT)
    assert group.wait(timeout=30) == 0
    assert group.stop() == 0
    assert group.stop() == 0
    assert group.poll() == 0
    assert signal_group(group.pid, signal.SIGTERM) is False  # the group is gone: no raise


def test_an_exited_leader_holds_its_group_id_until_stop(
    groups: list[ProcessGroup], tmp_path: Path
) -> None:
    """Until stop() reaps it, the leader stays a zombie, so its group id cannot be reused
    and stop()'s SIGKILL cannot reach an unrelated group."""
    group = start(groups, tmp_path, QUICK_EXIT)
    assert group.wait(timeout=30) == 0
    assert group.poll() == 0 and group.returncode == 0
    assert state(group.pid) == "Z"
    group.stop()
    assert state(group.pid) is None


def test_wait_ready_reports_a_child_that_died(groups: list[ProcessGroup], tmp_path: Path) -> None:
    group = start(groups, tmp_path, DIES)
    with pytest.raises(ProcessStartError, match="exited with code 3") as err:
        group.wait_ready(lambda: False, timeout_s=30)
    assert err.value.returncode == 3
    assert "model file is broken" in err.value.log_tail
    assert "model file is broken" in str(err.value)


def test_wait_ready_times_out_with_the_child_still_running(
    groups: list[ProcessGroup], tmp_path: Path
) -> None:
    group = start(groups, tmp_path, STUBBORN)
    group.wait_ready(lambda: said(group, "ready"), timeout_s=30)
    with pytest.raises(ProcessStartError, match=r"not ready after 0\.2 s") as err:
        group.wait_ready(lambda: False, timeout_s=0.2)
    assert err.value.returncode is None and "ready" in err.value.log_tail
    assert group.poll() is None


def test_wait_times_out_and_the_context_manager_stops(tmp_path: Path) -> None:
    with ProcessGroup.start(python(STUBBORN), log=tmp_path / "log", grace_s=0.2) as group:
        group.wait_ready(lambda: said(group, "ready"), timeout_s=30)
        with pytest.raises(subprocess.TimeoutExpired):
            group.wait(timeout=0.1)
    assert group.poll() == -signal.SIGKILL
    assert group_members(group.pid) == []


def test_without_a_log_output_is_discarded_and_the_tail_empty(tmp_path: Path) -> None:
    with (
        ProcessGroup.start(python(DIES), cwd=tmp_path) as group,
        pytest.raises(ProcessStartError) as err,
    ):
        group.wait_ready(lambda: False, timeout_s=30)
    assert err.value.log_tail == "" and str(err.value).endswith("during start-up")


def test_env_and_cwd_reach_the_child(tmp_path: Path) -> None:
    code = "import os; print(os.environ['PROBE'], os.getcwd(), os.getsid(0) == os.getpid())"
    env = {**os.environ, "PROBE": "seen"}
    with ProcessGroup.start(python(code), env=env, cwd=tmp_path, log=tmp_path / "log") as group:
        assert group.wait(timeout=30) == 0
    assert group.log_tail().split() == ["seen", str(tmp_path.resolve()), "True"]  # own session


async def test_async_group_kills_a_stubborn_child_and_its_grandchildren() -> None:
    group = await AsyncProcessGroup.start(python(WITH_GRANDCHILD), stdout=asyncio.subprocess.PIPE)
    assert group.process.stdout is not None
    line = await asyncio.wait_for(group.process.stdout.readline(), 30)
    assert line.startswith(b"ready")
    grandchild = int(line.split()[1])
    assert live(grandchild)
    assert await group.stop(grace_s=10) == -signal.SIGTERM
    assert group_members(group.pid) == [] and not live(grandchild)
    assert await group.stop() == -signal.SIGTERM  # idempotent


async def test_async_group_sigkills_after_the_grace() -> None:
    group = await AsyncProcessGroup.start(python(STUBBORN), stdout=asyncio.subprocess.PIPE)
    async with group:
        assert group.process.stdout is not None
        assert await asyncio.wait_for(group.process.stdout.readline(), 30) == b"ready\n"
        t0 = time.monotonic()
        assert await group.stop(grace_s=0.3) == -signal.SIGKILL
        assert time.monotonic() - t0 >= 0.3
    assert group.returncode == -signal.SIGKILL


def test_wrapping_a_child_that_does_not_lead_its_group_is_refused() -> None:
    popen = subprocess.Popen(python("import time; time.sleep(60)"), stdin=subprocess.DEVNULL)
    try:
        with pytest.raises(ValueError, match="does not lead its process group"):
            ProcessGroup(popen, name="child")
    finally:
        popen.kill()
        popen.wait()

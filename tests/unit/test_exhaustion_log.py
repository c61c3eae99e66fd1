"""Out of file descriptors, the log gets one line per interval, not a traceback per
connection (issue 9, item 7: 9,591 "Too many open files" tracebacks)."""

from __future__ import annotations

import errno
import io
import logging
from collections.abc import Iterator

import pytest

from infergw.gateway.sites import ExhaustionLogFilter, Throttle, default_max_connections


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ExhaustionLogFilter(interval_s=3600))
    logger = logging.getLogger("test.exhaustion")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)


def log_emfile(logger: logging.Logger) -> None:
    try:
        raise OSError(errno.EMFILE, "Too many open files")
    except OSError:
        # What asyncio's accept loop logs for every failed accept().
        logger.exception("socket.accept() out of system resource")


def test_many_emfile_errors_become_one_line_without_a_traceback(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    for _ in range(1000):
        log_emfile(logger)
    lines = out.getvalue().splitlines()
    assert lines == [
        "socket.accept() out of system resource: [Errno 24] Too many open files"
        " (1 in the last 3600 s)"
    ]


def test_other_records_and_other_errors_pass_untouched(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    log_emfile(logger)
    try:
        raise OSError(errno.ECONNREFUSED, "Connection refused")
    except OSError:
        logger.exception("backend down")
    logger.warning("plain %s", "line")
    text = out.getvalue()
    assert "backend down\nTraceback" in text  # not exhaustion: the traceback stays
    assert "plain line" in text


def test_the_throttle_reports_the_count_once_per_interval() -> None:
    throttle = Throttle(interval_s=3600)
    assert throttle.hit() == 1  # the first is reported at once
    assert [throttle.hit() for _ in range(5)] == [None] * 5
    throttle._next = 0.0  # the interval has passed
    assert throttle.hit() == 6  # the five held back, and this one


def test_the_default_connection_limit_leaves_most_descriptors() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_max_connections() == max(16, soft // 4)

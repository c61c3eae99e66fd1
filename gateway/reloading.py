"""A value loaded from files and loaded again when one of them changes.

Certificates and API keys rotate without a restart: ``Reloading.get()`` checks the
files' stamps (modification time, size, inode) at most once per ``interval_s`` and
loads again when any changed. A load that fails (a half-written key during a rotation,
a file briefly missing) keeps the last good value and is logged once per change; the
first load's errors propagate, so a bad file stops the process at start. ``Follower``
hands each new value to a consumer outside Python (the native plane's port).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Stamp = tuple[int, int, int] | None  # (mtime_ns, size, inode); None: the file is missing
CHECK_INTERVAL_S = 1.0


class Reloading(Generic[T]):
    """``load()``'s value, refreshed when ``paths`` change. Thread-safe: gRPC asks for
    certificates from its own threads."""

    def __init__(
        self,
        paths: Sequence[str],
        load: Callable[[], T],
        what: str,
        interval_s: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths = tuple(paths)
        self._load = load
        self._what = what
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        # Stamped before loading: a change during the load is seen by the next check.
        self._stamps = self._stat()
        self._value = load()
        self._next_check = clock() + interval_s

    def get(self) -> T:
        if self._clock() < self._next_check:
            return self._value
        with self._lock:
            now = self._clock()
            if now >= self._next_check:
                self._next_check = now + self._interval_s
                self._refresh()
        return self._value

    def _refresh(self) -> None:
        stamps = self._stat()
        if stamps == self._stamps:
            return
        self._stamps = stamps
        try:
            self._value = self._load()
        except Exception as exc:
            # The reason only: an exception's text could quote the file's contents.
            log.warning(
                "%s changed but cannot be loaded (%s); keeping the previous one",
                self._what,
                getattr(exc, "strerror", None) or type(exc).__name__,
            )
            return
        log.info("%s reloaded from %s", self._what, ", ".join(self._paths))

    def _stat(self) -> tuple[Stamp, ...]:
        stamps: list[Stamp] = []
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)


class Follower(Generic[T]):
    """Hands ``current()``'s value (a ``Reloading``'s, say) to ``push`` whenever it is a new
    one: how a consumer outside Python, the native plane, gets what was reloaded.

    ``sync()`` before the consumer starts lets ``push``'s error propagate (a file it cannot
    use stops the start); later ones log it by its message (which must not quote the
    files) and keep what the consumer had. ``follow()`` syncs every ``interval_s``."""

    def __init__(self, what: str, current: Callable[[], T], push: Callable[[T], None]) -> None:
        self.what = what
        self._current = current
        self._push = push
        self._handed: T | None = None

    def sync(self) -> None:
        value = self._current()
        if value is self._handed:
            return
        first = self._handed is None
        try:
            self._push(value)
        except ValueError as exc:
            if first:
                raise
            log.warning("%s reloaded but not taken (%s); keeping the previous one", self.what, exc)
        self._handed = value  # a refused value is not offered again until the files change


async def follow(followers: Sequence[Follower[Any]], interval_s: float = CHECK_INTERVAL_S) -> None:
    """Syncs every follower each ``interval_s``, until cancelled."""
    while followers:
        await asyncio.sleep(interval_s)
        for follower in followers:
            follower.sync()

"""The time source of routing decisions, injected so tests drive it without sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """``now()`` shares ``time.monotonic()``'s base: ``RequestContext.deadline`` is read
    against it."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The event loop's sleep and the monotonic clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


def remaining_s(deadline: float | None, clock: Clock) -> float | None:
    """Seconds left before ``deadline`` (None: unbounded; may be <= 0)."""
    return None if deadline is None else deadline - clock.now()

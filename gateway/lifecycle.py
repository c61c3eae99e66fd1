"""One way to run a long-lived component: ``start()``/``stop()``, or ``async with``.

The gateway, the local stack, every stand-in and the aiohttp sites share it, so each
defines only what starting and stopping mean for it. ``ThreadedService`` runs one on an
event loop of its own, for callers that block (tests driving it with synchronous
clients, benchmark scripts).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

T = TypeVar("T")


class AsyncService:
    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


S = TypeVar("S", bound=AsyncService)


class ThreadedService(Generic[S]):
    """``service`` on a private event loop in a daemon thread, started unless
    ``start=False``; ``run`` runs a coroutine there and waits for it; ``close`` stops the
    service, then the loop (also when stopping fails)."""

    def __init__(self, service: S, start: bool = True, timeout_s: float = 180.0) -> None:
        self.service = service
        self.timeout_s = timeout_s
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        if start:
            try:
                self.run(service.start())
            except BaseException:
                self.close()
                raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(self.timeout_s if timeout is None else timeout)

    def close(self) -> None:
        try:
            self.run(self.service.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

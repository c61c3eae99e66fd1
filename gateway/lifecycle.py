"""One way to run a long-lived component: ``start()``/``stop()``, or ``async with``.

The gateway, the local stack, every stand-in and the aiohttp sites share it, so each
defines only what starting and stopping mean for it.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


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

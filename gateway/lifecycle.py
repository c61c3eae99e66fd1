"""One way to run a long-lived component: ``start()``/``stop()``, or ``(async) with``.

The gateway, the local stack, every stand-in and the servers it launches share these,
so each defines only what starting and stopping mean for it: ``AsyncService`` for
components of the event loop, ``Service`` for blocking ones (a process launcher).
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


class Service:
    """The blocking twin of ``AsyncService``: ``with`` starts, and stops on the way out."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

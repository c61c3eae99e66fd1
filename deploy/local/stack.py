"""The embedded local stack: real Triton on CPU plus a gateway routing to it.

``infergw local up`` runs it in the foreground; ``infergw demo`` and the tests use
``LocalStack`` as an async context manager. Every process it starts is stopped on
exit, including when start-up fails half-way.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from infergw.deploy.triton.launcher import TritonServer
from infergw.gateway.app import Gateway
from infergw.gateway.core.config import GatewayConfig, parse_config

log = logging.getLogger(__name__)

EXAMPLE_MODELS = ("identity", "identity_int64", "minilm")
READY_TIMEOUT_S = 120.0


def local_config(triton_grpc: str, listen: Mapping[str, Any]) -> GatewayConfig:
    """Every example model routes to Triton; any other name is tried on Triton too."""
    models: dict[str, Any] = {name: {"backend": "triton"} for name in EXAMPLE_MODELS}
    models["*"] = {"backend": "triton"}
    return parse_config(
        {
            "listen": {"host": "127.0.0.1", **listen},
            "backends": {"triton": {"kind": "triton", "url": triton_grpc}},
            "models": models,
        }
    )


class LocalStack:
    def __init__(self, listen: Mapping[str, Any] | None = None) -> None:
        self.listen = dict(listen or {})
        self.triton = TritonServer()
        self.gateway: Gateway | None = None

    async def start(self) -> None:
        try:
            endpoints = await asyncio.to_thread(self.triton.start)
            self.gateway = Gateway(local_config(endpoints.grpc, self.listen))
            await self.gateway.start()
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        assert self.gateway is not None
        async with asyncio.timeout(READY_TIMEOUT_S):
            while not await self.gateway.router.ready():  # noqa: ASYNC110 - polling Triton
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
            self.gateway = None
        await asyncio.to_thread(self.triton.stop)

    def endpoints(self) -> dict[str, Any]:
        """The ready-file document (see the core issue and DESIGN.md)."""
        assert self.gateway is not None
        triton = self.triton.endpoints
        return {
            "gateway": dict(self.gateway.addresses),
            "backends": {"triton": {"grpc": triton.grpc, "http": triton.http}},
        }

    async def __aenter__(self) -> LocalStack:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def run_local_stack(
    stop: asyncio.Event, ready_file: Path | None, listen: Mapping[str, Any]
) -> None:
    async with LocalStack(listen) as stack:
        info = stack.endpoints()
        if ready_file is not None:
            tmp = ready_file.with_suffix(ready_file.suffix + ".tmp")
            tmp.write_text(json.dumps(info, indent=2))
            tmp.replace(ready_file)  # atomic: readers never see a partial file
        print(json.dumps(info), flush=True)
        log.info("local stack up; Ctrl-C to stop")
        await stop.wait()

"""The Cloud Run container: OIP gRPC over h2c on ``$PORT``, served by infergw itself.

The container is an ordinary infergw gateway process — ``GrpcFrontend`` in front of
``RuntimeBackend`` — so its ``server-timing`` trailer carries the model's ``compute``
and, on the first request after start, ``coldstart`` (process start -> models
loaded). Models load before the port is bound; ``READY <port>`` is printed once
serving (what the local stand-in waits for; harmless in the cloud). SIGTERM, which
Cloud Run sends before stopping an instance, drains in-flight calls and exits.

Environment::

    PORT            port to listen on (default 8080; 0 = any free port)
    INFERGW_HOST    address to bind (default 0.0.0.0, which Cloud Run requires)
    INFERGW_MODELS  comma-separated models to load (default: every example model)
    INFERGW_MAX_MESSAGE_BYTES  largest request accepted (default 64 MiB)

Run: ``python -m infergw.deploy.cloudrun.server``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping

from infergw.backends.runtime import RuntimeBackend
from infergw.gateway.core.config import LimitsConfig, RouteConfig
from infergw.gateway.core.router import Router
from infergw.gateway.core.service import InferenceService
from infergw.gateway.frontends.grpc import GrpcFrontend

log = logging.getLogger("infergw.cloudrun")

STOP_GRACE_S = 8.0  # Cloud Run allows 10 s between SIGTERM and SIGKILL


def build_service(models: tuple[str, ...] | None, limits: LimitsConfig) -> InferenceService:
    """The runtime behind a catch-all route, models loaded now (before we listen)."""
    backend = RuntimeBackend("runtime", models)
    backend.preload()
    router = Router(
        {"runtime": backend}, [RouteConfig(model="*", backend="runtime")], allow_pinning=False
    )
    return InferenceService(router, limits=limits, server_name="infergw-cloudrun")


async def serve(env: Mapping[str, str]) -> None:
    models = tuple(m.strip() for m in env.get("INFERGW_MODELS", "").split(",") if m.strip())
    default_limit = LimitsConfig().max_message_bytes
    limits = LimitsConfig(
        max_message_bytes=int(env.get("INFERGW_MAX_MESSAGE_BYTES", default_limit))
    )
    service = build_service(models or None, limits)
    frontend = GrpcFrontend(service, limits.max_message_bytes)
    port = frontend.add_port(f"{env.get('INFERGW_HOST', '0.0.0.0')}:{env.get('PORT', '8080')}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await frontend.start()
    try:
        print(f"READY {port}", flush=True)
        log.info("serving OIP gRPC (h2c) on port %d", port)
        await stop.wait()
    finally:
        await frontend.stop(STOP_GRACE_S)


def main() -> None:
    logging.basicConfig(level=os.environ.get("INFERGW_LOG_LEVEL", "INFO"))
    asyncio.run(serve(os.environ))


if __name__ == "__main__":
    main()

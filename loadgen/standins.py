"""Forcing a cold start: the local stand-ins' scale-to-zero routes, or waiting.

A ``--stack-ready-file`` is the JSON ``infergw local up --ready-file`` writes: it
names the stand-ins' endpoints, whose admin routes stop idle instances at once.
Real clouds scale to zero on their own after an idle period: ``--cold-wait``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

SERVERLESS = ("lambda", "sagemaker", "cloudrun")


def read_ready_file(path: str | Path) -> dict[str, Any]:
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the stack ready file {path}: {exc}") from exc
    if not isinstance(info, dict) or "gateway" not in info or "backends" not in info:
        raise ValueError(f"{path} is not an `infergw local up --ready-file` document")
    return info


async def scale_to_zero(info: dict[str, Any], backend: str, model: str) -> None:
    """Stop the idle instances of ``backend`` serving ``model`` on the local stack."""
    endpoints = info["backends"]
    if backend not in SERVERLESS or backend not in endpoints:
        raise ValueError(
            f"backend {backend!r} cannot be scaled to zero here; the ready file has "
            f"{sorted(b for b in endpoints if b in SERVERLESS)}"
        )
    if backend == "cloudrun":
        from infergw.deploy.local.cloudrun_standin import scale_to_zero as cloudrun_zero

        await cloudrun_zero(endpoints["cloudrun"]["grpc"])
        return
    kind = "functions" if backend == "lambda" else "endpoints"
    url = f"{endpoints[backend]['endpoint']}/_infergw/{kind}/infergw-{model}/scale-to-zero"
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(url, timeout=aiohttp.ClientTimeout(total=60)) as reply,
    ):
        body = await reply.read()
        if reply.status >= 300:
            raise RuntimeError(f"scale-to-zero {url}: HTTP {reply.status} {body[:200]!r}")


async def force_cold(
    info: dict[str, Any] | None, backend: str | None, model: str, wait_s: float | None
) -> None:
    """Scale to zero through the ready file's stand-ins, else wait ``wait_s`` seconds."""
    if info is not None and backend is not None:
        await scale_to_zero(info, backend, model)
    elif wait_s is not None:
        await asyncio.sleep(wait_s)
    else:
        raise ValueError(
            "cold needs --stack-ready-file with a serverless --backend, or --cold-wait"
        )

"""Forcing a cold start: the routes the stack's ready file names, or waiting.

A ``--stack-ready-file`` is the JSON ``infergw local up --ready-file`` writes. Each
backend that can be scaled to zero on request lists, under ``scale_to_zero``, one
HTTP URL per model; a POST to it stops that model's idle instances, so the next
request is a cold start. The load generator knows nothing else about the stand-ins:
whatever the ready file offers is one code path here. Real clouds scale to zero on
their own after an idle period: ``--cold-wait``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

SCALE_TO_ZERO = "scale_to_zero"  # the ready file's key: {model: URL} per backend
ADMIN_TIMEOUT_S = 60.0


def read_ready_file(path: str | Path) -> dict[str, Any]:
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the stack ready file {path}: {exc}") from exc
    if not isinstance(info, dict) or "gateway" not in info or "backends" not in info:
        raise ValueError(f"{path} is not an `infergw local up --ready-file` document")
    return info


def scalable(info: dict[str, Any]) -> list[str]:
    """The backends of the ready file that can be scaled to zero on request."""
    return sorted(
        name
        for name, entry in info["backends"].items()
        if isinstance(entry, dict) and entry.get(SCALE_TO_ZERO)
    )


def scale_to_zero_url(info: dict[str, Any], backend: str, model: str) -> str:
    entry = info["backends"].get(backend)
    routes = entry.get(SCALE_TO_ZERO) if isinstance(entry, dict) else None
    if not routes:
        raise ValueError(
            f"backend {backend!r} cannot be scaled to zero here; the ready file can scale "
            f"{scalable(info)}"
        )
    if model not in routes:
        raise ValueError(f"backend {backend!r} does not serve model {model!r} here")
    return str(routes[model])


async def scale_to_zero(info: dict[str, Any], backend: str, model: str) -> None:
    """Stop the idle instances of ``backend`` serving ``model`` on the local stack."""
    import aiohttp

    url = scale_to_zero_url(info, backend, model)
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, timeout=aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S)) as reply,
    ):
        body = await reply.read()
        if reply.status >= 300:
            raise RuntimeError(f"scale-to-zero {url}: HTTP {reply.status} {body[:200]!r}")


async def force_cold(
    info: dict[str, Any] | None, backend: str | None, model: str, wait_s: float | None
) -> None:
    """Scale to zero through the ready file when it can, else wait ``wait_s`` seconds."""
    if info is not None and backend is not None and (wait_s is None or backend in scalable(info)):
        await scale_to_zero(info, backend, model)  # a backend it cannot scale: a clear error
    elif wait_s is not None:
        await asyncio.sleep(wait_s)
    else:
        raise ValueError(
            "cold needs --stack-ready-file with a serverless --backend, or --cold-wait"
        )

"""Per-request backend splits that arrive after the response (Triton behind the gateway).

Triton reports no timing in its responses; the gateway learns each request's
``backend_queue`` and ``compute`` from Triton's spans shortly afterwards and serves them
at ``GET /v1/splits`` on its metrics port, by trace id. So the load generator sends
every request with a ``traceparent`` of its own: trace id = a random run prefix + the
request's sequence number, which is all it keeps per request (``Recorder``). After the
window it fetches the run's splits by prefix, waiting while the gateway still expects
spans for some of them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SPLITS_PATH = "/v1/splits"
READY_FILE_KEY = "splits"  # {"url": the gateway's metrics origin, "receiver": ...}
POLL_S = 0.25
FETCH_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class TraceIds:
    """The run's trace ids: ``prefix`` (16 hex digits) + the request's sequence number."""

    prefix: str

    @classmethod
    def new(cls) -> TraceIds:
        return cls(secrets.token_hex(8))

    def traceparent(self, seq: int) -> str:
        return f"00-{self.prefix}{seq:016x}-{seq + 1:016x}-01"

    def seq(self, trace_id: str) -> int | None:
        if len(trace_id) != 32 or not trace_id.startswith(self.prefix):
            return None
        try:
            return int(trace_id[16:], 16)
        except ValueError:
            return None


def url_from_ready_file(info: dict[str, Any], address: str) -> str | None:
    """The gateway's metrics endpoint from an ``infergw local up`` ready file, when the run
    targets that gateway (``address``) and it receives Triton's spans."""
    gateway, splits = info.get("gateway") or {}, info.get(READY_FILE_KEY) or {}
    if not splits.get("url") or address not in (gateway.get("grpc"), gateway.get("http")):
        return None
    return str(splits["url"])


# seq -> (backend_queue_ms, compute_ms), summed over the request's attempts.
Splits = dict[int, tuple[float, float]]


def parse(document: Any, ids: TraceIds) -> Splits:
    """The known splits of ``/v1/splits``' answer (an attempt with a null value makes its
    request unknown: it is left out)."""
    found: Splits = {}
    for trace_id, attempts in (document.get("splits") or {}).items():
        seq = ids.seq(str(trace_id))
        if seq is None or not attempts:
            continue
        queue = [a.get("backend_queue_ms") for a in attempts]
        compute = [a.get("compute_ms") for a in attempts]
        if None in queue or None in compute:
            continue
        found[seq] = (float(sum(queue)), float(sum(compute)))
    return found


async def fetch(url: str, ids: TraceIds, wait_s: float) -> Splits | None:
    """The run's splits from the gateway's metrics endpoint ``url`` (``http://HOST:PORT``).

    Polls while some are pending, up to ``wait_s``. ``None`` when the endpoint has no
    splits to give (not a gateway receiving Triton's spans): the caller falls back to
    window means.
    """
    import aiohttp

    query = f"{url.rstrip('/')}{SPLITS_PATH}?prefix={ids.prefix}"
    deadline = time.monotonic() + wait_s
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            try:
                async with session.get(query) as reply:
                    if reply.status != 200:
                        log.info("no per-request splits from %s: HTTP %d", url, reply.status)
                        return None
                    document = await reply.json()
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.info("no per-request splits from %s: %s", url, type(exc).__name__)
                return None
            if not document.get("pending") or time.monotonic() >= deadline:
                return parse(document, ids)
            await asyncio.sleep(POLL_S)

"""Server-side statistics the way Triton's perf_analyzer collects them.

Triton's statistics extension counts cumulative totals per model (requests, and
nanoseconds spent queued and in compute input/infer/output). Fetching it right
before and right after a measurement window and diffing gives the server's view of
exactly that window. Endpoints without the extension (or that lock it) are skipped:
the run then reports ``server_stats: null``.
"""

from __future__ import annotations

import logging
from typing import Any

from infergw.vocab.types import ModelStatistics
from infergw.wire.protocols import Protocol

log = logging.getLogger(__name__)
STATS_TIMEOUT_S = 10.0


async def fetch(protocol: Protocol, address: str, model: str) -> ModelStatistics | None:
    """The model's cumulative statistics, or None when the endpoint has none."""
    from infergw.clients.factory import connect_async
    from infergw.vocab.errors import InferGWError

    client = connect_async(protocol, address, timeout=STATS_TIMEOUT_S)
    try:
        stats = await client.model_statistics(model)
    except (InferGWError, OSError) as exc:
        log.info("no server statistics from %s: %s", address, exc)
        return None
    finally:
        await client.close()
    # Several versions may be listed: sum them (a window touches whichever serves).
    matching = [s for s in stats if s.name == model]
    if not matching:
        return None
    return _sum(matching)


def _sum(stats: list[ModelStatistics]) -> ModelStatistics:
    if len(stats) == 1:
        return stats[0]
    from infergw.vocab.types import Duration

    def total(key: str) -> Duration:
        ds = [getattr(s, key) for s in stats]
        return Duration(sum(d.count for d in ds), sum(d.ns for d in ds))

    return ModelStatistics(
        name=stats[0].name,
        inference_count=sum(s.inference_count for s in stats),
        execution_count=sum(s.execution_count for s in stats),
        success=total("success"),
        fail=total("fail"),
        queue=total("queue"),
        compute_input=total("compute_input"),
        compute_infer=total("compute_infer"),
        compute_output=total("compute_output"),
    )


def diff(before: ModelStatistics | None, after: ModelStatistics | None) -> dict[str, Any] | None:
    """Means over the window, in ms, as the result schema's ``server_stats``."""
    if before is None or after is None:
        return None
    count = after.success.count - before.success.count
    if count <= 0:
        return None

    def mean_ms(key: str) -> float:
        return (getattr(after, key).ns - getattr(before, key).ns) / count / 1e6

    compute_input, compute_infer, compute_output = (
        mean_ms(k) for k in ("compute_input", "compute_infer", "compute_output")
    )
    return {
        "count": count,
        "queue_ms_mean": mean_ms("queue"),
        "compute_ms_mean": compute_input + compute_infer + compute_output,
        "compute_input_ms_mean": compute_input,
        "compute_infer_ms_mean": compute_infer,
        "compute_output_ms_mean": compute_output,
        "success_ms_mean": mean_ms("success"),
        "failed": after.fail.count - before.fail.count,
        "executions": after.execution_count - before.execution_count,
    }


class StatsWindow:
    """Fetch before (``begin``, used as the loops' ``on_measure_start``) and after."""

    def __init__(self, protocol: Protocol, address: str, model: str, enabled: bool = True) -> None:
        self.protocol, self.address, self.model, self.enabled = protocol, address, model, enabled
        self.before: ModelStatistics | None = None

    async def begin(self) -> None:
        if self.enabled:
            self.before = await fetch(self.protocol, self.address, self.model)
            self.enabled = self.before is not None  # not implemented: do not ask again

    async def end(self) -> dict[str, Any] | None:
        if not self.enabled or self.before is None:
            return None
        return diff(self.before, await fetch(self.protocol, self.address, self.model))

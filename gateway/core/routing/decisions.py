"""Why an attempt was made, and where routing decisions are counted.

The reason travels in the attempt's Server-Timing ``backend`` entry,
``backend=NAME;attempt=N;reason=spill|fallback|hedge|retry``. A route's first choice
(``primary``, ``weighted``) adds no ``reason=``: its entry reads as it always did.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol


class Reason(StrEnum):
    PRIMARY = "primary"  # the route's first choice (spill-over's primary, the first in order)
    WEIGHTED = "weighted"  # the weighted split's pick
    SPILL = "spill"  # the primary could not start it in time: an overflow backend
    FALLBACK = "fallback"  # the one before failed (or is ejected): the next in order
    HEDGE = "hedge"  # no answer within the hedge delay: one more backend at once
    RETRY = "retry"  # the same backend again, within its retry policy and budget

    @property
    def in_timing(self) -> bool:
        """Whether the Server-Timing entry names this reason (not a route's first choice)."""
        return self not in (Reason.PRIMARY, Reason.WEIGHTED)


class DecisionSink(Protocol):
    """Counts decisions (the lead wires Prometheus: route, backend, reason labels)."""

    def record(self, route: str, backend: str, reason: Reason) -> None: ...


class NoDecisions:
    """A sink that keeps nothing."""

    def record(self, route: str, backend: str, reason: Reason) -> None:
        return None


NO_DECISIONS = NoDecisions()

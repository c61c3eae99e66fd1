"""Where the time of one request went, as the client sees it (design brief §2).

The gateway reports its phases in W3C Server-Timing syntax (REST header, gRPC
trailer); the client measures end-to-end itself. ``TimingBreakdown`` puts the two
side by side and derives *protocol*: the time that is neither queueing nor cold
start nor model execution, i.e. serialisation, transfer and everything the gateway
does around the backend call. It is shared by the four clients and the load
generator, so the arithmetic exists once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from infergw.vocab.timing import PHASES, TimingEntry
from infergw.wire.server_timing import answered_by, parse_server_timing

__all__ = ["NOT_PROTOCOL", "TimingBreakdown", "TimingEntry"]

# Phases subtracted from end-to-end to obtain protocol time. Only the ones the
# server actually reported are subtracted: a phase nobody measured is not zero,
# it is unknown, and protocol then honestly includes it.
NOT_PROTOCOL = ("queue", "backend_queue", "coldstart", "compute")


@dataclass(frozen=True, slots=True)
class TimingBreakdown:
    """Client-measured end-to-end time plus the server's Server-Timing entries.

    ``entries`` keeps every entry as received, so retries, hedges and fallbacks
    stay distinguishable through their ``description`` (``backend=NAME;attempt=N``);
    ``server`` sums entries per phase for tables.

    ``end_to_end_ms`` is ``time.perf_counter`` around the whole client call,
    including the client's own encoding of inputs and decoding of outputs, since
    those are part of what choosing a protocol costs.
    """

    end_to_end_ms: float
    entries: tuple[TimingEntry, ...] = ()

    @classmethod
    def from_server_timing(cls, end_to_end_ms: float, header: str | None) -> TimingBreakdown:
        """Build from a raw Server-Timing value (None or "" when the server sent none)."""
        entries = tuple(parse_server_timing(header)) if header else ()
        return cls(end_to_end_ms, entries)

    @property
    def answered_by(self) -> tuple[str, str] | None:
        """(backend, reason) of the attempt that answered (``reason``: ``primary``,
        ``spill``, ``fallback``, ``hedge`` or ``retry``); None when the server says not."""
        return answered_by(self.entries)

    @property
    def backend(self) -> str | None:
        """The backend that answered, when the gateway says."""
        answer = self.answered_by
        return None if answer is None else answer[0]

    @property
    def server(self) -> dict[str, float]:
        """Phase name -> milliseconds, summed over all entries of that phase."""
        totals: dict[str, float] = {}
        for entry in self.entries:
            totals[entry.name] = totals.get(entry.name, 0.0) + entry.duration_ms
        return totals

    @property
    def protocol_ms(self) -> float:
        """End-to-end minus queue, backend_queue, coldstart and compute, where measured.

        With no Server-Timing at all this equals end-to-end. Phases are summed over
        attempts; for *parallel* attempts (hedging) that sum can exceed the wall
        time those attempts took, so protocol may then be underestimated or even
        negative. It is not clamped: a clamped value would be an invented one.
        """
        server = self.server
        return self.end_to_end_ms - sum(server[p] for p in NOT_PROTOCOL if p in server)

    @property
    def backend_attempts(self) -> int:
        """How many ``backend`` round trips the gateway reported (0 if none)."""
        return sum(1 for e in self.entries if e.name == "backend")

    def as_dict(self) -> dict[str, float]:
        """Flat ``{"end_to_end_ms", "protocol_ms", "<phase>_ms"...}`` for tables and JSON.

        Only measured phases appear; known phases come in the brief's order, any
        others the server sent follow in the order received.
        """
        server = self.server
        out = {"end_to_end_ms": self.end_to_end_ms, "protocol_ms": self.protocol_ms}
        for phase in _ordered(server):
            out[f"{phase}_ms"] = server[phase]
        return out


def _ordered(names: Iterable[str]) -> list[str]:
    present = list(names)
    known = [p for p in PHASES if p in present]
    return known + [n for n in present if n not in PHASES]

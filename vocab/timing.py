"""Per-request timing in the Server-Timing vocabulary of the design brief (§2).

``Timings`` records phases as they happen, in milliseconds. Nothing here is ever
estimated: a phase appears only if measured. The W3C Server-Timing syntax these
travel in (REST header, gRPC ``server-timing`` trailer) is ``infergw.wire.server_timing``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

PHASES = (
    "total",
    "decode",
    "queue",
    "backend",
    "offload",
    "coldstart",
    "backend_queue",
    "compute",
    "encode",
)
# Phases reported by the backend itself, i.e. time inside "backend".
BACKEND_REPORTED = ("coldstart", "backend_queue", "compute")


class TimingEntry(NamedTuple):
    """One measured phase. A NamedTuple: immutable and cheap to create per request."""

    name: str
    duration_ms: float
    description: str = ""


class Timings:
    """Mutable, append-only record of a request's phases (one per request)."""

    __slots__ = ("_entries", "started")

    def __init__(self, started: float | None = None) -> None:
        self.started = time.perf_counter() if started is None else started
        self._entries: list[TimingEntry] = []

    def add(self, name: str, duration_ms: float, description: str = "") -> None:
        self._entries.append(TimingEntry(name, duration_ms, description))

    def add_since(self, name: str, t0: float, description: str = "") -> float:
        """Add the time since ``t0`` (a perf_counter value); returns now. The hot-path form."""
        now = time.perf_counter()
        self._entries.append(TimingEntry(name, (now - t0) * 1000.0, description))
        return now

    @contextmanager
    def measure(self, name: str, description: str = "") -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - t0) * 1000.0, description)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    @property
    def entries(self) -> tuple[TimingEntry, ...]:
        return tuple(self._entries)

    def get(self, name: str) -> float | None:
        """Sum of all entries of one phase, or None if it was never measured."""
        values = [e.duration_ms for e in self._entries if e.name == name]
        return sum(values) if values else None

"""Per-request timing in the Server-Timing vocabulary of the design brief (§2).

``Timings`` records phases as they happen; ``format_server_timing`` and
``parse_server_timing`` convert to and from the W3C Server-Timing syntax used for
both the REST header and the gRPC ``server-timing`` trailer. Durations are in
milliseconds. Nothing here is ever estimated: a phase appears only if measured.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
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

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


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


@lru_cache(maxsize=1024)  # descriptions repeat (backend=NAME;attempt=N)
def _quote(value: str) -> str:
    if _TOKEN.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_server_timing(entries: Iterable[TimingEntry]) -> str:
    return ", ".join(
        f"{name};dur={dur:.3f};desc={_quote(desc)}" if desc else f"{name};dur={dur:.3f}"
        for name, dur, desc in entries
    )


_PARAM = re.compile(r'\s*;\s*([^=;,\s]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;,]*))?')


def parse_server_timing(header: str) -> list[TimingEntry]:
    """Parse a Server-Timing value; malformed items are skipped, not fatal."""
    entries: list[TimingEntry] = []
    for item in _split_items(header):
        name, _, rest = item.partition(";")
        name = name.strip()
        if not name or not _TOKEN.match(name):
            continue
        dur = 0.0
        desc = ""
        for m in _PARAM.finditer(";" + rest):
            key, value = m.group(1).lower(), (m.group(2) or "").strip()
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if key == "dur":
                try:
                    dur = float(value)
                except ValueError:
                    dur = 0.0
            elif key == "desc":
                desc = value
        entries.append(TimingEntry(name, dur, desc))
    return entries


def _split_items(header: str) -> Iterator[str]:
    """Split on commas that are not inside a quoted string."""
    start, quoted, escaped = 0, False, False
    for i, ch in enumerate(header):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = quoted
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            yield header[start:i]
            start = i + 1
    yield header[start:]

"""The W3C Server-Timing syntax: the REST ``Server-Timing`` header and the gRPC trailer.

One formatter, one parser and one join for every place a breakdown is written, read
or combined (frontends, sidecar, backends that report their own phases, the SDK, the
load generator). A value may arrive split over repeated headers or trailers; per RFC
9110 that is one comma-separated list, which ``join_server_timing`` rebuilds. A hop
that adds entries of its own (the sidecar) sends them as one more value after the
upstream's (``append_server_timing``): never merged into the upstream's, so a reader
can still tell whose split is whose, and a reader that joins sees every entry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container, Iterable, Iterator
from functools import lru_cache
from typing import TypeAlias

from infergw.vocab.timing import TimingEntry

HEADER = "Server-Timing"  # REST (case-insensitive)
TRAILER = "server-timing"  # gRPC trailing metadata (keys are lower-case)

Metadata: TypeAlias = Iterable[tuple[str, str | bytes]]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


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


def parse_server_timing(header: str, *, timed_only: bool = False) -> list[TimingEntry]:
    """Parse a Server-Timing value; malformed items are skipped, not fatal. An entry with
    no valid ``dur`` has 0, as W3C's parsing gives it; ``timed_only`` skips it instead
    and one whose ``dur`` is negative or not finite (what a backend reports of its own
    phases: a phase it gave no duration for is not a duration of 0 in the metrics; the
    native plane's rule too)."""
    entries: list[TimingEntry] = []
    for item in _split_items(header):
        name, _, rest = item.partition(";")
        name = name.strip()
        if not name or not _TOKEN.match(name):
            continue
        dur: float | None = None
        desc = ""
        for m in _PARAM.finditer(";" + rest):
            key, value = m.group(1).lower(), (m.group(2) or "").strip()
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if key == "dur":
                dur = _duration(value)
            elif key == "desc":
                desc = value
        if not timed_only:
            entries.append(TimingEntry(name, 0.0 if dur is None else dur, desc))
        elif dur is not None and math.isfinite(dur) and dur >= 0:
            entries.append(TimingEntry(name, dur, desc))
    return entries


def _duration(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


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


def join_server_timing(values: Iterable[str | bytes | None]) -> str | None:
    """One value from repeated headers/trailers; None when none carried anything."""
    parts = (v.decode() if isinstance(v, bytes) else v for v in values)
    return ", ".join(p for p in parts if p and p.strip()) or None


def server_timing_from_metadata(metadata: Metadata | None) -> str | None:
    """The joined ``server-timing`` value of gRPC (trailing) metadata, or None."""
    return join_server_timing(v for k, v in metadata or () if k == TRAILER)


def append_server_timing(
    metadata: Metadata | None, value: str
) -> tuple[tuple[str, str | bytes], ...]:
    """``metadata`` as it came (the upstream's own ``server-timing`` included), ours last."""
    return (*(metadata or ()), (TRAILER, value))


def select_entries(entries: Iterable[TimingEntry], names: Container[str]) -> list[TimingEntry]:
    """The entries whose phase is one of ``names`` (e.g. what a backend may report)."""
    return [e for e in entries if e.name in names]


PRIMARY = "primary"  # the reason of an attempt that names none: the route's first choice


def answered_by(entries: Iterable[TimingEntry]) -> tuple[str, str] | None:
    """(backend, reason) of the attempt that answered, or None when nothing says.

    The gateway names the backend that answered in ``total`` (``desc="backend=NAME"``);
    the reason is that of the backend's last ``backend`` entry (``reason=spill``,
    ``fallback``, ``hedge``, ``retry``; ``primary`` when it names none).
    """
    backend = reason = None
    items = list(entries)
    for entry in items:
        if entry.name == "total":
            backend = _desc_value(entry.description, "backend")
    if not backend:
        return None
    for entry in items:
        if entry.name == "backend" and _desc_value(entry.description, "backend") == backend:
            reason = _desc_value(entry.description, "reason")
    return backend, reason or PRIMARY


def _desc_value(description: str, key: str) -> str | None:
    """``value`` of ``key=value`` in a ``;``-separated description."""
    for part in description.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    return None

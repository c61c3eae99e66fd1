"""The W3C Server-Timing syntax: the REST ``Server-Timing`` header and the gRPC trailer.

One formatter and one parser for every place a breakdown is written or read
(frontends, sidecar, backends that report their own phases, the SDK).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import lru_cache

from infergw.vocab.timing import TimingEntry

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

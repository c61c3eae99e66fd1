"""A dependency-free progress bar on stderr, for runs longer than a few seconds.

Scenarios announce stages (``stage``); the loops report the fraction of the current
stage (``update``). Drawing is throttled and happens only on a terminal unless
forced, so logs and CI output stay clean.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


class Progress:
    def __init__(
        self, enabled: bool | None = None, stream: TextIO | None = None, min_s: float = 3.0
    ) -> None:
        """``enabled=None``: draw when ``stream`` is a terminal. Nothing is drawn during
        the first ``min_s`` seconds, so short runs print no bar at all."""
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.min_s = min_s
        self._t0 = time.monotonic()
        self._label = ""
        self._index = 0
        self._total = 1
        self._drawn = False
        self._last = 0.0

    def stage(self, index: int, total: int, label: str) -> None:
        """Stage ``index`` (0-based) of ``total`` starts."""
        self._index, self._total, self._label = index, max(total, 1), label
        self.update(0.0, "")

    def update(self, fraction: float, detail: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._t0 < self.min_s or now - self._last < 0.2:
            return
        self._last = now
        overall = (self._index + min(max(fraction, 0.0), 1.0)) / self._total
        filled = int(overall * WIDTH)
        bar = "#" * filled + "." * (WIDTH - filled)
        line = f"\r[{bar}] {overall * 100:5.1f}% {self._label} {detail}"
        self.stream.write(line[:120].ljust(100))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
            self._drawn = False

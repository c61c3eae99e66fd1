"""One-second window aggregates and the steady-state detector of the ``scale`` scenario.

Windows are what lets memory stay flat on long runs: per second a few counters and
a coarse (2 significant digits) latency histogram, never per-request samples.
Arrivals count in the window of their intended send time; completions in the window
they completed in, so a stall shows up where the user felt it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from infergw.loadgen.histogram import Histogram

WINDOW_DIGITS = 2  # 1% buckets: plenty for a per-second p95 and ~100x smaller than 3 digits


@dataclass(slots=True)
class Window:
    """Counters of one window; ``t`` is its start in seconds from the run's start."""

    t: float
    offered: int = 0  # arrivals scheduled in this window (open loop) / requests started
    ok: int = 0  # successful completions in this window
    errors: int = 0  # failed completions in this window
    dropped: int = 0  # arrivals refused by the max-outstanding bound
    latency: Histogram = field(default_factory=lambda: Histogram(WINDOW_DIGITS))
    answered: Counter[str] = field(default_factory=Counter)  # "backend/reason" -> ok count

    def as_dict(self) -> dict[str, float | int | dict[str, int] | None]:
        p50, p95 = self.latency.percentiles((50, 95))
        return {
            "t": self.t,
            "offered": self.offered,
            "achieved": self.ok,
            "ok": self.ok,
            "errors": self.errors + self.dropped,
            "p50_ms": None if math.isnan(p50) else p50,
            "p95_ms": None if math.isnan(p95) else p95,
            "answered": dict(self.answered),
        }


class TimeSeries:
    """Windows of ``window_s`` seconds keyed by their index from the run's start."""

    def __init__(self, start: float, window_s: float = 1.0) -> None:
        self.start = start
        self.window_s = window_s
        self._windows: dict[int, Window] = {}
        self._current = Window(0.0)
        self._until = -1.0  # the current window is valid for start <= when < _until

    def at(self, when: float) -> Window:
        if self._until - self.window_s <= when < self._until:
            return self._current  # the common case: the same second as the last call
        index = max(0, int((when - self.start) / self.window_s))
        window = self._windows.get(index)
        if window is None:
            window = self._windows[index] = Window(index * self.window_s)
        self._current = window
        self._until = self.start + (index + 1) * self.window_s
        return window

    def windows(self) -> list[Window]:
        """Every window from the first to the last, empty ones included."""
        if not self._windows:
            return []
        last = max(self._windows)
        return [self._windows.get(i) or Window(i * self.window_s) for i in range(last + 1)]


def steady_state(
    windows: Sequence[Window],
    slo_ms: float,
    span: int = 10,
    min_success: float = 0.99,
) -> float | None:
    """First time from which every sliding span of ``span`` windows meets the SLO.

    A span meets it when its success ratio ok / (ok + errors + dropped) is at least
    ``min_success`` and the p95 of the latencies completed in it is within ``slo_ms``.
    Returns the start ``t`` of the first span from which all later full spans meet it,
    or None if even the last full span does not (or the run is shorter than a span).
    A span with no traffic at all does not meet it: silence is not a steady state.
    """
    return steady_state_verdict(windows, slo_ms, span, min_success).at_s


@dataclass(frozen=True, slots=True)
class SteadyState:
    """When the run reached steady state (``at_s``; None: never), and the last span that
    did not meet the SLO: its start ``failed_at_s`` and which criterion it missed."""

    at_s: float | None
    failed_at_s: float | None = None
    failed_because: str | None = None

    def as_dict(self) -> dict[str, float | str | None]:
        return {"at_s": self.at_s, "failed_at_s": self.failed_at_s, "why": self.failed_because}


def steady_state_verdict(
    windows: Sequence[Window], slo_ms: float, span: int = 10, min_success: float = 0.99
) -> SteadyState:
    """``steady_state``, saying why the span just before it (or the last one) failed."""
    if span < 1 or len(windows) < span:
        return SteadyState(None, None, f"the run is shorter than one span of {span} windows")
    answer: float | None = None
    # Walk backwards: the answer is the start of the longest run of good spans ending last.
    for start in range(len(windows) - span, -1, -1):
        problem = _span_problem(windows[start : start + span], slo_ms, min_success)
        if problem is not None:
            return SteadyState(answer, windows[start].t, problem)
        answer = windows[start].t
    return SteadyState(answer)


def _span_problem(span: Sequence[Window], slo_ms: float, min_success: float) -> str | None:
    """Why a span does not meet the SLO (None: it does)."""
    ok = sum(w.ok for w in span)
    failed = sum(w.errors + w.dropped for w in span)
    if ok + failed == 0:
        return "no traffic"
    if ok / (ok + failed) < min_success:
        return f"success {ok / (ok + failed):.3f} < {min_success:g} ({failed} failed)"
    merged = Histogram(WINDOW_DIGITS)
    for w in span:
        merged.merge(w.latency)
    p95 = merged.percentile(95)
    return f"p95 {p95:,.0f} ms > SLO {slo_ms:g} ms" if p95 > slo_ms else None

"""Arrival traces: real ones (packaged, or any CSV), their statistics, and 2-state MMPP fits.

A trace here is a sorted float64 numpy array of arrival offsets in seconds from the
trace's origin (the first timestamp; the first interval's start for per-interval
counts). The open loop replays it as a schedule (``iter(arrivals)``).

- ``load(source)``: a packaged trace by name (``azure-code``, ``azure-conv``: the Azure
  LLM inference trace 2023, CC-BY 4.0, see ``trace_data/README.md``) or a CSV file of
  timestamps (ISO date-times, or numbers in s or ms; a header row is recognised);
  ``read_counts`` reads a CSV of per-interval counts and spreads them, seeded.
- ``describe``: mean rate and p50/p99/max of the window rate (what the README table says).
- ``speedup`` and ``window``: compress time, or keep a slice of the trace.
- ``fit_mmpp``: a 2-state MMPP with the trace's mean rate, index of dispersion of counts
  and lag-1 autocorrelation of counts at one window; ``MmppFit.schedule`` generates it
  with ``schedules.mmpp``.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from infergw.loadgen import schedules

__all__ = [
    "DATA",
    "NAMED",
    "MmppFit",
    "RateStats",
    "describe",
    "dispersion",
    "fit_mmpp",
    "lag1_autocorrelation",
    "load",
    "mmpp_moments",
    "packaged",
    "read_counts",
    "read_timestamps",
    "speedup",
    "window",
    "window_counts",
]

NAMED = {"azure-code": "azure_llm_2023_code.csv", "azure-conv": "azure_llm_2023_conv.csv"}
SPREADS = ("uniform", "poisson", "even")
# Not "traces/": mypy would take a folder named like this module for the module itself.
DATA = "trace_data"
_UNITS = {"s": 1.0, "ms": 1e-3}


# --- loading -------------------------------------------------------------------------


def packaged(name: str) -> np.ndarray:
    """A trace shipped with the package, by name (``NAMED``)."""
    if name not in NAMED:
        raise ValueError(f"unknown trace {name!r}: packaged traces are {', '.join(NAMED)}")
    ref = resources.files("infergw.loadgen").joinpath(DATA, NAMED[name])
    with resources.as_file(ref) as path:
        return read_timestamps(path)


def load(source: str | Path, unit: str = "s") -> np.ndarray:
    """A packaged trace when ``source`` is one of its names, else a CSV of timestamps."""
    if str(source) in NAMED and not Path(source).exists():
        return packaged(str(source))
    return read_timestamps(source, unit)


def read_timestamps(path: str | Path, unit: str = "s") -> np.ndarray:
    """Arrival offsets from a CSV with one timestamp per row.

    The timestamp is the first column whose header contains ``time`` (``TIMESTAMP`` in
    the Azure files), else the first column; a first row that does not parse is that
    header. Cells are numbers in ``unit`` (``s`` or ``ms``) or ISO date-times (naive
    ones taken as UTC, so a daylight-saving change cannot bend the trace).
    """
    scale = _UNITS.get(unit)
    if scale is None:
        raise ValueError("trace unit must be 's' or 'ms'")
    rows = _rows(path)
    column = 0
    if rows and _cell_kind(rows[0][1][0]) is None:  # a header row
        header = [cell.strip().lower() for cell in rows.pop(0)[1]]
        column = next((i for i, name in enumerate(header) if "time" in name), 0)
    if not rows:
        raise ValueError(f"{path}: no timestamps")
    kind = _cell_kind(_cell(rows[0], column, path))
    values: list[float] = []
    origin: dt.datetime | None = None
    for row in rows:
        cell = _cell(row, column, path)
        if kind == "number":
            values.append(_parse(float, cell, row[0], path) * scale)
            continue
        stamp = _parse(dt.datetime.fromisoformat, cell, row[0], path)
        stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
        origin = origin or stamp
        values.append((stamp - origin).total_seconds())
    arrivals = np.sort(np.asarray(values, dtype=np.float64))
    return arrivals - arrivals[0]


def read_counts(
    path: str | Path, interval_s: float = 1.0, spread: str = "uniform", seed: int = 0
) -> np.ndarray:
    """Arrivals from a CSV of per-interval counts (the last column; one row an interval).

    Row i covers [i*interval_s, (i+1)*interval_s). ``spread``: ``uniform`` places each
    interval's count at independent uniform times inside it (the count is kept);
    ``poisson`` takes the count as the interval's mean and draws a Poisson number of
    uniform arrivals (a Poisson process at that rate; counts may be fractional);
    ``even`` spaces them evenly (deterministic). Seeded: same seed, same arrivals.
    """
    _positive(interval_s, "interval")
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {', '.join(SPREADS)}")
    rows = _rows(path)
    if rows and _cell_kind(rows[0][1][-1]) != "number":
        rows.pop(0)  # a header row
    counts = np.array([_parse(float, row[1][-1], row[0], path) for row in rows])
    if counts.size == 0 or np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError(f"{path}: counts must be finite numbers >= 0, one row per interval")
    rng = np.random.default_rng(seed)
    if spread == "poisson":
        n = rng.poisson(counts)
    else:
        n = np.rint(counts).astype(np.int64)
        if np.any(np.abs(n - counts) > 1e-9):
            raise ValueError(f"{path}: fractional counts need spread 'poisson'")
    interval = np.repeat(np.arange(counts.size, dtype=np.float64), n)
    if spread == "even":
        rank = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        within = (rank + 0.5) / np.repeat(n, n)
    else:
        within = rng.random(interval.size)
    return np.sort((interval + within) * interval_s)


Row = tuple[int, list[str]]  # (line number, cells)


def _rows(path: str | Path) -> list[Row]:
    """Non-empty, non-comment rows with their line numbers (for error messages)."""
    try:
        with Path(path).open(newline="") as f:
            return [
                (i, row)
                for i, row in enumerate(csv.reader(f), 1)
                if row and row[0].strip() and not row[0].lstrip().startswith("#")
            ]
    except OSError as exc:
        raise ValueError(f"trace {path}: {exc.strerror or exc}") from None


def _cell(row: Row, column: int, path: str | Path) -> str:
    if column >= len(row[1]):
        raise ValueError(f"{path}:{row[0]}: no column {column + 1}")
    return row[1][column]


def _cell_kind(cell: str) -> str | None:
    for kind, parse in (("number", float), ("datetime", dt.datetime.fromisoformat)):
        try:
            parse(cell.strip())
        except ValueError:
            continue
        return kind
    return None


def _parse(parse: Any, cell: str, line: int, path: str | Path) -> Any:
    try:
        return parse(cell.strip())
    except ValueError:
        raise ValueError(f"{path}:{line}: cannot read {cell!r}") from None


# --- statistics ------------------------------------------------------------------------


@dataclass(frozen=True)
class RateStats:
    """How busy a trace is: its mean rate and the spread of its window rates."""

    arrivals: int
    span_s: float
    mean_rate: float  # arrivals / span
    window_s: float
    p50: float  # window rates (per second), nearest rank: an observed window's rate
    p99: float
    max: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_counts(arrivals: np.ndarray, window_s: float, *, full_only: bool = False) -> np.ndarray:
    """Arrivals in [k w, (k+1) w) for every window from 0 to the last arrival's.

    ``full_only`` drops the last window when it is cut short by the trace's end, for
    statistics a short window would bias (dispersion, autocorrelation).
    """
    _positive(window_s, "window")
    span = float(arrivals[-1]) if arrivals.size else 0.0
    n = int(span // window_s) if full_only else int(span // window_s) + 1
    counts = np.bincount((arrivals // window_s).astype(np.int64), minlength=n + 1)
    return counts[:n]


def describe(arrivals: np.ndarray, window_s: float = 10.0) -> RateStats:
    """Mean rate and p50/p99/max of the ``window_s`` window rate (all windows, empty too).

    Percentiles are nearest-rank (numpy's ``inverted_cdf``): each is a rate some window
    really had, as in ``trace_data/README.md``.
    """
    if arrivals.size < 2:
        raise ValueError("a trace needs at least 2 arrivals")
    span = float(arrivals[-1] - arrivals[0])
    rates = window_counts(arrivals - arrivals[0], window_s) / window_s
    p50, p99 = np.percentile(rates, [50, 99], method="inverted_cdf")
    return RateStats(
        arrivals=int(arrivals.size),
        span_s=span,
        mean_rate=arrivals.size / span,
        window_s=window_s,
        p50=float(p50),
        p99=float(p99),
        max=float(rates.max()),
    )


def dispersion(arrivals: np.ndarray, window_s: float) -> float:
    """Index of dispersion of counts at ``window_s``: variance / mean (Poisson: 1)."""
    c = _full_counts(arrivals, window_s)
    return float(c.var() / c.mean())


def lag1_autocorrelation(arrivals: np.ndarray, window_s: float) -> float:
    """Sample autocorrelation of consecutive window counts (Poisson: 0)."""
    c = _full_counts(arrivals, window_s)
    d = c - c.mean()
    return float(np.dot(d[:-1], d[1:]) / np.dot(d, d))


def _full_counts(arrivals: np.ndarray, window_s: float) -> np.ndarray:
    c = window_counts(arrivals, window_s, full_only=True).astype(np.float64)
    if c.size < 3 or c.sum() == 0:
        raise ValueError(f"the trace is too short for {window_s:g} s windows")
    return c


# --- compression -------------------------------------------------------------------------


def speedup(arrivals: np.ndarray, factor: float) -> np.ndarray:
    """Time compressed ``factor`` times (2: the same arrivals in half the time)."""
    _positive(factor, "speedup")
    return arrivals / factor


def scale_rate(arrivals: np.ndarray, factor: float, seed: int = 0) -> np.ndarray:
    """The rate scaled ``factor`` times on the same clock, seeded: each arrival is sent
    ``floor(factor)`` times and once more with probability ``frac(factor)`` (so 0.5 keeps
    half the arrivals), the copies spread uniformly over the gap to the next arrival, so
    bursts stay bursts and quiet stays quiet."""
    _positive(factor, "rate scale")
    if factor == 1.0 or arrivals.size == 0:
        return arrivals
    rng = np.random.default_rng(seed)
    copies = np.floor(factor) + (rng.random(arrivals.size) < factor - np.floor(factor))
    copies = copies.astype(np.int64)
    gaps = np.diff(arrivals, append=arrivals[-1])
    starts = np.repeat(arrivals, copies)
    first = np.zeros(starts.size, dtype=bool)  # each arrival's first copy keeps its time
    first[np.cumsum(copies)[copies > 0] - copies[copies > 0]] = True
    spread = np.where(first, 0.0, rng.random(starts.size) * np.repeat(gaps, copies))
    return np.sort(starts + spread)


def window(
    arrivals: np.ndarray, start_s: float = 0.0, duration_s: float | None = None
) -> np.ndarray:
    """Only the arrivals in [start, start + duration), shifted so that ``start`` is 0."""
    if start_s < 0:
        raise ValueError(f"window start must be >= 0, got {start_s}")
    end = math.inf if duration_s is None else start_s + duration_s
    if duration_s is not None:
        _positive(duration_s, "window duration")
    kept = arrivals[(arrivals >= start_s) & (arrivals < end)] - start_s
    if kept.size == 0:
        raise ValueError(f"no arrivals in [{start_s:g}, {end:g}) s of the trace")
    return kept


# --- 2-state MMPP fit --------------------------------------------------------------------


@dataclass(frozen=True)
class MmppFit:
    """A 2-state MMPP (low, high) matching a trace's first- and second-order statistics."""

    rates: tuple[float, float]  # arrivals per second in the low and the high state
    mean_dwell_s: tuple[float, float]
    window_s: float  # the window the statistics were taken at
    mean_rate: float  # the targets, measured on the trace
    dispersion: float
    lag1: float

    def schedule(self, seed: int = 0) -> Iterator[float]:
        """Arrival offsets of the fitted process, forever (``schedules.mmpp``)."""
        return schedules.mmpp(list(self.rates), list(self.mean_dwell_s), seed=seed)

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def mmpp_moments(
    rates: tuple[float, float], mean_dwell_s: tuple[float, float], window_s: float
) -> tuple[float, float, float]:
    """(mean rate, index of dispersion, lag-1 autocorrelation) of a stationary 2-state MMPP's
    counts in windows of ``window_s`` (closed form; the fit inverts it)."""
    leave = (1.0 / mean_dwell_s[0], 1.0 / mean_dwell_s[1])
    sigma = leave[0] + leave[1]
    share = (leave[1] / sigma, leave[0] / sigma)  # time fraction in each state
    mean = share[0] * rates[0] + share[1] * rates[1]
    var_rate = share[0] * share[1] * (rates[1] - rates[0]) ** 2
    x = sigma * window_s
    var_count = mean * window_s + var_rate * window_s**2 * _a(x)
    lag1 = var_rate * window_s**2 * _b(x) / var_count
    return mean, var_count / (mean * window_s), lag1


def _a(x: float) -> float:
    """2 (1/x - (1 - e^-x) / x^2): Var of the integrated rate over a window, per v T^2."""
    if x < 1e-4:
        return 1.0 - x / 3.0
    return 2.0 * (1.0 / x + math.expm1(-x) / x**2)


def _b(x: float) -> float:
    """((1 - e^-x) / x)^2: covariance of adjacent windows' integrated rates, per v T^2."""
    return (-math.expm1(-x) / x) ** 2 if x > 0 else 1.0


def fit_mmpp(
    arrivals: np.ndarray, window_s: float = 10.0, high_share: float | None = None
) -> MmppFit:
    """The 2-state MMPP with the trace's mean rate m, index of dispersion I and lag-1
    autocorrelation r of counts in ``window_s`` windows.

    Those fix the rate process's variance v and switching speed sigma (I and r depend on
    nothing else; r I / (I - 1) = B(sigma T) / A(sigma T) is solved by bisection, the
    ratio falling from 1 at slow switching to 0 at fast). The fourth parameter, the time
    share of the high state, is ``high_share`` or: 1/2 (rates m -+ sqrt(v)) when that
    keeps the low rate >= 0, else an on/off source (low rate 0) as bursty traces need.
    """
    m = arrivals.size / float(arrivals[-1] - arrivals[0])
    idc = dispersion(arrivals, window_s)
    r = lag1_autocorrelation(arrivals, window_s)
    if idc <= 1.0 or r <= 0.0:
        raise ValueError(
            f"counts are not over-dispersed and correlated at {window_s:g} s "
            f"(dispersion {idc:.3f}, lag-1 {r:.3f}): a Poisson process fits (--arrival poisson)"
        )
    target = min(r * idc / (idc - 1.0), 1.0 - 1e-9)
    lo, hi = 1e-6, 1e6  # x = sigma T, on a log scale
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if _b(mid) / _a(mid) > target else (lo, mid)
    x = math.sqrt(lo * hi)
    sigma = x / window_s
    v = (idc - 1.0) * m / (window_s * _a(x))
    if high_share is None:
        high_share = 0.5 if m >= math.sqrt(v) else m * m / (m * m + v)
    if not 0.0 < high_share < 1.0:
        raise ValueError(f"high-state share must be in (0, 1), got {high_share}")
    low_share = 1.0 - high_share
    low = m - math.sqrt(v * high_share / low_share)
    if low < -1e-9 * m:
        raise ValueError(f"high-state share {high_share:g} needs a negative low rate")
    high = m + math.sqrt(v * low_share / high_share)
    return MmppFit(
        rates=(low if low > 1e-9 * m else 0.0, high),  # on/off: exactly silent
        mean_dwell_s=(1.0 / (sigma * high_share), 1.0 / (sigma * low_share)),
        window_s=window_s,
        mean_rate=m,
        dispersion=idc,
        lag1=r,
    )


def _positive(value: float, what: str) -> None:
    if not value > 0:
        raise ValueError(f"{what} must be > 0, got {value}")

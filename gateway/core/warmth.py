"""What the gateway knows about a serverless backend's warm state, learnt from its answers.

Two learners, both fed by the caller and never reading a clock themselves (every
question takes ``now``, a ``time.monotonic()`` instant), so the spill-over policy and
the keep-warm runner ask with their clock and tests with a fake one:

- ``WarmthEstimator``: is the backend probably cold now, and what latency should a
  request expect there (warm p50 + P(cold) x cold-start estimate)? Fed after every
  response and every keep-warm ping with an ``Observation`` (cold when the answer
  carried a ``coldstart`` timing: Lambda's Init Duration, the containers' reports).
  The platform's idle-to-cold time is not published and not fixed (Lambda's varies),
  so it is learnt from idle gaps: the longest one still answered warm and the
  shortest longer one answered cold bound it; until both are seen a prior fills in.
- ``IdleTimeHistogram``: the hybrid-histogram policy of "Serverless in the Wild"
  (Shahrad et al., USENIX ATC'20): a histogram of the application's idle times gives
  when to pre-warm (its 5th percentile) and how long to keep warm (its 99th), with a
  fixed keep-alive when it is not representative and a forecast when most idle times
  fall beyond its range. docs/keep_warm.md says what was adapted and assumed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infergw.vocab.timing import TimingEntry


@dataclass(frozen=True, slots=True)
class Observation:
    """One answer of a backend: when it arrived, whether it came back cold, and durations.

    ``backend_s`` is the gateway's round trip (it includes the cold start), ``compute_s``
    the backend's own report; either may be unknown.
    """

    at: float
    cold: bool
    coldstart_s: float | None = None
    backend_s: float | None = None
    compute_s: float | None = None

    @property
    def started(self) -> float:
        """When the request reached the backend (its answer time if the round trip is unknown)."""
        return self.at - (self.backend_s or 0.0)

    @property
    def warm_s(self) -> float | None:
        """The time a warm instance would have taken: the round trip less the cold start."""
        total = self.backend_s if self.backend_s is not None else self.compute_s
        if total is None:
            return None
        return max(total - (self.coldstart_s or 0.0), 0.0) if self.cold else total

    @classmethod
    def from_entries(cls, at: float, entries: Iterable[TimingEntry], backend: str) -> Observation:
        """An observation from a request's timings (``ctx.timings.entries``).

        Entries tagged ``backend=NAME`` in their description count for that backend
        only; untagged ones (a backend that reports without a tag) count for ``backend``.
        Of each phase the last entry counts: it belongs to the attempt that answered.
        """
        last: dict[str, float] = {}
        for entry in entries:
            tag = _backend_tag(entry.description)
            if tag is None or tag == backend:
                last[entry.name] = entry.duration_ms / 1000.0
        coldstart = last.get("coldstart")
        return cls(
            at=at,
            cold=coldstart is not None and coldstart > 0,
            coldstart_s=coldstart,
            backend_s=last.get("backend"),
            compute_s=last.get("compute"),
        )


def _backend_tag(description: str) -> str | None:
    for part in description.split(";"):
        key, _, value = part.partition("=")
        if key.strip() == "backend":
            return value.strip()
    return None


@dataclass(frozen=True, slots=True)
class WarmthSnapshot:
    """The estimates at one instant: what the warm-state gauge shows, one series each."""

    p_cold: float
    warm_instances: int
    idle_s: float | None  # since the last answer; None: never answered
    warm_after_idle_s: float | None  # longest idle gap still answered warm
    cold_after_idle_s: float | None  # shortest longer idle gap answered cold
    coldstart_s: float
    warm_latency_s: float
    expected_latency_s: float

    def gauges(self) -> dict[str, float]:
        """Gauge values by estimate name; unknown ones are NaN (Prometheus' "no value")."""
        unknown = math.nan
        return {
            "p_cold": self.p_cold,
            "warm_instances": float(self.warm_instances),
            "idle_seconds": unknown if self.idle_s is None else self.idle_s,
            "warm_after_idle_seconds": _or(self.warm_after_idle_s, unknown),
            "cold_after_idle_seconds": _or(self.cold_after_idle_s, unknown),
            "coldstart_seconds": self.coldstart_s,
            "warm_latency_seconds": self.warm_latency_s,
            "expected_latency_seconds": self.expected_latency_s,
        }


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


class WarmthEstimator:
    """A serverless backend's warm state, learnt from its answers (one per backend).

    P(cold) after an idle time ``t`` is 0 up to the longest gap seen answered warm,
    1 from the shortest longer gap seen answered cold, and linear in between; with
    no cold evidence the upper end is ``assumed_idle_to_cold_s``. Gaps shorter than
    ``min_idle_s`` say nothing about idling (a cold answer then is a scale-out), and
    only the last ``samples`` gaps count, so a platform that changes is followed.
    The priors stand in until the first measurements of each kind arrive.
    """

    def __init__(
        self,
        *,
        assumed_idle_to_cold_s: float = 300.0,
        assumed_coldstart_s: float = 2.0,
        assumed_warm_s: float = 0.1,
        min_idle_s: float = 1.0,
        samples: int = 64,
    ) -> None:
        self.assumed_idle_to_cold_s = assumed_idle_to_cold_s
        self.assumed_coldstart_s = assumed_coldstart_s
        self.assumed_warm_s = assumed_warm_s
        self.min_idle_s = min_idle_s
        self._idle_gaps: deque[tuple[float, bool]] = deque(maxlen=samples)
        self._coldstarts: deque[float] = deque(maxlen=samples)
        self._warm: deque[float] = deque(maxlen=samples)
        self._recovered: deque[float] = deque(maxlen=samples)  # warm part of cold answers
        self._spans: deque[tuple[float, float]] = deque(maxlen=4 * samples)
        self._last_end: float | None = None

    # Feeding ------------------------------------------------------------------------

    def observe(self, observation: Observation) -> None:
        """Learn from one answer (a request's or a keep-warm ping's)."""
        started, at = observation.started, observation.at
        if self._last_end is not None and started - self._last_end >= self.min_idle_s:
            self._idle_gaps.append((started - self._last_end, observation.cold))
        self._last_end = at if self._last_end is None else max(self._last_end, at)
        self._spans.append((started, at))
        warm_s = observation.warm_s
        if observation.cold:
            if observation.coldstart_s is not None:
                self._coldstarts.append(observation.coldstart_s)
            if warm_s is not None:
                self._recovered.append(warm_s)
        elif warm_s is not None:
            self._warm.append(warm_s)

    # Questions ----------------------------------------------------------------------

    @property
    def last_activity(self) -> float | None:
        """When an instance last answered (it is warm right after)."""
        return self._last_end

    def idle_bounds(self) -> tuple[float | None, float | None]:
        """(longest idle gap answered warm, shortest longer gap answered cold)."""
        warm = [gap for gap, cold in self._idle_gaps if not cold]
        warm_after = max(warm) if warm else None
        floor = warm_after if warm_after is not None else 0.0
        cold = [gap for gap, was_cold in self._idle_gaps if was_cold and gap > floor]
        return warm_after, (min(cold) if cold else None)

    def p_cold(self, now: float) -> float:
        """Probability that a request arriving ``now`` finds no warm instance."""
        if self._last_end is None:
            return 1.0
        warm_for, cold_by = self._ramp()
        idle = now - self._last_end
        if idle <= warm_for:
            return 0.0
        if idle >= cold_by:
            return 1.0
        return (idle - warm_for) / (cold_by - warm_for)

    def probably_cold(self, now: float) -> bool:
        return self.p_cold(now) >= 0.5

    def coldstart_s(self) -> float:
        """A cold start's expected duration: the median of recent ones (or the prior)."""
        return statistics.median(self._coldstarts) if self._coldstarts else self.assumed_coldstart_s

    def warm_latency_s(self) -> float:
        """A warm answer's typical round trip: the median of recent ones (or the prior)."""
        samples = self._warm or self._recovered
        return statistics.median(samples) if samples else self.assumed_warm_s

    def expected_latency_s(self, now: float) -> float:
        """Warm p50 + P(cold) x the cold-start estimate: what the spill-over fits to a deadline."""
        return self.warm_latency_s() + self.p_cold(now) * self.coldstart_s()

    def cold_latency_s(self) -> float:
        """A cold answer's round trip: the warm one plus a cold start."""
        return self.warm_latency_s() + self.coldstart_s()

    def warm_capacity(self, now: float) -> int | None:
        """The requests it can probably take at once warm: ``warm_instances``."""
        return 0 if self.probably_cold(now) else self.warm_instances(now)

    def warm_instances(self, now: float) -> int:
        """Instances probably still warm: the most answers in flight at once among those
        that ended recently enough (within the idle time where P(cold) is below 1/2).
        Spans are closed intervals: answers that touch count as overlapping."""
        if self._last_end is None:
            return 0
        warm_for, cold_by = self._ramp()
        horizon = now - (warm_for + cold_by) / 2
        events = sorted(
            point
            for started, ended in self._spans
            if ended >= horizon
            for point in ((started, 0), (ended, 1))  # at one instant, starts first
        )
        peak = running = 0
        for _, is_end in events:
            running += -1 if is_end else 1
            peak = max(peak, running)
        return peak

    def snapshot(self, now: float) -> WarmthSnapshot:
        warm_after, cold_after = self.idle_bounds()
        return WarmthSnapshot(
            p_cold=self.p_cold(now),
            warm_instances=self.warm_instances(now),
            idle_s=None if self._last_end is None else max(now - self._last_end, 0.0),
            warm_after_idle_s=warm_after,
            cold_after_idle_s=cold_after,
            coldstart_s=self.coldstart_s(),
            warm_latency_s=self.warm_latency_s(),
            expected_latency_s=self.expected_latency_s(now),
        )

    def _ramp(self) -> tuple[float, float]:
        """(idle time up to which P(cold) is 0, idle time from which it is 1)."""
        warm_after, cold_after = self.idle_bounds()
        warm_for = warm_after if warm_after is not None else 0.0
        cold_by = cold_after if cold_after is not None else self.assumed_idle_to_cold_s
        return warm_for, max(cold_by, warm_for)


class WarmthCollector(Collector):
    """``infergw_warm_state{backend, estimate}``: every backend's ``WarmthSnapshot``.

    Register it on the gateway's registry (``registry.register(...)``); it reads the
    estimators at scrape time.
    """

    def __init__(
        self,
        estimators: Mapping[str, WarmthEstimator],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._estimators = estimators
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "infergw_warm_state",
            "Warm-state estimates of serverless backends (p_cold: the probability that a "
            "request now starts cold; durations in seconds; NaN: not known yet)",
            labels=("backend", "estimate"),
        )
        now = self._clock()
        for name, estimator in self._estimators.items():
            for estimate, value in estimator.snapshot(now).gauges().items():
                gauge.add_metric([name, estimate], value)
        yield gauge


# The hybrid histogram policy ------------------------------------------------------------


Basis = Literal["histogram", "fixed keep-alive", "forecast"]


@dataclass(frozen=True, slots=True)
class Window:
    """When an instance should be warm, in seconds after the application's last call
    ended: from ``prewarm_s`` to ``keep_alive_s``. ``basis`` says which rule chose it."""

    prewarm_s: float
    keep_alive_s: float
    basis: Basis


class IdleTimeHistogram:
    """Idle times of one application and the pre-warm/keep-alive window they imply.

    Shahrad et al.'s hybrid histogram: ``bins`` bins of ``bin_s`` (the paper: 1-minute
    bins up to 4 hours). Representative (enough samples, CV of the bin counts at least
    ``cv_threshold``: a few peaks rather than a flat spread), the window is the
    ``head`` percentile's bin lower edge less ``margin`` to the ``tail`` percentile's
    bin upper edge plus ``margin``. Not representative: the fixed keep-alive of the
    whole range, no pre-warm. When at least ``oob_threshold`` of the idle times fall
    beyond the range, the window is centred on a forecast of the next idle time,
    +-``forecast_margin`` (the paper uses ARIMA; here the median of recent idle times).

    Idle times are counted at the bins' resolution, as the paper's per-minute trace:
    calls starting within one bin-width slot are one activity, so a burst of a
    thousand requests is one sample, not a thousand zeros. Only the last
    ``max_samples`` idle times count, so a changed pattern is learnt.
    """

    def __init__(
        self,
        *,
        bin_s: float = 60.0,
        bins: int = 240,
        head: float = 0.05,
        tail: float = 0.99,
        cv_threshold: float = 2.0,
        min_samples: int = 10,
        oob_threshold: float = 0.5,
        margin: float = 0.10,
        forecast_margin: float = 0.15,
        forecast_samples: int = 16,
        max_samples: int = 1024,
    ) -> None:
        self.bin_s, self.bins = bin_s, bins
        self.head, self.tail = head, tail
        self.cv_threshold, self.min_samples = cv_threshold, min_samples
        self.oob_threshold = oob_threshold
        self.margin, self.forecast_margin = margin, forecast_margin
        self._counts = [0] * bins
        self._samples: deque[float] = deque()
        self._max_samples = max_samples
        self._recent: deque[float] = deque(maxlen=forecast_samples)
        self._oob = 0
        self._last_end: float | None = None
        self._last_slot: int | None = None
        self._window: Window | None = None  # cached until the next idle time

    @property
    def range_s(self) -> float:
        return self.bin_s * self.bins

    @property
    def last_call_end(self) -> float | None:
        return self._last_end

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(self._counts)

    @property
    def out_of_bounds(self) -> int:
        return self._oob

    @property
    def samples(self) -> int:
        """Idle times counted (in range or not)."""
        return len(self._samples)

    def record_call(self, started: float, ended: float) -> None:
        """One call of the application (not a ping): its idle time, once per slot."""
        slot = math.floor(started / self.bin_s)
        if self._last_end is not None and slot != self._last_slot:
            self.add(max(started - self._last_end, 0.0))
        self._last_slot = slot
        self._last_end = ended if self._last_end is None else max(self._last_end, ended)

    def add(self, idle_s: float) -> None:
        """One idle time, in seconds."""
        self._window = None
        self._samples.append(idle_s)
        self._recent.append(idle_s)
        self._count(idle_s, +1)
        if len(self._samples) > self._max_samples:
            self._count(self._samples.popleft(), -1)

    def _count(self, idle_s: float, step: int) -> None:
        index = int(idle_s // self.bin_s)
        if index < self.bins:
            self._counts[index] += step
        else:
            self._oob += step

    def cv(self) -> float:
        """Coefficient of variation of the bin counts (0 when empty)."""
        total = sum(self._counts)
        if total == 0:
            return 0.0
        mean = total / self.bins
        variance = sum((count - mean) ** 2 for count in self._counts) / (self.bins - 1)
        return math.sqrt(variance) / mean

    def representative(self) -> bool:
        return sum(self._counts) >= self.min_samples and self.cv() >= self.cv_threshold

    def window(self) -> Window:
        """The pre-warm/keep-alive window the idle times so far imply."""
        if self._window is None:
            self._window = self._compute_window()
        return self._window

    def _compute_window(self) -> Window:
        in_range = sum(self._counts)
        if self._oob and self._oob >= self.oob_threshold * (in_range + self._oob):
            forecast = statistics.median(self._recent)
            return Window(
                forecast * (1 - self.forecast_margin),
                forecast * (1 + self.forecast_margin),
                "forecast",
            )
        if not self.representative():
            return Window(0.0, self.range_s, "fixed keep-alive")
        head_bin, tail_bin = self._percentile_bin(self.head), self._percentile_bin(self.tail)
        return Window(
            head_bin * self.bin_s * (1 - self.margin),
            (tail_bin + 1) * self.bin_s * (1 + self.margin),
            "histogram",
        )

    def _percentile_bin(self, fraction: float) -> int:
        total, seen = sum(self._counts), 0
        for index, count in enumerate(self._counts):
            seen += count
            if seen >= fraction * total:
                return index
        return self.bins - 1

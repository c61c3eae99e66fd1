"""Prometheus histograms per phase, labelled by model, backend, protocol and status.

``infergw_requests_total`` counts every inference request, whatever its outcome, and
every other call (metadata, readiness, statistics...) that failed, so that an error on
any method shows up with its status. Labels stay bounded: a model without a route of
its own is ``_other``, a call no backend answered has backend ``none``, and protocol and
status come from fixed sets (``InferenceService.finish`` / ``count_failed``).

Observing is on every request's path, so the histograms here are plain counters
updated from the event loop (no locks: one thread owns them) and exposed through
a prometheus_client collector in the standard text format. One ``GatewayMetrics``
per gateway, on its own registry, so several gateways in one process (tests) do
not collide.

Series kept elsewhere join the same names at scrape time: a ``SeriesSource`` (the native
data plane's per-model counters, ``gateway/native_front.py``) is summed into
``infergw_requests_total`` and ``infergw_phase_duration_seconds``, so a dashboard sees
one gateway whichever plane answered.

Routing (``routing/``) adds ``infergw_route_decisions_total{route, backend, reason}``
(``GatewayMetrics`` is the routes' ``DecisionSink``; the route label is the config's
route key, so it stays bounded; a source that is also a ``DecisionSource``, the native
plane, adds its policies' decisions) and ``infergw_backend_ejected{backend}`` (1 while
outlier detection keeps the backend out).
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from infergw.vocab.timing import TimingEntry

# Sub-millisecond to a minute: gateway overheads and serverless cold starts alike.
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
LABELS = ("model", "backend", "protocol", "status")
PHASE_LABELS = ("phase", *LABELS)


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class Ejectable(Protocol):
    def ejected(self) -> bool: ...


class Series(NamedTuple):
    """Requests counted elsewhere under one label set (``LABELS``), with their phases:
    name -> (per-bucket counts over ``BUCKETS`` then +Inf, sum in seconds)."""

    labels: tuple[str, str, str, str]
    requests: int
    phases: Mapping[str, tuple[Sequence[int], float]]


class SeriesSource(Protocol):
    def series(self) -> Iterable[Series]: ...


class Decision(NamedTuple):
    """Routing decisions counted elsewhere: (route, backend, reason) and their count."""

    labels: tuple[str, str, str]
    n: int


@runtime_checkable
class DecisionSource(Protocol):
    """A ``SeriesSource`` that also counts routing decisions (the native plane's policies)."""

    def decisions(self) -> Iterable[Decision]: ...


class GatewayMetrics(Collector):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._phases: dict[tuple[str, ...], _Histogram] = {}
        self._requests: dict[tuple[str, ...], int] = {}
        self._decisions: dict[tuple[str, str, str], int] = {}
        self.outliers: Mapping[str, Ejectable] = {}  # backend name -> its outlier detector
        self.sources: list[SeriesSource] = []  # summed into the request and phase series
        self.registry.register(self)

    def record(self, route: str, backend: str, reason: str) -> None:
        """One routing decision (``routing.decisions.DecisionSink``)."""
        key = (route, backend, str(reason))
        self._decisions[key] = self._decisions.get(key, 0) + 1

    def observe(
        self, model: str, backend: str, protocol: str, status: str, entries: tuple[TimingEntry, ...]
    ) -> None:
        labels = (model, backend, protocol, status)
        self._requests[labels] = self._requests.get(labels, 0) + 1
        self.observe_phases(model, backend, protocol, status, entries)

    def observe_phases(
        self, model: str, backend: str, protocol: str, status: str, entries: tuple[TimingEntry, ...]
    ) -> None:
        """Phase durations only, for values that arrive after their request was counted
        (Triton's per-request queue and compute, from its spans)."""
        labels = (model, backend, protocol, status)
        phases = self._phases
        for name, duration_ms, _ in entries:
            key = (name, *labels)
            histogram = phases.get(key)
            if histogram is None:
                histogram = phases[key] = _Histogram()
            histogram.observe(duration_ms / 1000.0)

    def collect(self) -> Iterator[Metric]:
        phases: dict[tuple[str, ...], tuple[list[int], float]] = {
            key: (list(h.counts), h.sum) for key, h in list(self._phases.items())
        }
        counts: dict[tuple[str, ...], int] = dict(self._requests)
        for source in self.sources:
            for their_labels, their_count, their_phases in source.series():
                counts[their_labels] = counts.get(their_labels, 0) + their_count
                for name, (buckets, total) in their_phases.items():
                    phase_key = (name, *their_labels)
                    mine, mine_sum = phases.get(phase_key, ([0] * (len(BUCKETS) + 1), 0.0))
                    summed = [a + b for a, b in zip(mine, buckets, strict=True)]
                    phases[phase_key] = (summed, mine_sum + total)
        phase = HistogramMetricFamily(
            "infergw_phase_duration_seconds",
            "Time per request phase (Server-Timing vocabulary)",
            labels=PHASE_LABELS,
        )
        for key, (buckets, total) in phases.items():
            phase.add_metric(list(key), cumulative_buckets(BUCKETS, buckets), total)
        yield phase
        requests = CounterMetricFamily(
            "infergw_requests", "Inference requests, and other calls that failed", labels=LABELS
        )
        for labels, count in counts.items():
            requests.add_metric(list(labels), count)
        yield requests
        decisions = CounterMetricFamily(
            "infergw_route_decisions",
            "Attempts a route policy made, by why (primary, weighted, spill, fallback, hedge)",
            labels=("route", "backend", "reason"),
        )
        counted = dict(self._decisions)
        for source in self.sources:
            if isinstance(source, DecisionSource):
                for key, count in source.decisions():
                    counted[key] = counted.get(key, 0) + count
        for key, count in counted.items():
            decisions.add_metric(list(key), count)
        yield decisions
        ejected = GaugeMetricFamily(
            "infergw_backend_ejected",
            "1 while outlier detection keeps the backend out",
            labels=("backend",),
        )
        for name, detector in self.outliers.items():
            ejected.add_metric([name], 1.0 if detector.ejected() else 0.0)
        yield ejected

    def render(self) -> bytes:
        return generate_latest(self.registry)


def cumulative_buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, int]]:
    """Prometheus buckets from per-bucket counts (one per bound, then +Inf): each upper
    bound's label with the count at or below it. The native plane's histograms too."""
    edges = [*(repr(float(b)) for b in bounds), "+Inf"]
    return list(zip(edges, itertools.accumulate(counts), strict=True))

"""Warm-state estimates and the hybrid idle-time histogram: pure decisions, a fake clock.

No sleeps and no clock: every question takes ``now``; the idle-time distributions are
synthetic and deterministic, so each window below is exact.
"""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from infergw.gateway.core.warmth import (
    IdleTimeHistogram,
    Observation,
    WarmthCollector,
    WarmthEstimator,
    Window,
)
from infergw.vocab.timing import TimingEntry

T0 = 10_000.0


def warm(at: float, backend_s: float = 0.05) -> Observation:
    return Observation(at=at, cold=False, backend_s=backend_s)


def cold(at: float, coldstart_s: float = 2.0, backend_s: float = 2.05) -> Observation:
    return Observation(at=at, cold=True, coldstart_s=coldstart_s, backend_s=backend_s)


# Observations from timings ------------------------------------------------------------


def test_observation_from_a_lambda_cold_answer_takes_this_backends_entries_only() -> None:
    entries = [
        TimingEntry("queue", 1.0, "backend=lambda"),
        TimingEntry("backend", 900.0, "backend=triton;attempt=1"),  # a failed first attempt
        TimingEntry("coldstart", 1500.0, "backend=lambda"),
        TimingEntry("compute", 12.0, "backend=lambda"),
        TimingEntry("backend", 1600.0, "backend=lambda;attempt=2"),
    ]
    found = Observation.from_entries(T0, entries, "lambda")
    assert found == Observation(T0, cold=True, coldstart_s=1.5, backend_s=1.6, compute_s=0.012)
    assert found.started == pytest.approx(T0 - 1.6)
    assert found.warm_s == pytest.approx(0.1)


def test_observation_counts_untagged_entries_and_the_last_attempt() -> None:
    entries = [
        TimingEntry("backend", 300.0, "backend=cloudrun;attempt=1"),
        TimingEntry("compute", 4.0),  # the container's trailer: no tag
        TimingEntry("backend", 20.0, "backend=cloudrun;attempt=2"),
    ]
    found = Observation.from_entries(T0, entries, "cloudrun")
    assert (found.cold, found.backend_s, found.compute_s) == (False, 0.02, 0.004)
    assert found.warm_s == pytest.approx(0.02)


def test_a_zero_coldstart_entry_is_not_a_cold_answer() -> None:
    found = Observation.from_entries(T0, [TimingEntry("coldstart", 0.0)], "lambda")
    assert not found.cold


# The estimator ------------------------------------------------------------------------


def test_never_answered_is_cold_and_expects_the_priors() -> None:
    estimator = WarmthEstimator(assumed_coldstart_s=3.0, assumed_warm_s=0.2)
    assert estimator.p_cold(T0) == 1.0
    assert estimator.probably_cold(T0)
    assert estimator.expected_latency_s(T0) == pytest.approx(3.2)
    assert estimator.warm_instances(T0) == 0


def test_without_idle_evidence_p_cold_ramps_to_the_assumed_idle_to_cold_time() -> None:
    estimator = WarmthEstimator(assumed_idle_to_cold_s=300.0)
    estimator.observe(warm(T0))
    assert estimator.p_cold(T0 + 1) == pytest.approx(1 / 300)
    assert not estimator.probably_cold(T0 + 149)
    assert estimator.probably_cold(T0 + 150)
    assert estimator.p_cold(T0 + 301) == 1.0


@pytest.mark.parametrize(
    ("answers", "bounds"),
    [
        # (idle gap before the answer, came back cold?) -> (warm after, cold after)
        ([(100, False), (400, True), (200, False)], (200, 400)),
        ([(100, False), (50, True)], (100, None)),  # cold below a warm gap: a scale-out
        ([(400, True), (250, True)], (None, 250)),
        ([(0.2, True), (100, False)], (100, None)),  # under min_idle_s: says nothing
        ([(500, False), (600, True), (700, True)], (500, 600)),
    ],
)
def test_idle_to_cold_bounds(answers: list[tuple[float, bool]], bounds: tuple) -> None:
    estimator = WarmthEstimator()
    now = T0
    estimator.observe(warm(now, backend_s=0.0))
    for gap, was_cold in answers:
        now += gap
        estimator.observe(cold(now, 1.0, 0.0) if was_cold else warm(now, 0.0))
    assert estimator.idle_bounds() == bounds


def test_p_cold_is_zero_up_to_the_warm_bound_one_from_the_cold_bound_linear_between() -> None:
    estimator = WarmthEstimator()
    now = T0
    for gap, answer in ((0, warm), (200, warm), (400, cold)):
        now += gap
        estimator.observe(answer(now, backend_s=0.0))
    assert estimator.idle_bounds() == (200, 400)
    assert estimator.p_cold(now + 200) == 0.0
    assert estimator.p_cold(now + 300) == pytest.approx(0.5)
    assert estimator.p_cold(now + 400) == 1.0


def test_expected_latency_is_warm_p50_plus_p_cold_times_the_coldstart_median() -> None:
    estimator = WarmthEstimator(assumed_idle_to_cold_s=100.0)
    estimator.observe(cold(T0, coldstart_s=1.0, backend_s=1.04))
    estimator.observe(cold(T0 + 0.1, coldstart_s=3.0, backend_s=3.04))
    estimator.observe(cold(T0 + 0.2, coldstart_s=2.0, backend_s=2.04))
    assert estimator.coldstart_s() == 2.0
    # No warm answer yet: the warm part of the cold ones stands in.
    assert estimator.warm_latency_s() == pytest.approx(0.04)
    for i, backend_s in enumerate((0.010, 0.030, 0.020)):
        estimator.observe(warm(T0 + 0.3 + i / 10, backend_s))
    assert estimator.warm_latency_s() == pytest.approx(0.020)
    last = estimator.last_activity
    assert last is not None
    assert estimator.expected_latency_s(last) == pytest.approx(0.020)
    assert estimator.expected_latency_s(last + 50) == pytest.approx(0.020 + 0.5 * 2.0)
    assert estimator.expected_latency_s(last + 1000) == pytest.approx(2.020)


def test_warm_instances_count_concurrent_answers_that_are_still_warm() -> None:
    estimator = WarmthEstimator(assumed_idle_to_cold_s=300.0)
    for i in range(3):  # three at once: three instances
        estimator.observe(Observation(T0 + 1 + i / 100, cold=True, coldstart_s=0.9, backend_s=1.0))
    estimator.observe(warm(T0 + 5))  # then one at a time: still three warm
    assert estimator.warm_instances(T0 + 6) == 3
    # P(cold) reaches 1/2 half-way between the warm gap seen (~4 s) and the prior (300 s).
    assert estimator.warm_instances(T0 + 5 + 150) == 1  # only the last one is recent enough
    assert estimator.warm_instances(T0 + 5 + 160) == 0


def test_snapshot_gauges_say_nan_for_what_is_not_known_yet() -> None:
    estimator = WarmthEstimator()
    gauges = WarmthEstimator().snapshot(T0).gauges()
    assert math.isnan(gauges["idle_seconds"]) and math.isnan(gauges["cold_after_idle_seconds"])
    estimator.observe(warm(T0))
    gauges = estimator.snapshot(T0 + 30).gauges()
    assert gauges["idle_seconds"] == pytest.approx(30)
    assert gauges["warm_instances"] == 1.0
    assert gauges["p_cold"] == pytest.approx(0.1)


def test_collector_exposes_one_gauge_series_per_backend_and_estimate() -> None:
    lam, run = WarmthEstimator(), WarmthEstimator()
    lam.observe(warm(T0))
    registry = CollectorRegistry()
    registry.register(WarmthCollector({"lambda": lam, "cloudrun": run}, clock=lambda: T0 + 30))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    samples = {
        (s.labels["backend"], s.labels["estimate"]): s.value
        for s in families["infergw_warm_state"].samples
    }
    assert samples[("lambda", "p_cold")] == pytest.approx(0.1)
    assert samples[("cloudrun", "p_cold")] == 1.0
    assert samples[("lambda", "expected_latency_seconds")] == pytest.approx(0.05 + 0.1 * 2.0)
    assert len(samples) == 2 * 8


# The hybrid histogram -----------------------------------------------------------------

BIN, BINS = 10.0, 60  # a 600 s range: the paper's 1-minute bins x 240, scaled down


def histogram(idle_times: list[float], **kwargs: float) -> IdleTimeHistogram:
    h = IdleTimeHistogram(bin_s=BIN, bins=BINS, **kwargs)  # type: ignore[arg-type]
    for idle in idle_times:
        h.add(idle)
    return h


@pytest.mark.parametrize(
    ("name", "idle_times", "window"),
    [
        # Every ~95 s: pre-warm at bin 9's lower edge less 10%, keep to its upper edge + 10%.
        ("periodic", [95.0] * 40, Window(81.0, 110.0, "histogram")),
        ("jittered", [90.0 + i % 10 for i in range(40)], Window(81.0, 110.0, "histogram")),
        # Two habits: the head is the short one, the tail the long one.
        ("bimodal", [35.0, 305.0] * 20, Window(27.0, 341.0, "histogram")),
        # Busy (idle times in bin 0): never pre-warm later than the call; keep one bin.
        ("busy", [0.0] * 40, Window(0.0, 11.0, "histogram")),
        # 1% stragglers stay under the 99th percentile: kept out of the window.
        ("straggler", [95.0] * 99 + [400.0], Window(81.0, 110.0, "histogram")),
        # Spread evenly over the range: the histogram is flat (low CV), not representative.
        ("uniform", [(i * 7.3) % 600 for i in range(2000)], Window(0.0, 600.0, "fixed keep-alive")),
        # Too few to trust, however peaked.
        ("few", [95.0] * 9, Window(0.0, 600.0, "fixed keep-alive")),
        # Most idle times beyond the range: centred on the recent median, +-15%.
        ("out of bounds", [1000.0, 1200.0, 1100.0] * 5, Window(935.0, 1265.0, "forecast")),
        # A minority beyond the range: the in-range histogram decides.
        ("some out", [95.0] * 30 + [5000.0] * 10, Window(81.0, 110.0, "histogram")),
    ],
)
def test_window_on_synthetic_idle_times(name: str, idle_times: list[float], window: Window) -> None:
    found = histogram(idle_times).window()
    assert found.basis == window.basis, name
    assert found.prewarm_s == pytest.approx(window.prewarm_s), name
    assert found.keep_alive_s == pytest.approx(window.keep_alive_s), name


def test_cv_is_of_the_bin_counts() -> None:
    assert histogram([95.0] * 40).cv() == pytest.approx(math.sqrt(BINS))  # one full bin
    assert histogram([(i * 10.0) + 5 for i in range(BINS)] * 3).cv() == 0.0  # flat
    assert histogram([]).cv() == 0.0


def test_calls_in_one_slot_are_one_idle_time_and_a_busy_stream_gives_zeros() -> None:
    h = IdleTimeHistogram(bin_s=BIN, bins=BINS)
    h.record_call(T0, T0 + 0.1)
    for i in range(100):  # a burst inside the next slot after 95 s idle
        h.record_call(T0 + 100 + i / 1000, T0 + 100.2 + i / 1000)
    assert h.counts[9] == 1 and sum(h.counts) == 1
    for slot in range(1, 6):  # one call per slot, back to back
        start = T0 + 100 + slot * BIN
        h.record_call(start, start + BIN)
    assert h.counts[0] == 5
    assert h.last_call_end == pytest.approx(T0 + 100 + 6 * BIN)


def test_the_oldest_idle_times_are_forgotten() -> None:
    h = histogram([95.0] * 20, max_samples=20)
    for _ in range(20):
        h.add(305.0)
    assert h.counts[9] == 0 and h.counts[30] == 20
    assert h.window() == Window(pytest.approx(270.0), pytest.approx(341.0), "histogram")  # type: ignore[arg-type]
    for _ in range(20):
        h.add(5000.0)
    assert h.out_of_bounds == 20 and sum(h.counts) == 0

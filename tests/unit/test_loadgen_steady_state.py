"""The scale scenario's steady-state detector on synthetic per-second windows."""

from __future__ import annotations

import pytest

from infergw.loadgen.timeseries import Window, steady_state, steady_state_verdict


def windows(spec: list[tuple[int, int, float]]) -> list[Window]:
    """(ok, errors, latency ms of every ok request) per second."""
    out = []
    for t, (ok, errors, ms) in enumerate(spec):
        w = Window(float(t), offered=ok + errors, ok=ok, errors=errors)
        for _ in range(ok):
            w.latency.record_ms(ms)
        out.append(w)
    return out


def test_cold_start_then_steady() -> None:
    spec = [(1, 0, 9000.0)] * 3 + [(20, 5, 50.0)] * 2 + [(100, 0, 40.0)] * 20
    assert steady_state(windows(spec), slo_ms=100.0, span=5) == 5.0


def test_one_slow_second_later_moves_the_steady_state_after_it() -> None:
    spec = [(100, 0, 40.0)] * 10 + [(100, 0, 900.0)] + [(100, 0, 40.0)] * 15
    # any 5-second span that contains second 10 has p95 > SLO (100 of 500 slow = 20%)
    assert steady_state(windows(spec), slo_ms=100.0, span=5) == 11.0


def test_a_few_slow_requests_within_p95_do_not_count() -> None:
    spec = [(100, 0, 40.0)] * 10
    ws = windows(spec)
    for _ in range(4):  # 4 slow of 500 in any span: under 5%
        ws[3].latency.record_ms(5000.0)
    assert steady_state(ws, slo_ms=100.0, span=5) == 0.0


def test_errors_break_the_success_ratio() -> None:
    spec = [(98, 2, 10.0)] * 10 + [(100, 0, 10.0)] * 10
    # the span starting at 8 has 2 seconds at 98% and 3 at 100%: 99.2% overall, enough
    assert steady_state(windows(spec), slo_ms=100.0, span=5) == 8.0
    assert steady_state(windows([(99, 1, 10.0)] * 10), slo_ms=100.0, span=5) == 0.0


def test_never_steady_short_runs_and_silence() -> None:
    assert steady_state(windows([(100, 0, 500.0)] * 20), slo_ms=100.0, span=5) is None
    assert steady_state(windows([(100, 0, 5.0)] * 3), slo_ms=100.0, span=5) is None
    assert steady_state(windows([(0, 0, 0.0)] * 10), slo_ms=100.0, span=5) is None
    dropped = windows([(100, 0, 5.0)] * 10)
    for w in dropped[-5:]:
        w.dropped = 10  # drops are failures too
    assert steady_state(dropped, slo_ms=100.0, span=5) is None


@pytest.mark.parametrize(
    ("spec", "at_s", "failed_at_s", "why"),
    [
        ([(10, 0, 50.0)] * 8, 0.0, None, None),  # met throughout
        ([(10, 0, 500.0)] * 8, None, 3.0, "p95 500 ms > SLO 100 ms"),  # too slow to the end
        ([(10, 0, 50.0)] * 4 + [(5, 5, 50.0)] * 4, None, 3.0, "success 0.600 < 0.99 (20 failed)"),
        ([(10, 0, 500.0)] * 3 + [(10, 0, 50.0)] * 6, 3.0, 2.0, "p95 500 ms > SLO 100 ms"),  # late
    ],
)
def test_the_verdict_says_which_criterion_failed_and_when(
    spec: list[tuple[int, int, float]],
    at_s: float | None,
    failed_at_s: float | None,
    why: str | None,
) -> None:
    verdict = steady_state_verdict(windows(spec), slo_ms=100.0, span=5)
    assert (verdict.at_s, verdict.failed_at_s, verdict.failed_because) == (at_s, failed_at_s, why)


def test_a_run_shorter_than_a_span_says_so() -> None:
    verdict = steady_state_verdict(windows([(10, 0, 50.0)] * 2), slo_ms=100.0, span=5)
    assert (
        verdict.at_s is None
        and verdict.failed_because == "the run is shorter than one span of 5 windows"
    )

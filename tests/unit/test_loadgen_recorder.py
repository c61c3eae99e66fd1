"""The recorder's accounting and its fast Server-Timing reader."""

from __future__ import annotations

import random

import pytest

from infergw.loadgen.recorder import Recorder, answer_of, phase_totals
from infergw.vocab.timing import TimingEntry
from infergw.wire.server_timing import answered_by, format_server_timing, parse_server_timing


def test_fast_reader_matches_the_core_parser() -> None:
    rng = random.Random(0)
    names = ["queue", "backend", "compute", "total", "coldstart", "backend_queue"]
    descs = ["", "backend=lambda;attempt=2", 'odd, "quoted"', "token"]
    for _ in range(500):
        entries = [
            TimingEntry(rng.choice(names), round(rng.random() * 100, 3), rng.choice(descs))
            for _ in range(rng.randint(1, 6))
        ]
        header = format_server_timing(entries)
        expected: dict[str, float] = {}
        for name, dur, _ in parse_server_timing(header):
            expected[name] = expected.get(name, 0.0) + dur
        assert phase_totals(header) == pytest.approx(expected)


def test_latency_from_intended_time_warmup_late_and_split() -> None:
    rec = Recorder(start=100.0, warmup_s=1.0, sent_bytes=10)
    rec.record(100.5, 100.5, 100.6, (None, None, 5))  # warm-up: excluded
    rec.record(101.0, 101.5, 101.6, (None, "queue;dur=20, compute;dur=30", 5))  # late by 0.5 s
    rec.record(102.0, 101.9995, 102.01, (None, None, 5))  # sent 0.5 ms early
    rec.record(102.0, 102.0, 102.2, ("UNAVAILABLE", None, 0))
    assert rec.warmup_excluded == 1 and rec.late == 1 and rec.ok == 2
    assert rec.max_late_ms == pytest.approx(500.0)
    assert rec.errors == {"UNAVAILABLE": 1}
    assert rec.latency.max_ms == pytest.approx(600.0)  # from the intended time, not 100 ms
    assert rec.latency.min_ms == pytest.approx(10.5)  # from the actual (early) send
    # protocol = service time (100 ms) minus queue and compute
    assert rec.phases["protocol"].percentile(50) == pytest.approx(50.0, rel=1e-3)
    run = rec.run_dict("r", "closed", {}, offered=False)
    assert run["requests"] == 3 and run["offered_rps"] is None
    assert run["late_sends"] == 1 and run["max_late_ms"] == pytest.approx(500.0)
    assert set(run["split_ms"]) == {"protocol", "queue", "compute"}
    assert run["bytes"] == {"sent_per_request": 10.0, "received_per_request": pytest.approx(10 / 3)}


def test_each_answer_is_counted_by_backend_and_reason_overall_and_per_window() -> None:
    rec = Recorder(start=100.0)
    spill = 'backend;dur=5;desc="backend=lambda;reason=spill", total;dur=6;desc="backend=lambda"'
    primary = 'backend;dur=5;desc="backend=triton", total;dur=6;desc="backend=triton"'
    rec.record(100.1, 100.1, 100.2, (None, primary, 5))
    rec.record(100.2, 100.2, 100.3, (None, primary, 5))
    rec.record(101.1, 101.1, 101.2, (None, spill, 5))
    rec.record(101.2, 101.2, 101.3, (None, "total;dur=6", 5))  # not named: not counted
    rec.record(101.3, 101.3, 101.4, ("UNAVAILABLE", None, 0))
    run = rec.run_dict("r", "open", {}, offered=True)
    assert run["answered"] == [
        {"backend": "triton", "reason": "primary", "requests": 2, "share": 0.5},
        {"backend": "lambda", "reason": "spill", "requests": 1, "share": 0.25},
    ]
    assert [w["answered"] for w in run["timeseries"]] == [
        {"triton/primary": 2},
        {"lambda/spill": 1},
    ]


def test_slo_violations_are_the_slow_the_failed_and_the_dropped() -> None:
    rec = Recorder(start=100.0)
    for latency_s in (0.050, 0.090, 0.150, 0.400):
        rec.record(100.0, 100.0, 100.0 + latency_s, (None, None, 1))
    rec.record(100.0, 100.0, 100.1, ("RESOURCE_EXHAUSTED", None, 0))
    rec.drop(100.5)
    assert rec.latency.count_above(100.0) == 2 and rec.latency.count_above(10.0) == 4
    assert rec.slo(100.0) == {
        "ms": 100.0, "slow": 2, "failed": 2, "violations": 4, "share": pytest.approx(4 / 6)
    }  # fmt: skip


@pytest.mark.parametrize(
    "header",
    [
        'backend;dur=3;desc="backend=triton", total;dur=4;desc="backend=triton"',
        'backend;dur=1;desc="backend=dead;attempt=1", '
        'backend;dur=3;desc="backend=triton;attempt=2;reason=fallback", '
        'total;dur=5;desc="backend=triton"',
        "backend;dur=3;desc=backend=lambda, total;dur=4;desc=backend=lambda",  # unquoted
        'queue;dur=1;desc="a, b", backend;dur=3;desc="backend=x", total;dur=4;desc="backend=x"',
        'backend;desc="backend=q\\"uoted";dur=3, total;dur=4;desc="backend=q\\"uoted"',
        'total;dur=4;desc="backend=triton"',  # named, no backend entry: primary
        "backend;dur=3, total;dur=4",  # nothing says who answered
        'x-backend;dur=3;desc="backend=y", total;dur=4;xdesc="backend=y"',
    ],
)
def test_the_fast_answer_is_the_full_parsers(header: str) -> None:
    assert answer_of(header) == answered_by(parse_server_timing(header))

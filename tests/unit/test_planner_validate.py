"""``infergw plan --bench-result``: a bench hybrid result replayed through the simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infergw.loadgen import scenarios
from infergw.loadgen.settings import Settings
from infergw.planner import cli
from infergw.planner.costs import Pricing
from infergw.planner.validate import arrivals_of, measured_latencies, validate, within

SETTINGS = Settings(scenario="trace", trace_kind="azure-code", trace_duration=120.0,
                    trace_speedup=10.0, slo_ms=200.0)  # fmt: skip


def phase(p50: float, p95: float) -> dict[str, float]:
    return {"p50": p50, "p95": p95, "mean": p50, "n": 100}


def run(label: str, share: float, usd: float) -> dict[str, Any]:
    split = {"backend": phase(16.0, 20.0), "compute": phase(15.0, 16.0)}
    if label == "serverless":
        split["coldstart"] = phase(1500.0, 2000.0)
    return {"label": label, "requests": 300, "slo": {"share": share},
            "cost": {"usd_per_million": usd}, "split_ms": split, "errors": {}}  # fmt: skip


RESULT: dict[str, Any] = {
    "settings": json.loads(json.dumps(SETTINGS.as_dict(), default=str)),
    "sizing": {"mean_slots": 1, "peak_slots": 3},
    "scaling": {"provision_delay_s": 18.0, "idle_release_s": 18.0},
    "stack": {"max_queue": 256, "queue_timeout_ms": 5000.0, "max_queue_wait_ms": 20.0,
              "slots_per_instance": 1,
              "serverless": {"kind": "lambda", "concurrency_limit": 10, "idle_timeout_s": 300}},
    "runs": [run(n, 0.1, 5.0) for n in ("always-on-mean", "always-on-peak",
                                        "always-on-autoscaled", "serverless", "hybrid")],
}  # fmt: skip


def test_the_arrivals_are_the_ones_the_load_generator_sent() -> None:
    schedule, _, length = scenarios.trace_schedule(SETTINGS)
    sent = np.array([t for t in schedule if t < length])
    np.testing.assert_array_equal(arrivals_of(RESULT), sent)


def test_latencies_come_from_the_measured_phases() -> None:
    runs = {r["label"]: r for r in RESULT["runs"]}
    latencies, overhead = measured_latencies(runs)
    assert latencies.always_on.params[0] == pytest.approx(0.016)  # the round trip's p50
    assert latencies.always_on.params[1] == pytest.approx(np.log(20 / 16) / 1.6449, rel=1e-4)
    assert overhead == pytest.approx(0.001)  # round trip 16 - compute 15 ms: not billed
    assert latencies.serverless.params[0] == pytest.approx(0.016)
    assert latencies.coldstart.params[0] == pytest.approx(1.5)
    del runs["serverless"]
    with pytest.raises(ValueError, match="serverless run"):
        measured_latencies(runs)


def test_every_configuration_is_predicted_next_to_what_was_measured() -> None:
    rows, used = validate(RESULT, Pricing.from_prices())
    assert [r["configuration"] for r in rows] == [r["label"] for r in RESULT["runs"]]
    assert used["arrivals"] == arrivals_of(RESULT).size
    by = {r["configuration"]: r for r in rows}
    # A peak-sized pool violates no more than a mean-sized one and costs more per request.
    mean, peak = by["always-on-mean"], by["always-on-peak"]
    assert peak["violation_pct"]["predicted"] <= mean["violation_pct"]["predicted"]
    assert (peak["usd_per_million_answered"]["predicted"]
            > mean["usd_per_million_answered"]["predicted"])  # fmt: skip
    for row in rows:
        assert row["violation_pct"]["measured"] == pytest.approx(10.0)
        assert row["violation_pct"]["within"] is within(10.0, row["violation_pct"]["predicted"],
                                                        points=True)  # fmt: skip


@pytest.mark.parametrize(
    ("measured", "predicted", "points", "ok"),
    [
        (50.0, 59.0, True, True),  # 18% off
        (50.0, 61.0, True, False),  # 22% off, 11 points
        (2.0, 2.9, True, True),  # 45% off but within a point
        (2.0, 2.9, False, False),  # a cost has no points
        (10.0, None, False, None),
    ],
)
def test_the_acceptance_bound(measured: float, predicted: float | None, points: bool,
                              ok: bool | None) -> None:  # fmt: skip
    assert within(measured, predicted, points) is ok


def test_the_command_compares_and_refuses_what_is_not_a_hybrid_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    good = tmp_path / "result.json"
    good.write_text(json.dumps(RESULT))
    args = parser.parse_args(["plan", "--bench-result", str(good), "--out", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "always-on-autoscaled" in out and "within" in out
    saved = json.loads((tmp_path / "plan-validation.json").read_text())
    assert len(saved["rows"]) == 5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"runs": []}))
    args = parser.parse_args(["plan", "--bench-result", str(bad)])
    assert args.func(args) == 2
    assert "not a bench hybrid result" in capsys.readouterr().err

"""``infergw bench hybrid`` end to end: two configurations of the real local stack (each
its own ``infergw local up``), one bursty trace against both, the comparison and the
report files. About a minute: two stack start-ups and 12 s of trace each. The model is
``delay`` (15 ms a request, no CPU), so capacity is slots, not the machine's cores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from infergw.gateway.cli import build_parser

pytestmark = pytest.mark.integration

# On at 150 req/s for 2 s, off for 4 s (means), seeded: seed 10 bursts for 2 s, is silent
# for 7 s, then bursts again.
TRACE = ["--trace-kind", "onoff", "--on-rate", "150", "--mean-on", "2", "--mean-off", "4"]


def test_hybrid_spills_during_bursts_only_and_writes_the_comparison(tmp_path: Path) -> None:
    parser: argparse.ArgumentParser = build_parser()
    args = parser.parse_args(
        [
            "bench", "hybrid", "--model", "delay", *TRACE, "--duration", "12", "--seed", "10",
            "--configs", "always-on-autoscaled,hybrid", "--service-ms", "15", "--slo-ms", "200",
            "--provision-delay-s", "1", "--idle-release-s", "2",
            "--diurnal-amplitude", "0", "--out", str(tmp_path), "--no-progress",
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    always_on, hybrid = result["runs"]
    assert (always_on["label"], hybrid["label"]) == ("always-on-autoscaled", "hybrid")
    sizing = result["sizing"]
    assert 1 <= sizing["mean_slots"] < sizing["peak_slots"]
    # The autoscaled pool grew past its floor in a burst, and was billed for less than
    # the peak's slots for the whole run (it started at the floor, 1 s before any order).
    capacity = always_on["capacity"]
    assert capacity["max_ready"] > sizing["mean_slots"]
    assert sizing["mean_slots"] < capacity["mean_slots"] < sizing["peak_slots"]
    assert result["scaling"]["provision_delay_s"] == 1.0
    assert result["scaling"]["idle_release_s"] == 2.0
    # The always-on run is Triton's alone; the hybrid one spilled, only while it was busy.
    assert {a["backend"] for a in always_on["answered"]} == {"triton"}
    spilled = {(a["backend"], a["reason"]) for a in hybrid["answered"]}
    assert ("lambda", "spill") in spilled
    # Windows (by answer time) with nothing sent for 3 s: a spill answered there would
    # have been sent in the silence (or waited 2 s, far past any cold start).
    series = hybrid["timeseries"]
    quiet = [
        w for i, w in enumerate(series[2:], start=2)
        if all(series[j]["offered"] == 0 for j in (i - 2, i - 1, i))
    ]  # fmt: skip
    assert quiet, "the trace had no silence"
    assert all("lambda/spill" not in w["answered"] for w in quiet)
    # Priced and compared; the report files are there.
    for run in result["runs"]:
        assert run["cost"]["usd_per_million"] > 0 and 0 <= run["slo"]["share"] <= 1
    assert set(result["comparison"]["always-on-autoscaled"]) == {"violations", "cost"}
    for name in ("result.csv", "report.html"):
        assert (tmp_path / name).stat().st_size > 0

"""``infergw bench hybrid`` end to end: two configurations of the real local stack (each
its own ``infergw local up``), one bursty trace against both, the comparison and the
report files. About a minute: two stack start-ups and 12 s of trace each. The model is
``delay`` (15 ms a request, no CPU), so capacity is slots, not the machine's cores."""

from __future__ import annotations

import argparse
import itertools
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
    # Spilled only while busy: the first window of each burst (something offered after a
    # window with nothing) has answers of the idle primary in it. (A spill answered in a
    # silence says nothing: it was sent before it, and a burst's Lambda cold starts on
    # two cores take 2-3 s.)
    series = hybrid["timeseries"]
    pairs = itertools.pairwise(series)
    starts = [w for before, w in pairs if before["offered"] == 0 < w["offered"]]
    assert starts, "the trace had no silence followed by a burst"
    assert all(w["answered"].get("triton/primary", 0) > 0 for w in starts), starts
    # Priced and compared; the report files are there.
    for run in result["runs"]:
        assert run["cost"]["usd_per_million"] > 0 and 0 <= run["slo"]["share"] <= 1
    assert set(result["comparison"]["always-on-autoscaled"]) == {"violations", "cost"}
    for name in ("result.csv", "report.html"):
        assert (tmp_path / name).stat().st_size > 0

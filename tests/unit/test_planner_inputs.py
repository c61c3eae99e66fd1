"""The planner's inputs (trace CSVs, the latencies file) and the ``infergw plan`` command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from infergw.gateway.cli import main
from infergw.planner import dists, traces


def test_plan_reads_traces_as_bench_does(tmp_path: Path) -> None:
    # One reader for both (loadgen.traces, tested there): a packaged name, or a CSV.
    code = traces.load("azure-code")
    assert len(code.arrivals) == 8819 and code.arrivals[0] == 0.0
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:04.0319600,3180,8\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
    )
    np.testing.assert_allclose(traces.load(str(path)).arrivals, [0.0, 0.052], atol=1e-9)


def test_time_and_rate_scale(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("\n".join(str(x) for x in range(0, 1000, 2)))
    trace = traces.load(str(path), time_scale=2.0, rate_scale=3.0)
    assert trace.span_s == pytest.approx(499.0)
    assert len(trace.arrivals) == 3 * 500
    assert trace.describe()["time_scale"] == 2.0
    thinned = traces.load(str(path), rate_scale=0.5, seed=1)
    assert 150 < len(thinned.arrivals) < 350 and np.all(np.diff(thinned.arrivals) >= 0)


def test_latencies_file(tmp_path: Path) -> None:
    path = tmp_path / "lat.json"
    path.write_text(json.dumps({
        "always_on_ms": [10, 20, 30],
        "serverless_ms": {"lognormal": {"median_ms": 40, "sigma": 0.5}},
        "coldstart_ms": 2500,
    }))  # fmt: skip
    lat = dists.load_latencies(path)
    assert lat.always_on.kind == "empirical" and lat.always_on.mean == pytest.approx(0.020)
    assert lat.serverless.mean == pytest.approx(0.040 * np.exp(0.125))
    assert lat.coldstart == dists.Dist.fixed(2.5)
    draws = lat.always_on.sample(np.random.default_rng(0), 1000)
    assert set(np.round(draws, 6)) == {0.01, 0.02, 0.03}
    path.write_text(json.dumps({"always_on": [1]}))
    with pytest.raises(ValueError, match="unknown keys"):
        dists.load_latencies(path)


def test_plan_command_writes_table_json_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.csv"
    rng = np.random.default_rng(0)
    stamps = np.sort(np.concatenate([rng.uniform(0, 600, 300), rng.uniform(300, 310, 200)]))
    trace.write_text("TIMESTAMP\n" + "\n".join(f"{t:.4f}" for t in stamps))
    out = tmp_path / "out"
    code = main(["plan", "--trace", str(trace), "--policy", "all", "--sweep-slots", "1:2",
                 "--slo-ms", "300", "--prewarm", "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "hybrid" in printed and "serverless" in printed
    result = json.loads((out / "plan.json").read_text())
    runs = result["runs"]
    # always-on, autoscaled and hybrid at 1 and 2 slots; serverless once.
    assert [(r["policy"], r["slots"]) for r in runs] == [
        ("always-on", 1), ("always-on", 2), ("autoscaled", 1), ("autoscaled", 2),
        ("serverless", 0), ("hybrid", 1), ("hybrid", 2),
    ]  # fmt: skip
    assert all(r["requests"] == 500 for r in runs)
    assert result["trace"]["requests"] == 500 and result["pricing"]["serverless"] == "lambda"
    with (out / "plan.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(runs)
    for r in runs:
        assert r["cost_usd"] == pytest.approx(
            r["cost_always_on_usd"] + r["cost_serverless_usd"] + r["cost_warmth_usd"]
        )


def test_plan_command_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--trace", str(tmp_path / "missing.csv")]) == 2
    assert main(["plan", "--trace", "poisson:1:10", "--sweep-slots", "3:1"]) == 2
    assert main(["plan", "--trace", "poisson:1:10", "--instance", "nope"]) == 2
    assert "error" in capsys.readouterr().err

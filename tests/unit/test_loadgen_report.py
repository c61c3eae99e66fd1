"""Reports generated from recorded results (tests/fixtures/bench_result_*.json)."""

from __future__ import annotations

import copy
import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from infergw.loadgen import plots
from infergw.loadgen.report import CSV_FIXED, format_table, render_html, write_reports

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SCENARIOS = ("warm", "protocol", "scale", "cold", "concurrency")
# The figures each recorded result has data for.
EXPECTED_PLOTS = {
    "warm": {"latency", "split", "timeseries"},
    "protocol": {"latency", "split", "protocol"},
    "scale": {"latency", "split", "timeseries"},
    "cold": {"latency", "split", "cold"},
    "concurrency": {"latency", "split", "concurrency"},
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"bench_result_{name}.json").read_text())


@pytest.mark.parametrize("name", SCENARIOS)
def test_table_has_a_row_per_run(name: str) -> None:
    result = load(name)
    table = format_table(result)
    for run in result["runs"]:
        assert run["label"] in table
    assert result["scenario"] in table.splitlines()[0]
    assert "p95" in table and "$/1M req" in table


def test_table_shows_cost_errors_and_late_sends() -> None:
    table = format_table(load("scale"))
    assert "UNAVAILABLE=61" in table
    assert "late sends 12" in table
    assert re.search(r"\$\d+\.\d\d\b", table), table  # Cloud Run cost per 1M
    assert "cost: cloudrun" in table


def test_table_without_cost_settings_shows_a_dash() -> None:
    row = format_table(load("protocol")).splitlines()[3]
    assert row.rstrip().endswith("-")


@pytest.mark.parametrize("name", SCENARIOS)
def test_write_reports_writes_every_file(name: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = load(name)
    write_reports(result, tmp_path)
    assert json.loads((tmp_path / "result.json").read_text()) == result
    written = {p.name.removeprefix("report-").removesuffix(".png") for p in tmp_path.glob("*.png")}
    assert written == EXPECTED_PLOTS[name]
    for png in tmp_path.glob("report-*.png"):
        assert png.read_bytes().startswith(PNG_MAGIC)
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(EXPECTED_PLOTS[name])


@pytest.mark.parametrize("name", SCENARIOS)
def test_html_is_self_contained(name: str, tmp_path: Path) -> None:
    write_reports(load(name), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(script|link)\b", page)
    assert not re.search(r"""\bsrc=["'](?!data:)""", page)
    for run in load(name)["runs"]:
        assert run["label"] in page


def test_html_escapes_what_it_shows() -> None:
    result = load("warm")
    result["runs"][0]["label"] = "<b>evil</b>"
    page = render_html(result, [])
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page


@pytest.mark.parametrize("name", SCENARIOS)
def test_csv_has_one_row_per_run_with_the_expected_columns(name: str, tmp_path: Path) -> None:
    result = load(name)
    write_reports(result, tmp_path)
    with (tmp_path / "result.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        columns = reader.fieldnames or []
    assert len(rows) == len(result["runs"])
    assert columns[: len(CSV_FIXED)] == CSV_FIXED
    for row, run in zip(rows, result["runs"], strict=True):
        assert row["label"] == run["label"]
        assert float(row["latency_p99_ms"]) == pytest.approx(run["latency_ms"]["p99"])
        for key, value in run["params"].items():
            assert row[f"param_{key}"] == str(value)


def test_csv_flattens_errors_split_and_cold(tmp_path: Path) -> None:
    write_reports(load("scale"), tmp_path)
    (row,) = csv.DictReader((tmp_path / "result.csv").open())
    assert row["errors_UNAVAILABLE"] == "61" and row["errors_total"] == "85"
    assert float(row["split_backend_queue_p50_ms"]) == pytest.approx(38.0)
    assert row["split_offload_p50_ms"] == ""  # not measured stays empty, not zero
    assert row["cost_kind"] == "cloudrun" and float(row["cost_usd_per_million"]) > 0
    write_reports(load("cold"), tmp_path)
    (row,) = csv.DictReader((tmp_path / "result.csv").open())
    assert row["cold_samples"] == "5"
    assert float(row["cold_init_ms_mean"]) > float(row["cold_inference_ms_mean"]) > 0


def test_minimal_result_with_missing_optional_keys(tmp_path: Path) -> None:
    result = {
        "schema": "infergw.bench/1",
        "scenario": "warm",
        "target": "127.0.0.1:8001",
        "protocol": "grpc",
        "model": "identity",
        "runs": [
            {"label": "only", "mode": "closed", "achieved_rps": 0.0, "requests": 0, "ok": 0},
            {"label": "half", "latency_ms": {"p50": 3.0}, "split_ms": {"compute": {"p50": 1.0}}},
        ],
    }
    table = format_table(result)
    assert "only" in table and "half" in table
    write_reports(copy.deepcopy(result), tmp_path)
    assert (tmp_path / "report.html").exists()
    assert len(list(csv.DictReader((tmp_path / "result.csv").open()))) == 2


def test_no_runs_at_all(tmp_path: Path) -> None:
    result = {"schema": "infergw.bench/1", "scenario": "warm", "runs": []}
    assert "warm" in format_table(result)
    write_reports(result, tmp_path)
    assert list(csv.DictReader((tmp_path / "result.csv").open())) == []


def test_one_payload_size_is_not_a_protocol_sweep() -> None:
    pytest.importorskip("matplotlib")
    result = load("concurrency")
    for run in result["runs"]:
        run["params"].update(protocol="grpc", payload_bytes=602112)
    names = {p.name for p in plots.render_all(result)}
    assert "protocol" not in names and "concurrency" in names


def test_runner_supplied_cost_is_used_as_is() -> None:
    result = load("warm")
    result["runs"][0]["cost"] = {"kind": "lambda", "usd_per_million": 123.0, "basis": "given"}
    assert "$121" not in format_table(result) and "$123" in format_table(result)


def test_prices_file_from_settings_overrides(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"lambda": {"gb_second_usd": {"x86_64": 0.0}}}))
    result = load("warm")
    result["settings"]["prices_file"] = str(prices)
    assert "$0.200" in format_table(result)  # only the $0.20 per 1M request charge is left


def test_report_without_matplotlib_still_writes(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(plots, "available", lambda: False)
    write_reports(load("warm"), tmp_path)
    assert not list(tmp_path.glob("*.png"))
    assert "infergw[bench]" in (tmp_path / "report.html").read_text()


def test_table_shows_who_answered_when_a_route_mixed_backends() -> None:
    result = load("scale")
    run = result["runs"][0]
    run["answered"] = [
        {"backend": "triton", "reason": "primary", "requests": 60, "share": 0.6},
        {"backend": "lambda", "reason": "spill", "requests": 40, "share": 0.4},
    ]
    assert "answered by triton 60.0% (primary), lambda 40.0% (spill)" in format_table(result)
    run["answered"] = [{"backend": "triton", "reason": "primary", "requests": 9, "share": 1.0}]
    assert "answered by" not in format_table(result)  # one backend, first choice: no note


def test_a_run_several_backends_answered_gets_the_answered_over_time_figure() -> None:
    pytest.importorskip("matplotlib")
    result = load("scale")
    assert "answered" not in {p.name for p in plots.render_all(result)}  # one backend
    run = result["runs"][0]
    run["answered"] = [
        {"backend": "triton", "reason": "primary", "requests": 3, "share": 0.75},
        {"backend": "lambda", "reason": "spill", "requests": 1, "share": 0.25},
    ]
    for i, window in enumerate(run["timeseries"]):
        window["answered"] = {"triton/primary": 3, **({"lambda/spill": 1} if i % 2 else {})}
    answered = [p for p in plots.render_all(result) if p.name == "answered"]
    assert len(answered) == 1 and answered[0].png.startswith(PNG_MAGIC)


def test_a_replayed_trace_says_its_window_compression_and_rate_scale() -> None:
    params = {"trace": "azure-code", "trace_start_s": 600.0, "trace_duration_s": 1200.0,
              "speedup": 10.0, "rate_scale": 2.0, "arrivals": 4321}  # fmt: skip
    result = {"scenario": "trace", "runs": [{"label": "trace azure-code", "params": params}]}
    table = format_table(result)
    assert "trace azure-code (600 s to 1800 s of it): time compressed 10x, rate x2" in table
    assert "4321 arrivals" in table
    del params["speedup"]  # a run that replayed no trace says nothing of one
    assert "time compressed" not in format_table(result)

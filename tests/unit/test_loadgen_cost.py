"""Cost per million requests against hand-computed values from the published formulas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infergw.loadgen.cost import (
    CostError,
    annotate_costs,
    billed_duration_ms,
    cost_per_million,
    load_prices,
    mixed_cost_per_million,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def run_with(compute: float | None = None, coldstart: float | None = None, **extra: Any) -> dict:
    split = {}
    if compute is not None:
        split["compute"] = {"p50": compute, "p95": compute * 2}
    if coldstart is not None:
        split["coldstart"] = {"p50": coldstart, "p95": coldstart * 2}
    return {"label": "r", "split_ms": split, "latency_ms": {"p50": 500.0}, **extra}


def test_packaged_prices_are_dated_and_sourced() -> None:
    prices = load_prices()
    assert prices["read_on"]
    for section in ("lambda", "sagemaker", "cloudrun", "nodes"):
        assert prices[section]["read_on"], section
        assert prices[section]["source"], section
        assert prices[section]["note"], section


def test_lambda_1024mb_100ms() -> None:
    # 1 GB x 0.1 s x $0.0000166667 x 1e6 = $1.66667, plus $0.20 per 1M requests.
    cost = cost_per_million(run_with(compute=100.0), "lambda", memory_mb=1024)
    assert cost["billed_ms"] == 100
    assert cost["components"]["compute"] == pytest.approx(1.66667)
    assert cost["components"]["requests"] == pytest.approx(0.20)
    assert cost["usd_per_million"] == pytest.approx(1.86667)
    assert cost["basis"] == "compute"


def test_lambda_rounds_up_to_the_millisecond_and_bills_coldstart() -> None:
    # 99.2 + 0.5 ms -> 100 ms billed; 512 MB = 0.5 GB.
    cost = cost_per_million(run_with(compute=99.2, coldstart=0.5), "lambda", memory_mb=512)
    assert cost["billed_ms"] == 100
    assert cost["components"]["compute"] == pytest.approx(0.5 * 0.1 * 0.0000166667 * 1e6)
    assert cost["basis"] == "compute+coldstart"


def test_lambda_uses_the_split_mean_when_the_runner_records_it() -> None:
    run = {"split_ms": {"compute": {"p50": 10.0, "p95": 30.0, "mean": 20.0}}}
    assert billed_duration_ms(run) == (20.0, "compute")


def test_lambda_defaults_to_the_deployed_memory() -> None:
    cost = cost_per_million(run_with(compute=1000.0), "lambda")
    assert cost["memory_mb"] == load_prices()["lambda"]["default_memory_mb"]


def test_without_a_split_the_backend_round_trip_is_billed() -> None:
    run = {
        "label": "r",
        "latency_ms": {"mean": 120.0, "p50": 100.0},
        "split_ms": {"protocol": {"p50": 15.0, "p95": 20.0}, "queue": {"p50": 5.0, "p95": 9.0}},
    }
    ms, basis = billed_duration_ms(run)
    assert ms == pytest.approx(100.0)  # mean 120 - protocol 15 - queue 5
    assert basis.startswith("backend round trip")


def test_cold_samples_are_billed_when_there_is_no_split() -> None:
    run = {"cold": [{"init_ms": 900, "inference_ms": 100}, {"init_ms": 1100, "inference_ms": 100}]}
    assert billed_duration_ms(run) == (1100.0, "cold samples")


def test_sagemaker_per_second_by_memory_plus_data() -> None:
    run = run_with(compute=250.0, bytes={"sent_per_request": 2**20, "received_per_request": 0})
    cost = cost_per_million(run, "sagemaker", memory_mb=2048)
    # 0.25 s x $0.00004/s x 1e6 = $10; 1 MiB x $0.016/GB x 1e6 = $15.625.
    assert cost["components"]["compute"] == pytest.approx(10.0)
    assert cost["components"]["data"] == pytest.approx(0.016 * 1e6 / 1024)
    assert cost["usd_per_million"] == pytest.approx(10.0 + 15.625)


def test_sagemaker_rejects_a_memory_size_it_has_no_price_for() -> None:
    with pytest.raises(CostError, match="1500 MB"):
        cost_per_million(run_with(compute=10.0), "sagemaker", memory_mb=1500)


def test_cloudrun_rounds_up_to_100ms() -> None:
    # 120 ms -> 200 ms billed; 2 vCPU and 2 GiB (the packaged defaults).
    cost = cost_per_million(run_with(compute=120.0), "cloudrun")
    assert cost["billed_ms"] == 200
    assert cost["components"]["cpu"] == pytest.approx(2 * 0.2 * 0.000024 * 1e6)  # $9.60
    assert cost["components"]["memory"] == pytest.approx(2 * 0.2 * 0.0000025 * 1e6)  # $1.00
    assert cost["components"]["requests"] == pytest.approx(0.40)
    assert cost["usd_per_million"] == pytest.approx(11.0)


def test_cloudrun_concurrency_shares_the_instance_time() -> None:
    prices = load_prices()
    prices["cloudrun"] = {**prices["cloudrun"], "concurrency": 4}
    shared = cost_per_million(run_with(compute=120.0), "cloudrun", prices, memory_mb=2048)
    assert shared["components"]["cpu"] == pytest.approx(9.60 / 4)


def test_node_spreads_the_hourly_price_over_achieved_throughput() -> None:
    # $0.526/h at 100 req/s = 360,000 req/h -> $1.4611 per 1M.
    cost = cost_per_million({"achieved_rps": 100.0}, "triton")
    assert cost["kind"] == "node:g4dn.xlarge"
    assert cost["usd_per_million"] == pytest.approx(0.526 / 360_000 * 1e6)
    explicit = cost_per_million({"achieved_rps": 100.0}, "node:c6i.xlarge")
    assert explicit["usd_per_million"] == pytest.approx(0.17 / 360_000 * 1e6)


def test_node_without_throughput_is_an_error() -> None:
    with pytest.raises(CostError, match="no throughput"):
        cost_per_million({"label": "idle", "achieved_rps": 0.0}, "triton")


def test_unknown_backend_kind_says_what_is_known() -> None:
    with pytest.raises(CostError, match=r"no prices for backend kind 'azureml'.*lambda"):
        cost_per_million(run_with(compute=10.0), "azureml")


def test_a_section_missing_from_prices_is_a_clear_error() -> None:
    prices = {k: v for k, v in load_prices().items() if k != "lambda"}
    with pytest.raises(CostError, match="no prices for 'lambda'"):
        cost_per_million(run_with(compute=10.0), "lambda", prices)


def test_run_without_any_duration_is_an_error() -> None:
    with pytest.raises(CostError, match="no measured duration"):
        cost_per_million({"label": "empty"}, "lambda")


def test_user_prices_file_overrides_key_by_key(tmp_path: Path) -> None:
    user = tmp_path / "prices.json"
    user.write_text(
        json.dumps(
            {
                "read_on": "2030-01-01",
                "lambda": {"gb_second_usd": {"x86_64": 0.00001}, "request_usd_per_million": 0.0},
                "nodes": {"hourly_usd": {"my-gpu": 3.6}},
            }
        )
    )
    prices = load_prices(user)
    assert prices["read_on"] == "2030-01-01"
    assert prices["lambda"]["gb_second_usd"]["arm64"] == 0.0000133334  # kept from the package
    cost = cost_per_million(run_with(compute=100.0), "lambda", prices, memory_mb=1024)
    assert cost["usd_per_million"] == pytest.approx(1.0)  # 1 GB x 0.1 s x $0.00001 x 1e6
    node = cost_per_million({"achieved_rps": 1.0}, "node:my-gpu", prices)
    assert node["usd_per_million"] == pytest.approx(1000.0)  # $3.6/h at 3600 req/h
    assert prices["nodes"]["hourly_usd"]["g4dn.xlarge"] == 0.526


def test_unreadable_prices_file_is_a_cost_error(tmp_path: Path) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text("{not json")
    with pytest.raises(CostError, match="prices file"):
        load_prices(bad)
    with pytest.raises(CostError, match="prices file"):
        load_prices(tmp_path / "missing.json")


def test_annotate_costs_keeps_the_reason_when_a_run_cannot_be_priced() -> None:
    result = json.loads((FIXTURES / "bench_result_warm.json").read_text())
    result["runs"].append({"label": "empty"})
    annotate_costs(result, "lambda", memory_mb=1024)
    assert result["runs"][0]["cost"]["usd_per_million"] > 0
    assert "no measured duration" in result["runs"][1]["cost"]["error"]


def test_a_mixed_route_pays_the_node_for_the_run_and_each_serverless_request_its_own() -> None:
    # 1,000 requests in 10 s: 900 on Triton (a g4dn.xlarge at $0.526/h for 10 s), 100
    # spilled to Lambda at 3008 MB: 20 ms compute each, one of them cold by 1,000 ms
    # (coldstart mean 10 ms over the 100), so 30 ms billed per request on average.
    run = {
        "label": "spill",
        "ok": 1000,
        "measured_s": 10.0,
        "billed_ms_by_backend": {
            "triton": {"requests": 900, "compute": 5.0, "coldstart": 0.0},
            "lambda": {"requests": 100, "compute": 20.0, "coldstart": 10.0},
        },
    }
    cost = mixed_cost_per_million(run, load_prices())
    node = 0.526 * 10 / 3600 / 1000 * 1e6  # the node's 10 s over 1,000 requests
    per_lambda = 3008 / 1024 * 0.030 * 0.0000166667 + 0.20e-6  # one request's bill
    assert cost["kind"] == "mixed"
    assert cost["components"]["triton"] == pytest.approx(node)
    assert cost["components"]["lambda"] == pytest.approx(per_lambda * 100 / 1000 * 1e6)
    assert cost["usd_per_million"] == pytest.approx(node + per_lambda * 100 / 1000 * 1e6)
    with pytest.raises(CostError, match="no backend answered"):
        mixed_cost_per_million({"label": "x", "ok": 0}, load_prices())


def test_one_cold_request_in_a_hundred_adds_a_hundredth_of_its_init_to_the_bill() -> None:
    # Recorded by the load generator's own recorder: 99 warm requests computing 16 ms,
    # one that also paid a 2,000 ms cold start. Lambda bills each its own duration: the
    # mean is 16 + 2000/100 = 36 ms, not 16 + 2000 (the cold requests' median).
    from infergw.loadgen.recorder import Recorder

    rec = Recorder(start=0.0)
    for i in range(100):
        timing = "compute;dur=16" + (", coldstart;dur=2000" if i == 0 else "")
        rec.record(1.0 + i, 1.0 + i, 1.05 + i, (None, timing, 10))
    run = rec.run_dict("scale", "open", {}, offered=True)
    cost = cost_per_million(run, "lambda")
    per_request = 3008 / 1024 * 0.036 * 0.0000166667 + 0.20e-6
    assert cost["billed_ms"] == pytest.approx(36.0)
    assert cost["usd_per_million"] == pytest.approx(per_request * 1e6)  # ~$1.96, not ~$98

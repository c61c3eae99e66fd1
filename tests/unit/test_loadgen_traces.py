"""Arrival traces: loading, statistics, compression, the MMPP fit, and `bench trace`'s use."""

from __future__ import annotations

import itertools
import re
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from infergw.loadgen import scenarios, traces
from infergw.loadgen.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _readme_table() -> dict[str, dict[str, float]]:
    """The packaged README's table, parsed: the figures `describe` must reproduce."""
    text = resources.files("infergw.loadgen").joinpath(traces.DATA, "README.md").read_text()
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\| (azure_llm_2023_\w+\.csv) \|(.*)\|$", line)
        if match:
            numbers = [float(x.replace(",", "")) for x in re.findall(r"[\d,]+\.?\d*", match[2])]
            keys = ("arrivals", "span_s", "mean_rate", "p50", "p99", "max")
            rows[match[1]] = dict(zip(keys, numbers, strict=True))
    return rows


def _generate(fit: traces.MmppFit, horizon: float, seed: int) -> np.ndarray:
    gen = itertools.takewhile(lambda t: t < horizon, fit.schedule(seed))
    return np.fromiter(gen, dtype=np.float64)


# --- the packaged traces ------------------------------------------------------------


def test_packaged_traces_ship_with_their_attribution_and_package_data() -> None:
    folder = resources.files("infergw.loadgen").joinpath(traces.DATA)
    readme = folder.joinpath("README.md").read_text()
    assert "CC-BY 4.0" in readme and "Splitwise" in readme
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["infergw.loadgen"]
    for name in [*traces.NAMED.values(), "README.md"]:
        assert folder.joinpath(name).is_file()
        assert any(Path(traces.DATA, name).match(p) for p in patterns), name


@pytest.mark.parametrize("name", sorted(traces.NAMED))
def test_describe_reproduces_the_readme_table(name: str) -> None:
    want = _readme_table()[traces.NAMED[name]]
    arrivals = traces.packaged(name)
    assert arrivals[0] == 0.0 and np.all(np.diff(arrivals) >= 0)
    got = traces.describe(arrivals, 10.0)
    assert got.arrivals == want["arrivals"]
    assert round(got.span_s) == want["span_s"]
    assert round(got.mean_rate, 2) == want["mean_rate"]
    for key in ("p50", "p99", "max"):
        assert round(getattr(got, key), 1) == want[key], key


def test_load_takes_names_or_paths(tmp_path: Path) -> None:
    assert traces.load("azure-conv").size == traces.packaged("azure-conv").size
    f = tmp_path / "t.csv"
    f.write_text("3\n1\n2\n")
    assert traces.load(f).tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="unknown trace"):
        traces.packaged("azure-nope")
    with pytest.raises(ValueError, match="No such file"):
        traces.load(tmp_path / "missing.csv")


# --- timestamp and count files ----------------------------------------------------------


def test_timestamps_numbers_with_or_without_header(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("1000.5,a\n# comment\n1000.0,b\n1002.0,c\n")
    assert traces.read_timestamps(plain).tolist() == pytest.approx([0.0, 0.5, 2.0])
    ms = tmp_path / "ms.csv"
    ms.write_text("model,time_ms\nx,250\nx,0\nx,1250\n")  # the column named like a time
    assert traces.read_timestamps(ms, "ms").tolist() == pytest.approx([0.0, 0.25, 1.25])
    assert traces.read_timestamps(ms).dtype == np.float64
    with pytest.raises(ValueError, match="unit"):
        traces.read_timestamps(ms, "min")


def test_timestamps_iso_datetimes_in_any_column(tmp_path: Path) -> None:
    f = tmp_path / "iso.csv"
    f.write_text(
        "ContextTokens,TIMESTAMP\n"
        "5,2023-11-16 18:17:04.5000000\n"
        "7,2023-11-16 18:17:03.9799600\n"
        "9,2023-11-16 18:18:03.9799600\n"
    )
    assert traces.read_timestamps(f).tolist() == pytest.approx([0.0, 0.52004, 60.0])
    # Across the 2023 European DST change at 01:00 UTC: naive stamps are UTC, no hour lost.
    dst = tmp_path / "dst.csv"
    dst.write_text("2023-10-29T00:59:00\n2023-10-29T01:01:00\n2023-10-29T02:00:00+01:00\n")
    assert traces.read_timestamps(dst).tolist() == pytest.approx([0.0, 60.0, 120.0])


def test_a_bad_row_is_reported_with_its_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("time\n1.0\n2.0\noops\n")
    with pytest.raises(ValueError, match=r"bad.csv:4: cannot read 'oops'"):
        traces.read_timestamps(f)


def test_counts_uniform_keeps_each_interval_count(tmp_path: Path) -> None:
    f = tmp_path / "counts.csv"
    f.write_text("minute,requests\n0,3\n1,0\n2,5\n")
    a = traces.read_counts(f, interval_s=60.0, spread="uniform", seed=1)
    assert np.histogram(a, bins=[0, 60, 120, 180])[0].tolist() == [3, 0, 5]
    assert np.all(np.diff(a) >= 0)
    assert np.array_equal(a, traces.read_counts(f, 60.0, "uniform", seed=1))
    assert not np.array_equal(a, traces.read_counts(f, 60.0, "uniform", seed=2))
    even = traces.read_counts(f, 60.0, "even")
    assert even.tolist() == pytest.approx([10, 30, 50, 126, 138, 150, 162, 174])
    with pytest.raises(ValueError, match="fractional"):
        (tmp_path / "frac.csv").write_text("2.5\n")
        traces.read_counts(tmp_path / "frac.csv")


def test_counts_poisson_has_the_counts_as_means(tmp_path: Path) -> None:
    f = tmp_path / "rates.csv"
    f.write_text("\n".join(["20.5"] * 400))
    a = traces.read_counts(f, interval_s=1.0, spread="poisson", seed=3)
    c = traces.window_counts(a, 1.0, full_only=True)
    assert c.mean() == pytest.approx(20.5, rel=0.03)  # 400 x Poisson(20.5): sd of mean 0.23
    assert c.var() / c.mean() == pytest.approx(1.0, abs=0.2)


# --- statistics and compression ---------------------------------------------------------


def test_window_counts_and_poisson_statistics() -> None:
    assert traces.window_counts(np.array([0.0, 0.5, 2.5, 3.0]), 1.0).tolist() == [2, 0, 1, 1]
    rng = np.random.default_rng(0)
    poisson = np.cumsum(rng.exponential(1 / 50.0, 200_000))  # 50/s for ~4000 s
    assert traces.dispersion(poisson, 1.0) == pytest.approx(1.0, abs=0.1)  # sd ~0.02
    assert traces.lag1_autocorrelation(poisson, 1.0) == pytest.approx(0.0, abs=0.05)
    with pytest.raises(ValueError, match="not over-dispersed"):
        traces.fit_mmpp(poisson, 1.0)


def test_speedup_and_window() -> None:
    a = np.array([0.0, 1.0, 2.0, 5.0, 9.0])
    assert traces.speedup(a, 4.0).tolist() == [0.0, 0.25, 0.5, 1.25, 2.25]
    assert traces.window(a, 1.0, 4.0).tolist() == [0.0, 1.0]  # [1, 5): 5 excluded
    assert traces.window(a, 2.0).tolist() == [0.0, 3.0, 7.0]
    with pytest.raises(ValueError, match="no arrivals"):
        traces.window(a, 20.0)
    with pytest.raises(ValueError):
        traces.speedup(a, 0.0)


# --- the MMPP fit ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(traces.NAMED))
def test_fitted_mmpp_matches_the_trace(name: str) -> None:
    arrivals = traces.packaged(name)
    fit = traces.fit_mmpp(arrivals, 10.0)
    # The closed form of the fitted process gives back the targets exactly...
    mean, idc, lag1 = traces.mmpp_moments(fit.rates, fit.mean_dwell_s, 10.0)
    assert (mean, idc, lag1) == pytest.approx((fit.mean_rate, fit.dispersion, fit.lag1))
    assert fit.mean_rate == pytest.approx(traces.describe(arrivals).mean_rate)
    # ... and a long seeded run of it (~60 trace lengths) measures the same.
    generated = _generate(fit, 200_000.0, seed=1)
    assert generated.size / 200_000.0 == pytest.approx(fit.mean_rate, rel=0.03)
    assert traces.dispersion(generated, 10.0) == pytest.approx(fit.dispersion, rel=0.15)
    assert traces.lag1_autocorrelation(generated, 10.0) == pytest.approx(fit.lag1, abs=0.05)


def test_fit_split_rule_and_explicit_share() -> None:
    bursty = traces.fit_mmpp(traces.packaged("azure-code"), 10.0)
    assert bursty.rates[0] == 0.0  # too bursty for a symmetric split: an on/off source
    steady = traces.fit_mmpp(traces.packaged("azure-conv"), 10.0)
    assert steady.rates[0] > 0 and steady.mean_dwell_s[0] == pytest.approx(steady.mean_dwell_s[1])
    skewed = traces.fit_mmpp(traces.packaged("azure-conv"), 10.0, high_share=0.2)
    moments = traces.mmpp_moments(skewed.rates, skewed.mean_dwell_s, 10.0)
    assert moments == pytest.approx((steady.mean_rate, steady.dispersion, steady.lag1))
    with pytest.raises(ValueError, match="negative low rate"):
        traces.fit_mmpp(traces.packaged("azure-code"), 10.0, high_share=0.9)


# --- what `bench trace` replays ---------------------------------------------------------


def test_bench_trace_replays_a_window_of_a_packaged_trace_compressed() -> None:
    s = Settings(scenario="trace", trace_kind="azure-code", trace_speedup=10.0)
    s = s.replace(trace_start=600.0, trace_duration=1200.0)
    schedule, params, length = scenarios.trace_schedule(s)
    offsets = np.array(list(schedule))
    want = traces.speedup(traces.window(traces.packaged("azure-code"), 600.0, 1200.0), 10.0)
    assert np.array_equal(offsets, want) and offsets[-1] < 120.0 == length  # 1200 trace s / 10
    assert params["trace"] == "azure-code" and params["source"] == "azure-code"
    assert (params["speedup"], params["trace_start_s"], params["trace_duration_s"]) == (
        10.0,
        600.0,
        1200.0,
    )
    assert params["arrivals"] == want.size
    assert params["replay_stats"]["mean_rate"] == pytest.approx(traces.describe(want).mean_rate)


def test_bench_trace_file_counts_and_legacy_csv(tmp_path: Path) -> None:
    stamps = tmp_path / "stamps.csv"
    stamps.write_text("t\n10\n12\n11\n")
    for s in (Settings(trace_file=str(stamps)), Settings(trace_csv=str(stamps))):
        schedule, params, _ = scenarios.trace_schedule(s)  # default kind: a file wins
        assert list(schedule) == [0.0, 1.0, 2.0] and params["trace"] == "file"
    counts = tmp_path / "counts.csv"
    counts.write_text("4\n0\n2\n")
    schedule, params, _ = scenarios.trace_schedule(
        Settings(trace_kind="file", trace_counts=str(counts), interval_s=2.0, seed=5)
    )
    assert len(list(schedule)) == 6
    assert (params["interval_s"], params["spread"], params["seed"]) == (2.0, "uniform", 5)
    with pytest.raises(ValueError, match="needs --trace-file"):
        scenarios.trace_schedule(Settings(trace_kind="fitted"))
    with pytest.raises(ValueError, match="drop the file"):
        scenarios.trace_schedule(Settings(trace_kind="azure-conv", trace_file=str(stamps)))


def test_bench_trace_fitted_is_seeded_and_says_what_it_fitted() -> None:
    s = Settings(trace_kind="fitted", trace_file="azure-conv", trace_duration=1800.0, seed=3)
    a, params, length = scenarios.trace_schedule(s)
    b, _, _ = scenarios.trace_schedule(s)
    c, _, _ = scenarios.trace_schedule(s.replace(seed=4))
    first, second, other = list(a), list(b), list(c)
    assert first == second != other and first[-1] < 1800.0 == length
    assert params["trace"] == "fitted" and params["source"] == "azure-conv"
    fit = traces.fit_mmpp(traces.window(traces.packaged("azure-conv"), 0.0, 1800.0), 10.0)
    assert params["fit"] == fit.as_dict() and params["seed"] == 3


def test_synthetic_kinds_are_unchanged() -> None:
    schedule, params, length = scenarios.trace_schedule(Settings(trace_kind="onoff", seed=2))
    assert params["trace"] == "onoff" and length == 60.0
    assert next(schedule) >= 0.0
    _, params, _ = scenarios.trace_schedule(Settings())
    assert params["trace"] == "mmpp"


@pytest.mark.parametrize("factor", [0.25, 1.0, 2.0, 3.5])
def test_rate_scale_multiplies_arrivals_and_keeps_where_the_bursts_are(factor: float) -> None:
    arrivals = traces.window(traces.packaged("azure-code"), 0.0, 600.0)
    scaled = traces.scale_rate(arrivals, factor, seed=3)
    assert scaled.size == pytest.approx(factor * arrivals.size, rel=0.05)
    assert np.all(np.diff(scaled) >= 0) and scaled[0] >= 0 and scaled[-1] <= arrivals[-1]
    per_minute = np.histogram(arrivals, bins=10, range=(0, 600))[0]
    scaled_per_minute = np.histogram(scaled, bins=10, range=(0, 600))[0]
    assert np.argmax(scaled_per_minute) == np.argmax(per_minute)  # the busiest minute stays
    assert np.array_equal(scaled, traces.scale_rate(arrivals, factor, seed=3))  # seeded


def test_bench_trace_says_it_scaled_the_rate_and_time_scale_is_the_speedup() -> None:
    from tests.unit.test_loadgen_settings import parse

    s = parse(
        *["trace", "--trace-kind", "azure-code", "--trace-duration", "60", "--time-scale", "4",
         "--rate-scale", "2", "--seed", "1"]
    )  # fmt: skip
    assert (s.trace_speedup, s.rate_scale) == (4.0, 2.0)
    schedule, params, length = scenarios.trace_schedule(s)
    assert params["rate_scale"] == 2.0 and length == 15.0
    plain, _, _ = scenarios.trace_schedule(s.replace(rate_scale=1.0))
    assert len(list(schedule)) == pytest.approx(2 * len(list(plain)), rel=0.15)

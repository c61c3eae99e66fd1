"""The HDR-style histogram against numpy on known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infergw.loadgen.histogram import Histogram

QS = (1, 10, 25, 50, 75, 90, 95, 99, 99.9)


def filled(values: np.ndarray) -> Histogram:
    h = Histogram()
    for v in values:
        h.record_ms(float(v))
    return h


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(1).lognormal(np.log(20.0), 0.8, 200_000),  # ms, long tail
        np.random.default_rng(2).exponential(5.0, 100_000) + 2.0,
        np.random.default_rng(3).uniform(3.0, 3000.0, 50_000),
    ],
)
def test_percentiles_within_a_tenth_of_a_percent_of_numpy(values: np.ndarray) -> None:
    h = filled(values)
    # the histogram reports the value at a rank (no interpolation): numpy's inverted_cdf
    expected = np.percentile(values, QS, method="inverted_cdf")
    got = h.percentiles(QS)
    for q, g, e in zip(QS, got, expected, strict=True):
        assert g == pytest.approx(e, rel=1e-3), q
    assert h.count == len(values)
    assert h.mean_ms == pytest.approx(values.mean(), rel=1e-4)
    assert h.min_ms == pytest.approx(values.min(), abs=1e-3)
    assert h.max_ms == pytest.approx(values.max(), abs=1e-3)


def test_small_values_are_exact_to_the_microsecond() -> None:
    h = filled(np.array([0.001, 0.002, 0.5, 1.0]))
    assert h.percentiles((25, 50, 75, 100)) == pytest.approx([0.001, 0.002, 0.5, 1.0])


def test_merge_equals_recording_everything_in_one() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.lognormal(1, 1, 10_000), rng.lognormal(3, 0.5, 10_000)
    merged = filled(a)
    merged.merge(filled(b))
    whole = filled(np.concatenate([a, b]))
    assert merged.percentiles(QS) == whole.percentiles(QS)
    assert (merged.count, merged.min_us, merged.max_us) == (whole.count, whole.min_us, whole.max_us)
    with pytest.raises(ValueError):
        merged.merge(Histogram(2))


def test_range_is_clamped_at_one_hour_and_memory_is_bounded() -> None:
    h = Histogram()
    for ms in np.geomspace(0.001, 3_600_000.0, 100_000):
        h.record_ms(float(ms))
    h.record_ms(10 * 3_600_000.0)
    assert h.clamped == 1 and h.max_ms == 3_600_000.0
    assert len(h._counts) < 25_000  # buckets, whatever the number of values


def test_empty_summary_and_coarse_precision() -> None:
    assert all(v is None for v in Histogram().summary().values())
    assert math.isnan(Histogram().percentile(50))
    coarse = filled(np.full(10, 123.4))
    coarse2 = Histogram(2)
    coarse2.record_ms(123.4)
    assert coarse2.percentile(50) == pytest.approx(123.4, rel=0.01)
    assert coarse.summary()["p50"] == pytest.approx(123.4, rel=1e-3)

"""Statistical properties of the arrival schedules, with fixed seeds."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from infergw.loadgen import schedules


def take_until(gen, horizon: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array(list(itertools.takewhile(lambda t: t < horizon, gen)))


def counts(offsets: np.ndarray, horizon: float, bin_s: float = 1.0) -> np.ndarray:
    return np.histogram(offsets, bins=np.arange(0.0, horizon + bin_s, bin_s))[0]


def test_constant_is_evenly_spaced() -> None:
    offsets = list(itertools.islice(schedules.constant(4.0), 9))
    assert offsets == pytest.approx([k / 4 for k in range(9)])


def test_poisson_rate_and_exponential_gaps() -> None:
    offsets = take_until(schedules.poisson(200.0, seed=1), 100.0)
    assert len(offsets) / 100.0 == pytest.approx(200.0, rel=0.02)
    gaps = np.diff(offsets)
    ks = stats.kstest(gaps, "expon", args=(0, 1 / 200.0))
    assert ks.statistic < 0.01  # 20k samples: the 1% critical value is ~0.0115
    c = counts(offsets, 100.0, 0.1)
    assert c.var() / c.mean() == pytest.approx(1.0, abs=0.1)  # Poisson: dispersion 1


def test_poisson_is_reproducible_by_seed() -> None:
    a = list(itertools.islice(schedules.poisson(10.0, seed=3), 50))
    b = list(itertools.islice(schedules.poisson(10.0, seed=3), 50))
    c = list(itertools.islice(schedules.poisson(10.0, seed=4), 50))
    assert a == b != c


@pytest.mark.parametrize("poisson", [False, True])
def test_ramp_rate_profile_is_linear(poisson: bool) -> None:
    offsets = np.array(list(schedules.ramp(1.0, 100.0, 60.0, poisson=poisson, seed=2)))
    assert offsets.max() < 60.0 and np.all(np.diff(offsets) >= 0)
    assert len(offsets) == pytest.approx((1 + 100) / 2 * 60, rel=0.03)
    per_10s = counts(offsets, 60.0, 10.0) / 10.0  # mean rate in each 10 s block
    expected = [1 + 99 * (i + 0.5) / 6 for i in range(6)]
    for got, want in zip(per_10s, expected, strict=True):
        # Poisson: 3 standard deviations of a 10 s count; deterministic: rounding only
        tolerance = 3 * math.sqrt(want * 10) / 10 if poisson else 0.02 * want
        assert got == pytest.approx(want, abs=tolerance)


def test_deterministic_ramp_at_constant_rate_is_constant() -> None:
    assert list(schedules.ramp(2.0, 2.0, 2.0)) == pytest.approx([0.25, 0.75, 1.25, 1.75])


def test_onoff_is_bursty_with_the_documented_mean_rate() -> None:
    offsets = take_until(schedules.onoff(100.0, 2.0, 6.0, seed=5), 2000.0)
    assert len(offsets) / 2000.0 == pytest.approx(100 * 2 / (2 + 6), rel=0.1)
    c = counts(offsets, 2000.0)
    assert c.var() / c.mean() > 10  # index of dispersion: Poisson would be 1


def test_mmpp_spends_its_time_at_the_state_rates() -> None:
    offsets = take_until(schedules.mmpp([10.0, 200.0], [20.0, 5.0], seed=9), 5000.0)
    c = counts(offsets, 5000.0)
    mean = (10 * 20 + 200 * 5) / 25  # time-weighted state rates
    assert c.mean() == pytest.approx(mean, rel=0.1)
    # Per-second counts cluster around the two state rates, not the mean.
    low, high = np.mean(c < 40), np.mean(c > 150)
    assert low == pytest.approx(20 / 25, abs=0.06) and high == pytest.approx(5 / 25, abs=0.06)
    assert c.var() / c.mean() > 10


def test_mmpp_diurnal_shape() -> None:
    period = 100.0
    gen = schedules.mmpp(
        [50.0, 50.0], [1.0, 1.0], diurnal_amplitude=0.8, diurnal_period_s=period, seed=1
    )
    offsets = take_until(gen, 20 * period)
    phase = (offsets % period) / period
    peak = np.mean((phase > 0.15) & (phase < 0.35))  # around sin = 1
    trough = np.mean((phase > 0.65) & (phase < 0.85))  # around sin = -1
    assert peak / trough == pytest.approx((1 + 0.8 * 0.95) / (1 - 0.8 * 0.95), rel=0.25)


def test_mmpp_transition_matrix_and_bad_parameters() -> None:
    gen = schedules.mmpp(
        [1.0, 5.0, 50.0], [1.0, 1.0, 1.0], transitions=[[0, 1, 0], [0, 0, 1], [1, 0, 0]]
    )
    assert len(take_until(gen, 300.0)) > 0
    with pytest.raises(ValueError):
        next(schedules.mmpp([1.0], [1.0]))
    with pytest.raises(ValueError):
        next(schedules.mmpp([1.0, 2.0], [1.0, 1.0], diurnal_amplitude=1.5))


def test_generators_are_lazy() -> None:
    gen = schedules.poisson(1e6, seed=0)
    assert math.isfinite(next(gen))  # an infinite schedule costs nothing until consumed

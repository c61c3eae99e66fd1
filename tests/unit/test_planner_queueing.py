"""The simulator against closed-form queueing: M/M/c waiting probability and mean wait.

Waits in a queue are autocorrelated, so the standard error comes from batch means (the
run cut into long batches, whose means are nearly independent), and each estimate must
lie within a few standard errors of Erlang C: a bound from the CLT, not a tuned margin.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from infergw.planner.dists import Dist, Latencies
from infergw.planner.pools import Autoscale
from infergw.planner.simulate import Draws, Policy, PolicyName, simulate
from infergw.planner.traces import poisson

REQUESTS = 1_000_000
WARMUP = 20_000
BATCHES = 40
Z = 4.0  # two-sided; about 3e-4 of failing by chance with 39 degrees of freedom


def erlang_c(c: int, arrival_rate: float, service_rate: float) -> tuple[float, float]:
    """P(wait > 0) and the mean wait of M/M/c."""
    a = arrival_rate / service_rate
    rho = a / c
    top = a**c / math.factorial(c) / (1 - rho)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return p_wait, p_wait / (c * service_rate - arrival_rate)


def batch_mean(values: np.ndarray) -> tuple[float, float]:
    """The mean and its standard error from batch means."""
    batches = np.array_split(values, BATCHES)
    means = np.array([b.mean() for b in batches])
    return float(values.mean()), float(means.std(ddof=1) / math.sqrt(BATCHES))


@pytest.mark.parametrize(
    ("policy", "c", "rho"),
    [
        ("always-on", 4, 0.8),
        ("always-on", 1, 0.7),
        ("autoscaled", 3, 0.75),  # the general slot pool, its size pinned (min = max)
    ],
)
def test_mmc_matches_erlang_c(policy: PolicyName, c: int, rho: float) -> None:
    mu = 1.0 / 0.050  # 50 ms mean service
    lam = rho * c * mu
    arrivals = poisson(lam, REQUESTS / lam, seed=c)
    latencies = Latencies(always_on=Dist.exponential(1 / mu))
    draws = Draws.make(len(arrivals), latencies, seed=11 + c)
    scale = Autoscale(min_slots=c, max_slots=c) if policy == "autoscaled" else None
    run = simulate(arrivals, Policy(policy, slots=c, autoscale=scale), latencies, draws)
    wait = (run.latency - run.service)[WARMUP:]
    assert np.all(wait > -1e-6)  # float noise of start + s - t - s at large t
    p_exact, w_exact = erlang_c(c, lam, mu)
    # A wait under 1 us is float noise (t ~ 1e5 s); its true probability is negligible.
    p_sim, p_se = batch_mean((wait > 1e-6).astype(float))
    w_sim, w_se = batch_mean(wait)
    assert abs(p_sim - p_exact) < Z * p_se, (p_sim, p_exact, p_se)
    assert abs(w_sim - w_exact) < Z * w_se, (w_sim, w_exact, w_se)
    # The run is long enough for the check to mean something: a few percent at most.
    assert Z * p_se < 0.05 * p_exact and Z * w_se < 0.1 * w_exact

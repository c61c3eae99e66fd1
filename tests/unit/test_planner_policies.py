"""The policies on small deterministic traces whose outcome can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infergw.planner.costs import Pricing, cost
from infergw.planner.dists import Dist, Latencies
from infergw.planner.pools import Autoscale, Serverless
from infergw.planner.report import summarise
from infergw.planner.simulate import (
    ALWAYS_ON,
    FAILED,
    SERVERLESS,
    Draws,
    Outcome,
    Policy,
    PolicyName,
    simulate,
)


def fixed(always_on: float = 1.0, serverless: float = 1.0, coldstart: float = 2.0) -> Latencies:
    return Latencies(Dist.fixed(always_on), Dist.fixed(serverless), Dist.fixed(coldstart))


def run(arrivals: list[float], policy: Policy, latencies: Latencies) -> Outcome:
    a = np.asarray(arrivals, dtype=float)
    return simulate(a, policy, latencies, Draws.make(len(a), latencies, seed=0))


ONE_SLOT_POLICIES = [
    Policy("always-on", slots=1),
    Policy("autoscaled", slots=1, autoscale=Autoscale(min_slots=1, max_slots=1)),
]


@pytest.mark.parametrize("policy", ONE_SLOT_POLICIES, ids=lambda p: p.name)
def test_one_slot_known_waits_and_violations(policy: Policy) -> None:
    # 1 slot, 1 s each: arrivals at 0, 0.5, 1.0 wait 0, 0.5, 1.0 s.
    out = run([0.0, 0.5, 1.0], policy, fixed())
    np.testing.assert_allclose(out.latency, [1.0, 1.5, 2.0])
    row = summarise(out, Pricing.from_prices(), slo_s=1.2)
    assert row["violations"] == 2 and row["failed"] == 0
    assert row["share_always_on"] == 1.0


@pytest.mark.parametrize("limit", [0, 1])
@pytest.mark.parametrize("name", ["always-on", "autoscaled"])
def test_full_queue_fails_and_counts_as_violation(name: PolicyName, limit: int) -> None:
    scale = Autoscale(min_slots=1, max_slots=1) if name == "autoscaled" else None
    policy = Policy(name, slots=1, max_queue=limit, autoscale=scale)
    out = run([0.0, 0.1, 0.2, 5.0], policy, fixed())
    expected_failed = [False, limit == 0, True, False]
    assert list(out.backend == FAILED) == expected_failed
    assert np.isnan(out.latency[2]) and out.latency[3] == pytest.approx(1.0)
    row = summarise(out, Pricing.from_prices(), slo_s=10.0)
    assert row["violations"] == sum(expected_failed)


def test_always_on_bills_every_slot_for_the_whole_horizon() -> None:
    pricing = Pricing.from_prices(instance="g5.xlarge", slots_per_instance=2)
    out = run([0.0, 1800.0, 3600.0], Policy("always-on", slots=3), fixed(always_on=0.5))
    assert out.horizon_s == pytest.approx(3600.5)  # the last request's completion
    bill = cost(out, pricing)
    assert bill.always_on_usd == pytest.approx(3 * 3600.5 / 3600 * pricing.slot_usd_per_hour)
    assert bill.serverless_usd == 0 and bill.warmth_usd == 0


@pytest.mark.parametrize(("kind", "service"), [("lambda", 0.1), ("cloudrun", 0.15)])
def test_pure_serverless_cost_is_exact_arithmetic(kind: str, service: float) -> None:
    # Cold at 0; warm at 10 and 20 (the instance is reused); reaped 100 s after 20.1, so
    # the request at 1000 is cold again.
    policy = Policy("serverless", slots=0, serverless=Serverless(idle_timeout_s=100.0))
    out = run([0.0, 10.0, 20.0, 1000.0], policy, fixed(serverless=service, coldstart=2.0))
    assert list(out.cold) == [True, False, False, True]
    np.testing.assert_allclose(out.latency, [2 + service, service, service, 2 + service])
    pricing = Pricing.from_prices(serverless_kind=kind)
    rate = pricing.rate
    step = rate.granularity_ms / 1e3
    billed = [math.ceil(round(d / step, 6)) * step for d in out.latency]
    if kind == "cloudrun":  # 100 ms granularity: 2.15 s bills 2.2 s, 0.15 s bills 0.2 s
        assert billed == pytest.approx([2.2, 0.2, 0.2, 2.2])
    expected = sum(billed) * rate.usd_per_second + 4 * rate.usd_per_request
    bill = cost(out, pricing)
    assert bill.serverless_usd == pytest.approx(expected, rel=1e-12)
    assert bill.always_on_usd == 0 and bill.warmth_usd == 0


def test_serverless_throttles_beyond_the_concurrency_limit_and_keeps_warm() -> None:
    config = Serverless(concurrency_limit=1, keep_warm=1, keep_warm_interval_s=60.0)
    policy = Policy("serverless", slots=0, serverless=config)
    out = run([0.0, 0.05, 0.2, 600.0], policy, fixed(serverless=0.1, coldstart=2.0))
    assert list(out.backend) == [SERVERLESS, FAILED, SERVERLESS, SERVERLESS]
    assert not out.cold.any()  # the kept-warm instance is never reaped
    assert out.keep_warm_pings == 10  # one instance, every 60 s over 600 s
    pricing = Pricing.from_prices()
    pings = 10 * (config.ping_s * pricing.rate.usd_per_second + pricing.rate.usd_per_request)
    assert cost(out, pricing).warmth_usd == pytest.approx(pings)


def test_autoscaled_slot_is_usable_only_after_the_provisioning_delay() -> None:
    scale = Autoscale(min_slots=1, max_slots=4, provision_delay_s=10.0, idle_release_s=5.0,
                      interval_s=1.0)  # fmt: skip
    arrivals = [*np.arange(0.0, 30.0, 1 / 3).tolist(), 200.0]
    fixed_one = run(arrivals, Policy("always-on", slots=1), fixed())
    scaled = run(arrivals, Policy("autoscaled", slots=1, autoscale=scale), fixed())
    # Before the first asked-for slot is ready (t = 10 at the earliest), the pool is the
    # one slot it started with: whatever started before then started as on one slot.
    early = fixed_one.arrivals + fixed_one.latency - 1.0 < 10.0 - 1e-9
    np.testing.assert_allclose(scaled.latency[early], fixed_one.latency[early])
    assert scaled.peak_slots > 1
    assert scaled.latency[~early].mean() < fixed_one.latency[~early].mean()
    # Released after the burst: billed less than the peak for the whole run, more than one.
    assert scaled.horizon_s < scaled.slot_seconds < scaled.peak_slots * scaled.horizon_s
    assert scaled.latency[-1] == pytest.approx(1.0)


def burst(until: float = 15.0) -> list[float]:
    return list(np.arange(0.0, until, 0.5))


def test_hybrid_never_spills_cold_when_the_cold_start_is_longer_than_the_wait() -> None:
    policy = Policy("hybrid", slots=1, max_queue_wait_s=2.0)
    out = run(burst(), policy, fixed(coldstart=100.0))  # waits reach ~15 s, << 100 s
    assert (out.backend == ALWAYS_ON).all() and not out.cold.any()
    # The same burst with a short cold start does spill, cold: the rule is what held it.
    short = run(burst(), policy, fixed(coldstart=0.5))
    spilled = short.backend == SERVERLESS
    assert spilled.any() and short.cold[spilled].any()


def test_hybrid_prewarm_makes_a_burst_spill_warm() -> None:
    # 1 slot of 1 s, arrivals every 0.5 s: the expected wait passes 5 s (half the bound)
    # at about t = 5 and 10 s at about t = 10; a pre-warm then takes 2 s, so it is ready.
    latencies = fixed(always_on=1.0, serverless=0.2, coldstart=2.0)
    cold_run = run(burst(), Policy("hybrid", slots=1, max_queue_wait_s=10.0), latencies)
    warm_run = run(
        burst(), Policy("hybrid", slots=1, max_queue_wait_s=10.0, prewarm=True), latencies
    )
    for out in (cold_run, warm_run):
        assert (out.backend == SERVERLESS).sum() >= 3
        assert (out.backend[out.arrivals < 9.0] == ALWAYS_ON).all()
    assert cold_run.cold.any()
    assert not warm_run.cold.any() and len(warm_run.prewarm_billed_s) >= 1
    pricing = Pricing.from_prices()
    assert cost(warm_run, pricing).warmth_usd > 0 == cost(cold_run, pricing).warmth_usd


def test_hybrid_spills_throttled_requests_back_to_the_always_on_queue() -> None:
    config = Serverless(concurrency_limit=1)
    policy = Policy("hybrid", slots=1, max_queue_wait_s=0.0, serverless=config)
    out = run([0.0, 0.0, 0.0], policy, fixed(coldstart=0.1))
    # First on the slot; second spills (wait 1 s > 0, cold 0.1 s <= 1 s); third is
    # throttled by the function's limit, so it queues on always-on instead of failing.
    assert list(out.backend) == [ALWAYS_ON, SERVERLESS, ALWAYS_ON]
    np.testing.assert_allclose(out.latency, [1.0, 1.1, 2.0])


def test_policies_draw_the_same_random_numbers() -> None:
    latencies = Latencies()
    a = np.sort(np.random.default_rng(3).uniform(0, 100, 500))
    one, two = (Draws.make(len(a), latencies, seed=5) for _ in range(2))
    np.testing.assert_array_equal(one.always_on, two.always_on)
    np.testing.assert_array_equal(one.coldstart, two.coldstart)


def test_autoscaled_follows_the_gateways_rule_step_by_step() -> None:
    """Five requests at once on one slot (1 s each). Step t=1: peak 5, 4 slots ordered,
    ready at t=3. Slot 1 serves 0-1, 1-2, 2-3; at t=3 the last two start on new slots.
    Each step wants the peak since the last (t=2: 4, t=3: 3, t=4: 2, then 1) and keeps the
    most wanted within the last 1.5 s: 4 at t=3, 3 at t=4, 2 at t=5, 1 at t=6, so one of
    the ordered slots goes at each of those steps."""
    scale = Autoscale(min_slots=1, max_slots=8, provision_delay_s=2.0, idle_release_s=1.5)
    policy = Policy("autoscaled", slots=1, autoscale=scale, queue_timeout_s=3.5)
    out = run([0.0, 0.0, 0.0, 0.0, 0.0, 10.0], policy, fixed(always_on=1.0))
    assert out.latency.tolist() == [1.0, 2.0, 3.0, 4.0, 4.0, 1.0]
    assert out.peak_slots == 5
    # Slot 1 for the whole run (to 11); the ordered ones from t=1 to 3, 4, 5 and 6.
    assert out.slot_seconds == pytest.approx(11 + 2 + 3 + 4 + 5)
    # With a 2.5 s queue timeout the two that would start at t=3 give up: failed.
    short = Policy("autoscaled", slots=1, autoscale=scale, queue_timeout_s=2.5)
    assert np.isnan(run([0.0] * 5, short, fixed(always_on=1.0)).latency[3:]).all()

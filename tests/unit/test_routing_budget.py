"""Retry and hedge budgets, and the backoff between tries."""

from __future__ import annotations

import pytest

from infergw.gateway.core.routing.budget import Backoff, HedgeBudget, RetryBudget, retry_after_s
from infergw.vocab.errors import QueueFull, Throttled, Unavailable


@pytest.mark.parametrize(
    ("active", "percent", "minimum", "limit"),
    [(0, 20, 3, 3), (10, 20, 3, 3), (20, 20, 3, 4), (100, 20, 3, 20), (9, 50, 0, 4)],
)
def test_retry_limit_is_a_share_of_active_requests_with_a_floor(
    active: int, percent: float, minimum: int, limit: int
) -> None:
    budget = RetryBudget(percent, minimum)
    budget.active = active
    assert budget.limit() == limit


def test_retries_beyond_the_budget_are_refused_until_one_ends() -> None:
    budget = RetryBudget(budget_percent=20, min_concurrent=3)
    with budget.request(), budget.retry() as a, budget.retry() as b, budget.retry() as c:
        assert (a, b, c) == (True, True, True)
        with budget.retry() as d:
            assert d is False
        assert budget.retrying == 3
    assert (budget.active, budget.retrying) == (0, 0)
    with budget.retry() as again:
        assert again


def test_hedges_are_at_most_their_share_of_requests() -> None:
    budget = HedgeBudget(percent=10)
    hedges = 0
    for _ in range(2000):
        budget.deposit()
        hedges += budget.withdraw()  # every request would like a hedge
    assert 200 <= hedges <= 201  # 10% of 2000, plus the one in hand at the start


def test_a_quiet_period_saves_at_most_cap_hedges() -> None:
    budget = HedgeBudget(percent=10, cap=5)
    for _ in range(1000):
        budget.deposit()
    assert sum(budget.withdraw() for _ in range(10)) == 5


BACKOFF = [
    # (retries, Retry-After, remaining deadline, delay) with the jitter at its top
    (0, None, None, 0.025),
    (1, None, None, 0.05),
    (5, None, None, 0.25),  # capped at max_s
    (0, 2.0, None, 2.0),  # at least the backend's Retry-After
    (0, 2.0, 1.5, None),  # that wait would reach the deadline: not taken
    (2, None, 0.2, 0.1),
    (3, None, 0.2, None),  # 0.2 >= remaining 0.2
]


@pytest.mark.parametrize(("retries", "retry_after", "remaining", "expected"), BACKOFF)
def test_backoff_is_full_jitter_within_the_deadline(
    retries: int, retry_after: float | None, remaining: float | None, expected: float | None
) -> None:
    top = Backoff(base_s=0.025, max_s=0.25, uniform=lambda lo, hi: hi)
    assert top.delay(retries, retry_after, remaining) == (
        None if expected is None else pytest.approx(expected)
    )


def test_backoff_jitter_spans_zero_to_the_cap() -> None:
    seen: list[tuple[float, float]] = []

    def uniform(lo: float, hi: float) -> float:
        seen.append((lo, hi))
        return lo

    assert Backoff(0.025, 0.25, uniform).delay(3, None, None) == 0.0
    assert seen == [(0.0, 0.2)]


def test_retry_after_comes_from_the_error() -> None:
    assert retry_after_s(Throttled("429", 3.0)) == 3.0
    assert retry_after_s(Throttled("429")) is None  # the backend said nothing
    assert retry_after_s(QueueFull("full", 2.0)) == 2.0
    assert retry_after_s(Unavailable("down")) is None

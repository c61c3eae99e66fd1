"""Outlier ejection: consecutive failures eject, ejections grow and end, throttling is no
failure, the max-ejected guard, and a single-backend route failing fast."""

from __future__ import annotations

import pytest

from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.routing.config import OutlierConfig
from infergw.gateway.core.routing.outcomes import Outcome, outcome_of
from infergw.gateway.core.routing.outlier import OutlierDetector, OutlierGate, eligible
from infergw.vocab import errors
from infergw.vocab.errors import InferGWError, Unavailable
from tests.unit.routing_fakes import FakeClock, Gate, request

CONFIG = OutlierConfig(consecutive_failures=3, base_ejection_s=10, max_ejection_s=25)


def detector(clock: FakeClock, config: OutlierConfig = CONFIG, name: str = "b") -> OutlierDetector:
    return OutlierDetector(name, config, clock)


def fail(d: OutlierDetector, times: int, outcome: Outcome = Outcome.OUTAGE) -> None:
    for _ in range(times):
        d.record(outcome)


OUTCOMES = [
    (errors.Unavailable("down"), None, Outcome.OUTAGE),
    (errors.DeadlineExceeded("per try"), 1.0, Outcome.OUTAGE),
    (errors.DeadlineExceeded("per try, no deadline"), None, Outcome.OUTAGE),
    (errors.DeadlineExceeded("the client's"), 0.0, Outcome.OUT_OF_TIME),
    (errors.Throttled("429", 2.0), None, Outcome.OVERLOAD),
    (errors.QueueFull("full"), None, Outcome.OVERLOAD),
    (errors.ResourceExhausted("quota"), None, Outcome.OVERLOAD),
    (errors.PayloadTooLarge("body", 10, 5), None, Outcome.CLIENT),
    (errors.InvalidArgument("bad shape"), None, Outcome.CLIENT),
    (errors.ModelNotFound("m"), None, Outcome.CLIENT),
    (errors.BackendError("model raised"), None, Outcome.FAULT),
    (errors.InferGWError("internal"), None, Outcome.FAULT),
    (errors.Cancelled("gone"), None, Outcome.CANCELLED),
]


@pytest.mark.parametrize(("error", "left", "outcome"), OUTCOMES, ids=lambda v: repr(v)[:30])
def test_each_error_has_one_routing_meaning(
    error: InferGWError, left: float | None, outcome: Outcome
) -> None:
    assert outcome_of(error, left) is outcome


def test_consecutive_failures_eject_for_base_times_ejections_capped() -> None:
    clock = FakeClock()
    d = detector(clock)
    fail(d, 2)
    assert not d.ejected()
    fail(d, 1)
    assert d.ejected() and d.ejection_left_s() == pytest.approx(10)
    clock.advance(10)
    assert not d.ejected()  # recovered after base x 1
    fail(d, 1)  # on probation: one failure ejects again, for base x 2
    assert d.ejected() and d.ejection_left_s() == pytest.approx(20)
    clock.advance(20)
    fail(d, 1)
    assert d.ejection_left_s() == pytest.approx(25)  # base x 3 = 30, capped at 25


def test_a_success_ends_probation_and_time_in_service_shortens_the_next_ejection() -> None:
    clock = FakeClock()
    d = detector(clock)
    fail(d, 3)
    clock.advance(10)
    d.record(None)
    fail(d, 2)
    assert not d.ejected()  # the count started again from 0
    clock.advance(10)  # one base_ejection_s in service: the multiplier goes back by one
    fail(d, 1)
    assert d.ejected() and d.ejection_left_s() == pytest.approx(10)


@pytest.mark.parametrize("neutral", [Outcome.OVERLOAD, Outcome.OUT_OF_TIME, Outcome.CANCELLED])
def test_throttling_and_the_clients_own_deadline_are_not_failures(neutral: Outcome) -> None:
    d = detector(FakeClock())
    fail(d, 2)
    fail(d, 10, neutral)
    assert not d.ejected() and d.consecutive == 2  # neither counted nor reset
    fail(d, 1)
    assert d.ejected()


def test_an_answer_to_a_client_error_shows_the_backend_healthy() -> None:
    d = detector(FakeClock())
    fail(d, 2)
    d.record(Outcome.CLIENT)
    fail(d, 2)
    assert not d.ejected()


def test_the_guard_ejects_at_most_max_percent_of_a_route_and_at_least_one() -> None:
    clock = FakeClock()
    config = OutlierConfig(consecutive_failures=1, max_ejected_percent=50)
    ds = [detector(clock, config, name) for name in "abcd"]
    fail(ds[2], 1)
    clock.advance(1)
    fail(ds[0], 1)
    clock.advance(1)
    fail(ds[1], 1)
    used, skipped = eligible(["a", "b", "c", "d"], ds)
    assert skipped == [ds[0], ds[2]]  # 50% of 4: the two ejected first
    assert used == ["b", "d"]
    ten_percent = [detector(clock, OutlierConfig(consecutive_failures=1), n) for n in "xy"]
    fail(ten_percent[0], 1)
    fail(ten_percent[1], 1)
    used, skipped = eligible(["x", "y"], ten_percent)
    assert used == ["y"] and skipped == [ten_percent[0]]  # 10% of 2 rounds to 0: still one


def test_members_without_a_detector_are_never_ejected() -> None:
    assert eligible(["a", "b"], [None, None]) == (["a", "b"], [])


async def test_a_single_backend_fails_fast_while_ejected_and_recovers() -> None:
    clock = FakeClock()
    backend = Gate("triton", hold=False, error=Unavailable("connection refused"))
    d = detector(clock, name="triton")
    gate = OutlierGate(backend, d)
    for _ in range(3):
        with pytest.raises(Unavailable, match="connection refused"):
            await gate.infer(request(), RequestContext("test"))
    assert backend.calls == 3
    clock.advance(4)
    with pytest.raises(Unavailable, match=r"'triton' is ejected .* retry after 6 s"):
        await gate.infer(request(), RequestContext("test"))
    assert backend.calls == 3  # failed fast: the backend was not called
    clock.advance(6)
    backend.error = None
    response = await gate.infer(request(), RequestContext("test"))
    assert response.version == "triton" and d.consecutive == 0


async def test_the_gate_counts_a_per_try_timeout_but_not_the_clients_deadline() -> None:
    clock = FakeClock()
    d = detector(clock)
    gate = OutlierGate(Gate("b", hold=False, error=errors.DeadlineExceeded("slow")), d)
    with_time_left = RequestContext("test", deadline=clock.now() + 60)
    with pytest.raises(errors.DeadlineExceeded):
        await gate.infer(request(), with_time_left)
    assert d.consecutive == 1
    out_of_time = RequestContext("test", deadline=clock.now())
    with pytest.raises(errors.DeadlineExceeded):
        await gate.infer(request(), out_of_time)
    assert d.consecutive == 1

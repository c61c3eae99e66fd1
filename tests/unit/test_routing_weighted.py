"""Weighted: proportions within 5% over 2,000 requests, the same id to the same backend,
ejected backends skipped with only their share moving."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.routing.attempts import Target
from infergw.gateway.core.routing.config import OutlierConfig
from infergw.gateway.core.routing.decisions import Reason
from infergw.gateway.core.routing.outcomes import Outcome
from infergw.gateway.core.routing.outlier import OutlierDetector
from infergw.gateway.core.routing.weighted import Weighted
from infergw.vocab.errors import InvalidArgument
from tests.unit.routing_fakes import Decisions, FakeClock, Gate, attempts, request

WEIGHTS = {"triton": 80, "cloudrun": 20}
N = 2000


def split(
    clock: FakeClock, weights: dict[str, int], detectors: dict[str, OutlierDetector] | None = None
) -> Weighted:
    members = [Target(n, Gate(n, hold=False), (detectors or {}).get(n)) for n in weights]
    return Weighted(members, weights, attempts(clock), rng=random.Random(7))


@pytest.mark.parametrize("with_ids", [True, False], ids=["request ids", "no ids"])
async def test_proportions_within_five_percent_over_2000_requests(with_ids: bool) -> None:
    route = split(FakeClock(), WEIGHTS)
    served: Counter[str] = Counter()
    for i in range(N):
        response = await route.infer(request(f"req-{i}" if with_ids else ""), RequestContext("t"))
        served[response.version] += 1
    assert served["triton"] / N == pytest.approx(0.80, abs=0.05)
    assert served["cloudrun"] / N == pytest.approx(0.20, abs=0.05)


def test_the_same_request_id_goes_to_the_same_backend() -> None:
    a, b = split(FakeClock(), WEIGHTS), split(FakeClock(), WEIGHTS)
    picks = [a.choose(f"id-{i}").name for i in range(200)]
    assert picks == [a.choose(f"id-{i}").name for i in range(200)]
    assert picks == [b.choose(f"id-{i}").name for i in range(200)]  # not per instance


def test_an_ejected_backend_is_skipped_and_only_its_share_moves() -> None:
    clock = FakeClock()
    config = OutlierConfig(consecutive_failures=1, max_ejected_percent=50)
    detectors = {"triton": OutlierDetector("triton", config, clock)}
    route = split(clock, {"triton": 50, "cloudrun": 30, "lambda": 20}, detectors)
    ids = [f"id-{i}" for i in range(600)]
    before = {i: route.choose(i).name for i in ids}
    detectors["triton"].record(Outcome.OUTAGE)
    during = {i: route.choose(i).name for i in ids}
    assert "triton" not in during.values()
    assert all(during[i] == before[i] for i in ids if before[i] != "triton")  # nobody else moved
    moved = Counter(during[i] for i in ids if before[i] == "triton")
    assert moved["cloudrun"] > moved["lambda"] > 0  # triton's share split 30:20
    clock.advance(30)
    assert {i: route.choose(i).name for i in ids} == before  # back in service: all return


async def test_every_pick_is_counted_as_weighted_without_a_reason_in_the_timing() -> None:
    sink = Decisions()
    members = [Target("triton", Gate("triton", hold=False))]
    route = Weighted(members, {"triton": 1}, attempts(FakeClock(), sink))
    ctx = RequestContext("t")
    await route.infer(request("x"), ctx)
    assert sink.seen == [("m", "triton", Reason.WEIGHTED)]
    assert ctx.backend_name == "triton" and ctx.attempts == 1


def test_zero_weight_members_receive_nothing_and_a_route_needs_one_weight() -> None:
    route = split(FakeClock(), {"triton": 0, "cloudrun": 1})
    assert {route.choose(f"id-{i}").name for i in range(100)} == {"cloudrun"}
    with pytest.raises(InvalidArgument, match="no backend has a weight"):
        split(FakeClock(), {"triton": 0})

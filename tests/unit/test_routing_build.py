"""Route policies built from their config; the ``Backend`` contract every route keeps."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.routing.attempts import Target
from infergw.gateway.core.routing.build import RouteParts, build_route
from infergw.gateway.core.routing.config import RoutePolicyConfig
from infergw.gateway.core.routing.fallback import Fallback
from infergw.gateway.core.routing.hedge import Hedge
from infergw.gateway.core.routing.spillover import Spillover
from infergw.gateway.core.routing.weighted import Weighted
from infergw.vocab.errors import InvalidArgument
from tests.unit.routing_fakes import FakeClock, Gate, request

POLICY = TypeAdapter(RoutePolicyConfig)
NAMES = ("triton", "lambda", "cloudrun")


class NoWait:
    def expected_wait_s(self) -> float:
        return 0.0


def parts(**kw: object) -> RouteParts:
    targets = {n: Target(n, Gate(n, hold=False)) for n in NAMES}
    return RouteParts("minilm", targets, clock=FakeClock(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ({"kind": "spillover", "primary": "triton", "overflow": ["lambda"]}, Spillover),
        ({"kind": "fallback", "order": ["triton", "cloudrun"]}, Fallback),
        ({"kind": "weighted", "weights": {"triton": 80, "cloudrun": 20}}, Weighted),
        ({"kind": "hedge", "backends": ["lambda", "cloudrun"], "delay_ms": "p95"}, Hedge),
    ],
)
async def test_each_kind_builds_its_policy_and_serves(raw: dict[str, object], kind: type) -> None:
    route = build_route(POLICY.validate_python(raw), parts(queues={"triton": NoWait()}))
    assert isinstance(route, kind) and route.name == "minilm"
    response = await route.infer(request("r1"), RequestContext("test"))
    assert response.version in NAMES
    assert await route.ready() and await route.model_ready("identity")
    assert (await route.model_metadata("identity")).platform in NAMES


def test_hedge_delay_is_milliseconds_or_adaptive() -> None:
    fixed = build_route(
        POLICY.validate_python(
            {"kind": "hedge", "backends": ["lambda", "cloudrun"], "delay_ms": 50}
        ),
        parts(),
    )
    assert isinstance(fixed, Hedge) and fixed.fixed_delay_s == pytest.approx(0.05)


def test_unknown_members_and_a_missing_queue_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown backend 'sagemaker'"):
        build_route(POLICY.validate_python({"kind": "fallback", "order": ["sagemaker"]}), parts())
    spill = {"kind": "spillover", "primary": "triton", "overflow": ["lambda"]}
    with pytest.raises(InvalidArgument, match="no queue state for 'triton'"):
        build_route(POLICY.validate_python(spill), parts())


async def test_closing_a_route_leaves_its_members_to_the_router() -> None:
    route = build_route(POLICY.validate_python({"kind": "fallback", "order": ["triton"]}), parts())
    await route.close()
    assert await route.ready()

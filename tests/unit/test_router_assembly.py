"""How ``Router.from_config`` assembles routes: policies over the stacks, the shared
outlier detectors, and warm-state estimates for the backends that scale to zero."""

from __future__ import annotations

from typing import Any

from infergw.gateway.core.config import parse_config
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.policies import ObservedWarmth
from infergw.gateway.core.router import Router
from infergw.gateway.core.routing.outlier import OutlierGate
from infergw.gateway.core.routing.route import Route
from infergw.gateway.core.warmth import WarmthEstimator
from infergw.vocab.types import InferRequest, InferResponse
from tests.fakes import EchoBackend

BACKENDS: dict[str, Any] = {
    "triton": {"kind": "triton", "url": "127.0.0.1:1", "outlier": {"consecutive_failures": 2}},
    "lambda": {"kind": "lambda", "function_name": "f", "region": "us-east-1"},
}


def router(models: dict[str, Any]) -> Router:
    return Router.from_config(parse_config({"backends": BACKENDS, "models": models}))


def test_routes_are_policies_gates_or_stacks() -> None:
    r = router(
        {
            "spill": {"policy": {"kind": "spillover", "primary": "triton", "overflow": ["lambda"]}},
            "gated": "triton",
            "*": "lambda",
        }
    )
    assert isinstance(r.select("spill"), Route)
    assert isinstance(r.select("gated"), OutlierGate)  # triton has outlier: fails fast
    assert r.select("other") is r.backends["lambda"]  # no outlier: the stack itself
    assert r.select("spill", pinned="lambda") is r.backends["lambda"]  # pinning: past the policy
    assert r.backend_name("spill") == "triton"  # control calls: the first member
    assert set(r.outliers) == {"triton"}


def test_only_backends_that_scale_to_zero_get_a_warm_state_estimate() -> None:
    r = router({"*": "triton"})
    assert set(r.estimators) == {"lambda"}
    assert isinstance(r.backends["lambda"], ObservedWarmth)
    assert not isinstance(r.backends["triton"], ObservedWarmth)


class ColdOnce(EchoBackend):
    """Answers; the first answer reports a cold start, as Lambda's Init Duration does."""

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        response = await super().infer(request, ctx)
        if len(self.calls) == 1:
            ctx.timings.add("coldstart", 800.0, "backend=echo")
        ctx.timings.add("backend", 900.0 if len(self.calls) == 1 else 20.0, "backend=echo")
        return response


async def test_answers_feed_the_estimate() -> None:
    estimator = WarmthEstimator(assumed_coldstart_s=5.0)
    observed = ObservedWarmth(ColdOnce("echo"), estimator)
    request = InferRequest(model="echo", inputs=())
    for _ in range(3):
        await observed.infer(request, RequestContext(protocol="grpc"))
    assert estimator.coldstart_s() == 0.8  # measured, no longer the 5 s prior
    assert estimator.warm_latency_s() < 0.1

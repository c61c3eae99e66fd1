"""How ``Router.from_config`` assembles routes: policies over the stacks, the shared
outlier detectors, and warm-state estimates for the backends that scale to zero."""

from __future__ import annotations

from typing import Any

import pytest

from infergw.gateway.core.config import parse_config
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.policies import ObservedWarmth
from infergw.gateway.core.router import Router, ping_model
from infergw.gateway.core.routing.outlier import OutlierGate
from infergw.gateway.core.routing.route import Route
from infergw.gateway.core.routing.spillover import Spillover
from infergw.gateway.core.warmth import WarmthEstimator
from infergw.vocab.errors import InvalidArgument
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


def test_each_backend_that_scales_to_zero_gets_a_keep_warm_runner_fed_by_its_answers() -> None:
    r = router(
        {"spill": {"policy": {"kind": "spillover", "primary": "triton", "overflow": ["lambda"]}}}
    )
    runner = r.keep_warm.runners["lambda"]
    assert set(r.keep_warm.runners) == {"lambda"}
    assert r.estimators["lambda"] is runner.estimator  # one view: spill-over's and the pings'
    observed = r.backends["lambda"]
    assert isinstance(observed, ObservedWarmth) and observed.observer is runner
    route = r.select("spill")
    assert isinstance(route, Spillover) and route.prewarm is r.keep_warm  # pre-warm wired


def test_keep_warm_pings_the_first_route_naming_the_backend_unless_told() -> None:
    def pinged(models: dict[str, Any], keep_warm: dict[str, Any]) -> str | None:
        backends = {**BACKENDS, "lambda": {**BACKENDS["lambda"], "keep_warm": keep_warm}}
        config = parse_config({"backends": backends, "models": models})
        (lambda_config,) = (b for b in config.backends if b.name == "lambda")
        return ping_model(lambda_config, config.routes)

    spill = {"policy": {"kind": "spillover", "primary": "triton", "overflow": ["lambda"]}}
    assert pinged({"*": "lambda", "a": "triton", "b": spill}, {"mode": "fixed"}) == "b"
    assert pinged({"b": spill, "c": "lambda"}, {"mode": "fixed", "model": "c"}) == "c"
    assert pinged({"*": "lambda"}, {}) is None  # "*" is no model name


def test_keep_warm_on_without_a_model_to_ping_is_a_config_error() -> None:
    backends = {**BACKENDS, "lambda": {**BACKENDS["lambda"], "keep_warm": {"mode": "fixed"}}}
    config = parse_config({"backends": backends, "models": {"*": "triton"}})
    with pytest.raises(InvalidArgument, match=r"backends.lambda.keep_warm: no model to ping"):
        Router.from_config(config)
    off = parse_config({"backends": BACKENDS, "models": {"*": "triton"}})
    assert "lambda" in Router.from_config(off).keep_warm.runners  # off: pre-warm only


async def test_start_and_close_run_the_keep_warm_runners_and_close_every_backend() -> None:
    r = router({"*": "triton"})
    await r.start()
    assert r.keep_warm.runners["lambda"].running
    await r.close()
    assert not r.keep_warm.runners["lambda"].running

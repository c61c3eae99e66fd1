"""Model -> backend routing.

A route names the model's backend, or a routing policy across several (``routing/``:
fallback, weighted, hedge, spill-over), and optionally the other backends a client may
pin with ``x-infergw-backend`` (when the config allows pinning at all). A ``*`` route
catches every model not named explicitly. A pinned request goes to that backend's own
stack, past any route policy.

``from_config`` assembles the routes: one policy stack per backend
(``policies.DEFAULT_STACK``), one outlier detector and one window of service times per
backend (shared by every route that uses it), then per route either the stack (behind
an ``OutlierGate`` when the backend has ``outlier:``) or the route policy over the stacks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from infergw.gateway.core.autoscale import Autoscaler, AutoscalerSet
from infergw.gateway.core.backend import Backend, BackendBase, create_backend
from infergw.gateway.core.config import WILDCARD, BackendConfig, GatewayConfig, RouteConfig
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.keep_warm import (
    DurationPingPrice,
    FlatPingPrice,
    KeepWarm,
    KeepWarmSet,
    Ping,
    PingPricer,
    backend_ping,
)
from infergw.gateway.core.policies import (
    DEFAULT_STACK,
    Admission,
    ObservedWarmth,
    Policy,
    build_stack,
)
from infergw.gateway.core.routing.attempts import Target
from infergw.gateway.core.routing.build import RouteParts, build_route
from infergw.gateway.core.routing.config import KeepWarmConfig
from infergw.gateway.core.routing.decisions import NO_DECISIONS, DecisionSink
from infergw.gateway.core.routing.outlier import OutlierDetector, OutlierGate
from infergw.gateway.core.routing.queue_state import AdmissionQueue, QueueState
from infergw.gateway.core.warmth import Observation, WarmthEstimator
from infergw.vocab.errors import InvalidArgument, ModelNotFound
from infergw.vocab.prices import PriceError, packaged_prices, serverless_rate
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata, ModelStatistics

log = logging.getLogger(__name__)


def wrap_with_policies(backend: Backend, cfg: BackendConfig) -> Backend:
    """The policy stack every configured backend gets (``policies.DEFAULT_STACK``)."""
    return build_stack(backend, cfg, DEFAULT_STACK)


class Router:
    def __init__(
        self,
        backends: Mapping[str, Backend],
        routes: Sequence[RouteConfig],
        allow_pinning: bool = True,
        *,
        unwrapped: Mapping[str, Backend] | None = None,
        allow_model_control: bool = False,
        routed: Mapping[str, Backend] | None = None,
        outliers: Mapping[str, OutlierDetector] | None = None,
        estimators: Mapping[str, WarmthEstimator] | None = None,
        keep_warm: KeepWarmSet | None = None,
        autoscalers: AutoscalerSet | None = None,
    ) -> None:
        self.backends = dict(backends)
        self.routes = {r.model: r for r in routes}
        # What each route's requests go to, by route key (default: its backend's stack).
        self.routed = dict(routed or {})
        self.outliers = dict(outliers or {})
        self.estimators = dict(estimators or {})  # serverless backends' warm state
        self.keep_warm = keep_warm or KeepWarmSet({})  # their pings (started by ``start``)
        self.autoscalers = autoscalers or AutoscalerSet({})  # always-on slots (``start``)
        self.allow_pinning = allow_pinning
        # The backends without their policies: control calls (``control.py``) bypass them.
        self.unwrapped = dict(unwrapped if unwrapped is not None else backends)
        self.allow_model_control = allow_model_control

    @classmethod
    def from_config(cls, config: GatewayConfig, decisions: DecisionSink = NO_DECISIONS) -> Router:
        unwrapped = {b.name: create_backend(b.name, b.kind, b.options) for b in config.backends}
        backends = {b.name: wrap_with_policies(unwrapped[b.name], b) for b in config.backends}
        configs = {b.name: b for b in config.backends}
        serverless = {
            name: raw
            for name, raw in unwrapped.items()
            if isinstance(raw, BackendBase) and raw.scales_to_zero
        }
        prices = packaged_prices() if serverless else {}  # read once, for every ping price
        keep_warm = KeepWarmSet(
            {
                name: _keep_warm(configs[name], raw, config.routes, prices)
                for name, raw in serverless.items()
            }
        )
        estimators = keep_warm.estimators()
        for name, runner in keep_warm.runners.items():
            backends[name] = ObservedWarmth(backends[name], runner)  # feeds its estimator too
        outliers = {
            b.name: OutlierDetector(b.name, b.outlier) for b in config.backends if b.outlier
        }
        targets = {
            n: Target(n, stack, outliers.get(n), estimators.get(n)) for n, stack in backends.items()
        }
        queues: dict[str, QueueState] = {}
        scalers: dict[str, Autoscaler] = {}
        for name, target in targets.items():
            admission = _admission_of(target.backend)
            if admission is not None:
                queues[name] = AdmissionQueue(admission, target.service_times)
                if (scaling := configs[name].autoscale) is not None:
                    scalers[name] = Autoscaler(name, admission, scaling)
        routed: dict[str, Backend] = {}
        for route in config.routes:
            if route.policy is not None:
                parts = RouteParts(route.model, targets, queues, sink=decisions, prewarm=keep_warm)
                routed[route.model] = build_route(route.policy, parts)
            elif route.primary in outliers:
                routed[route.model] = OutlierGate(backends[route.primary], outliers[route.primary])
        return cls(
            backends,
            config.routes,
            config.allow_backend_pinning,
            unwrapped=unwrapped,
            allow_model_control=config.allow_model_control,
            routed=routed,
            outliers=outliers,
            estimators=estimators,
            keep_warm=keep_warm,
            autoscalers=AutoscalerSet(scalers),
        )

    def route_for(self, model: str) -> RouteConfig:
        route = self.routes.get(model) or self.routes.get(WILDCARD)
        if route is None:
            raise ModelNotFound(model)
        return route

    def is_known(self, model: str) -> bool:
        return model in self.routes

    def select(self, model: str, pinned: str | None = None) -> Backend:
        """What a request for ``model`` goes to: its route (policy or backend), or the
        pinned backend's stack."""
        if pinned:
            return self.backends[self.backend_name(model, pinned)]
        route = self.route_for(model)
        routed = self.routed.get(route.model)
        return routed if routed is not None else self.backends[route.primary]

    def backend_name(self, model: str, pinned: str | None = None) -> str:
        """The backend that owns ``model``: the pinned one, else its route's first choice
        (control calls go there; a route policy may send inference elsewhere)."""
        route = self.route_for(model)
        if not pinned or pinned == route.primary:
            return route.primary
        if not self.allow_pinning:
            raise InvalidArgument("pinning a backend is disabled by the gateway config")
        if pinned not in self.backends or (route.backends and pinned not in route.backends):
            raise InvalidArgument(f"backend {pinned!r} is not available for model {model!r}")
        return pinned

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        backend = self.select(request.model, ctx.pinned_backend)
        return await backend.infer(request, ctx)

    async def ready(self) -> bool:
        for backend in self.backends.values():
            if not await backend.ready():
                return False
        return True

    async def model_ready(self, model: str, version: str = "", pinned: str | None = None) -> bool:
        try:
            backend = self.select(model, pinned)
        except ModelNotFound:
            return False
        return await backend.model_ready(model, version)

    async def model_metadata(
        self, model: str, version: str = "", pinned: str | None = None
    ) -> ModelMetadata:
        return await self.select(model, pinned).model_metadata(model, version)

    async def model_statistics(
        self, model: str = "", version: str = "", pinned: str | None = None
    ) -> list[ModelStatistics]:
        if model:
            backend = self.select(model, pinned)
            return list(await backend.model_statistics(model, version))
        stats: list[ModelStatistics] = []
        for name in self.routes:
            if name != WILDCARD:
                stats.extend(await self.model_statistics(name, "", pinned))
        return stats

    def model_names(self) -> list[str]:
        return [m for m in self.routes if m != WILDCARD]

    async def start(self) -> None:
        """Start the background work: keep-warm pings, slot autoscaling."""
        await self.keep_warm.start()
        await self.autoscalers.start()

    async def close(self) -> None:
        """Stop the background work, then close every backend (each even if one before
        it fails)."""
        try:
            await self.autoscalers.stop()
            await self.keep_warm.stop()
        finally:
            for backend in self.backends.values():
                try:
                    await backend.close()
                except Exception:
                    log.exception("closing backend %r failed", backend.name)


def _keep_warm(
    cfg: BackendConfig,
    backend: Backend,
    routes: Sequence[RouteConfig],
    prices: Mapping[str, Any],
) -> KeepWarm:
    """A serverless backend's keep-warm runner: pings of the smallest request of its ping
    model (``keep_warm.model``, else the first route naming it), priced by the price list."""
    keep = cfg.keep_warm or KeepWarmConfig()
    model = ping_model(cfg, routes)
    if model is None and keep.mode != "off":
        raise InvalidArgument(
            f"backends.{cfg.name}.keep_warm: no model to ping: set keep_warm.model "
            "or route a model to this backend"
        )
    try:
        pricer: PingPricer = DurationPingPrice.of(serverless_rate(cfg.kind, prices))
    except PriceError as exc:
        if keep.max_cost_per_hour is not None:
            raise InvalidArgument(
                f"backends.{cfg.name}.keep_warm.max_cost_per_hour: {exc}"
            ) from exc
        pricer = FlatPingPrice(0.0)  # a kind the price list does not know: pings unpriced
    ping = backend_ping(backend, model) if model is not None else _no_ping(cfg.name)
    return KeepWarm(cfg.name, keep, ping, pricer=pricer)


def ping_model(cfg: BackendConfig, routes: Sequence[RouteConfig]) -> str | None:
    """The model a backend's keep-warm pings: ``keep_warm.model``, else the first route
    (not ``*``) that names the backend; None when there is none."""
    if cfg.keep_warm is not None and cfg.keep_warm.model is not None:
        return cfg.keep_warm.model
    return next((r.model for r in routes if r.model != WILDCARD and cfg.name in r.members), None)


def _no_ping(backend: str) -> Ping:
    async def ping() -> Observation:
        raise InvalidArgument(f"backend {backend!r} has no model to ping")

    return ping


def _admission_of(stack: Backend) -> Admission | None:
    """The admission policy in a backend's stack (spill-over reads its queue)."""
    layer: Backend = stack
    while isinstance(layer, Policy):
        if isinstance(layer, Admission):
            return layer
        layer = layer.inner
    return None

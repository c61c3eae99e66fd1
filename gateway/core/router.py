"""Model -> backend routing.

A route names the model's default backend and, optionally, the other backends a
client may pin with ``x-infergw-backend`` (when the config allows pinning at all).
A ``*`` route catches every model not named explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from infergw.gateway.core.backend import Backend, create_backend
from infergw.gateway.core.config import WILDCARD, BackendConfig, GatewayConfig, RouteConfig
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.policies import DEFAULT_STACK, build_stack
from infergw.vocab.errors import InvalidArgument, ModelNotFound
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata, ModelStatistics


def wrap_with_policies(backend: Backend, cfg: BackendConfig) -> Backend:
    """The policy stack every configured backend gets (``policies.DEFAULT_STACK``)."""
    return build_stack(backend, cfg, DEFAULT_STACK)


class Router:
    def __init__(
        self,
        backends: Mapping[str, Backend],
        routes: Sequence[RouteConfig],
        allow_pinning: bool = True,
    ) -> None:
        self.backends = dict(backends)
        self.routes = {r.model: r for r in routes}
        self.allow_pinning = allow_pinning

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Router:
        backends = {
            b.name: wrap_with_policies(create_backend(b.name, b.kind, b.options), b)
            for b in config.backends
        }
        return cls(backends, config.routes, config.allow_backend_pinning)

    def route_for(self, model: str) -> RouteConfig:
        route = self.routes.get(model) or self.routes.get(WILDCARD)
        if route is None:
            raise ModelNotFound(model)
        return route

    def is_known(self, model: str) -> bool:
        return model in self.routes

    def select(self, model: str, pinned: str | None = None) -> Backend:
        route = self.route_for(model)
        if not pinned or pinned == route.backend:
            return self.backends[route.backend]
        if not self.allow_pinning:
            raise InvalidArgument("pinning a backend is disabled by the gateway config")
        if pinned not in self.backends or (route.backends and pinned not in route.backends):
            raise InvalidArgument(f"backend {pinned!r} is not available for model {model!r}")
        return self.backends[pinned]

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

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.close()

"""Triton's control calls, forwarded to the backend that owns them.

Model configuration, statistics, the repository (index, load, unload), trace and log
settings and shared-memory registration are Triton's to answer, so the gateway passes
them through instead of modelling each: on gRPC the request's bytes go out and the
reply's bytes come back unchanged; on REST the request goes to the backend's own HTTP
endpoint and its answer (status and JSON body) comes back as is. Exact by construction,
and a field a later Triton adds passes through with no change here.

A backend offers this by implementing ``ControlPlane`` (Triton does). Who answers:

- a call about one model (its config or statistics, load/unload, its trace settings):
  the backend of the model's route, or the one ``x-infergw-backend`` pins (as for infer);
- a call about the server (log and trace settings, shared memory): the only control-plane
  backend configured; with several, the client chooses one with ``x-infergw-backend``,
  else FAILED_PRECONDITION naming them;
- a call about every model (statistics with no name, the repository index): every backend
  a route names, each answer keeping only the models routed to that backend (``owns``).

Control calls bypass the policies (admission, retry, deadline): Triton's control plane
is not subject to them either, and a model load must not queue behind inference.
Loading and unloading also need ``allow_model_control: true`` in the gateway config.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from infergw.gateway.core.config import WILDCARD
from infergw.vocab.errors import (
    FailedPrecondition,
    InferGWError,
    InvalidArgument,
    ModelNotFound,
    Unimplemented,
)
from infergw.vocab.types import ModelStatistics

if TYPE_CHECKING:
    from infergw.gateway.core.router import Router

PIN_HINT = "x-infergw-backend"

# Triton's extensions the gateway honours when it forwards to a backend that reports
# them. Left out: none today; an extension the gateway cannot pass through goes here
# by omission (see README "Triton parity").
FORWARDED_EXTENSIONS = frozenset(
    {
        "classification",
        "sequence",
        "model_repository",
        "model_repository(unload_dependents)",
        "schedule_policy",
        "model_configuration",
        "system_shared_memory",
        "cuda_shared_memory",
        "binary_tensor_data",
        "parameters",
        "statistics",
        "trace",
        "logging",
    }
)


@dataclass(frozen=True, slots=True)
class HttpCall:
    """A REST control request as the client sent it: forwarded to the backend's HTTP API."""

    method: str  # "GET" / "POST"
    path_qs: str  # "/v2/models/simple/config", query string included
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class HttpReply:
    """The backend's answer, passed on unchanged."""

    status: int
    body: bytes
    content_type: str = "application/json"


@runtime_checkable
class ControlPlane(Protocol):
    """A backend that answers Triton's control calls itself (see the module docstring).

    Errors are the tree's, as for every backend method; an HTTP answer that is an
    error on the backend's side (a 4xx in Triton's shape) is a reply, not an error.
    """

    name: str

    async def grpc_control(self, method: str, payload: bytes, timeout_s: float | None) -> bytes:
        """Send a serialized request of ``inference.GRPCInferenceService/method``."""
        ...

    async def http_control(self, call: HttpCall) -> HttpReply:
        """Send a REST control request; ``FailedPrecondition`` when there is no HTTP API."""
        ...

    @property
    def serves_http(self) -> bool:
        """Whether ``http_control`` can answer (Triton: an ``http_url`` is configured)."""
        ...

    async def extensions(self) -> tuple[str, ...]:
        """The extensions the backend reports in its server metadata."""
        ...


@dataclass(frozen=True, slots=True)
class Source:
    """One backend a route names, for calls about every model."""

    backend: str
    plane: ControlPlane | None  # None: answered through the Backend contract
    routed: tuple[str, ...]  # the models routed to it by name (not through ``*``)


class ControlRouter:
    """Which backend answers a control call (see the module docstring)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def plane(self, backend: str) -> ControlPlane | None:
        found = self.router.unwrapped.get(backend)
        return found if isinstance(found, ControlPlane) else None

    def for_model(self, model: str, pinned: str | None, what: str) -> ControlPlane:
        """The control plane of ``model``'s backend; Unimplemented if it has none."""
        if not model:
            raise InvalidArgument(f"{what}: a model name is required")
        name = self.router.backend_name(model, pinned)
        plane = self.plane(name)
        if plane is None:
            raise Unimplemented(f"{what} is not available for model {model!r}: {_no_plane(name)}")
        return plane

    def for_server(self, pinned: str | None, what: str) -> ControlPlane:
        """The one control plane a server-wide call can go to."""
        if pinned:
            if pinned not in self.router.backends:
                raise InvalidArgument(f"unknown backend {pinned!r} in {PIN_HINT}")
            if not self.router.allow_pinning:
                raise InvalidArgument("pinning a backend is disabled by the gateway config")
            plane = self.plane(pinned)
            if plane is None:
                raise Unimplemented(f"{what}: {_no_plane(pinned)}")
            return plane
        planes = [p for name in self.router.backends if (p := self.plane(name)) is not None]
        if len(planes) == 1:
            return planes[0]
        if not planes:
            raise Unimplemented(f"{what}: no configured backend serves it (Triton does)")
        names = ", ".join(repr(p.name) for p in planes)
        choose = (
            f"choose one with the {PIN_HINT} header"
            if self.router.allow_pinning
            else "configure only one, or enable allow_backend_pinning and choose with "
            f"the {PIN_HINT} header"
        )
        raise FailedPrecondition(
            f"{what} is a server-wide call and {len(planes)} backends can answer it "
            f"({names}): {choose}"
        )

    def check_model_control(self, what: str) -> None:
        if not self.router.allow_model_control:
            raise FailedPrecondition(
                f"{what}: model control is disabled by the gateway config "
                "(set allow_model_control: true to forward loads and unloads)"
            )

    def sources(self) -> list[Source]:
        """Each backend a route names, once, in the order the routes name them."""
        routed: dict[str, list[str]] = {}
        for model, route in self.router.routes.items():
            names = routed.setdefault(route.primary, [])
            if model != WILDCARD:
                names.append(model)
        return [Source(b, self.plane(b), tuple(models)) for b, models in routed.items()]

    def owns(self, backend: str, model: str) -> bool:
        """Whether a request for ``model`` goes to ``backend`` (by its route, unpinned)."""
        try:
            return self.router.backend_name(model) == backend
        except ModelNotFound:
            return False

    async def contract_statistics(self, source: Source) -> list[ModelStatistics]:
        """``source``'s statistics through the Backend contract, for its routed models:
        a control plane's all-model answer kept to those it owns, another backend's per
        model routed to it by name. ``Unimplemented`` where the backend has none."""
        backend = self.router.backends[source.backend]
        if source.plane is not None:
            stats = await backend.model_statistics("")
            return [s for s in stats if self.owns(source.backend, s.name)]
        found: list[ModelStatistics] = []
        for model in source.routed:
            found += await backend.model_statistics(model)
        return found

    async def extensions(self, own: Iterable[str]) -> tuple[str, ...]:
        """The gateway's own extensions, then those its routed control planes report
        and the gateway forwards; a backend that cannot answer now adds none."""
        found = list(own)
        for source in self.sources():
            if source.plane is None:
                continue
            try:
                reported = await source.plane.extensions()
            except InferGWError:
                continue
            found += [e for e in reported if e in FORWARDED_EXTENSIONS]
        return tuple(dict.fromkeys(found))


def _no_plane(backend: str) -> str:
    return f"its backend {backend!r} has no Triton control plane"

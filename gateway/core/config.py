"""Gateway configuration: YAML -> frozen dataclasses, validated with clear errors.

Example::

    listen: {host: 0.0.0.0, grpc_port: 8001, http_port: 8000, metrics_port: 8002}
    limits: {max_message_bytes: 67108864}
    allow_backend_pinning: true
    tracing: {otlp_endpoint: http://collector:4318/v1/traces, service_name: infergw}
    backends:
      triton:
        kind: triton
        url: 127.0.0.1:8101          # every key but the policy keys goes to the backend
        max_concurrency: 64          # admission: requests in flight to this backend
        max_queue: 256               # admission: requests waiting beyond that (then 429)
        queue_timeout_ms: 5000       # admission: longest wait in the queue (then 429)
        timeout_ms: 30000            # per-request backend deadline
    models:
      identity: {backend: triton}
      "*": {backend: triton}         # any other model name goes to triton
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infergw.vocab.errors import InvalidArgument

WILDCARD = "*"
POLICY_KEYS = ("max_concurrency", "max_queue", "queue_timeout_ms", "timeout_ms")


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "0.0.0.0"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_message_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TracingConfig:
    otlp_endpoint: str | None = None
    service_name: str = "infergw"


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    max_concurrency: int = 64
    max_queue: int = 256
    queue_timeout_ms: float = 5000.0
    timeout_ms: float | None = 30000.0


@dataclass(frozen=True, slots=True)
class RouteConfig:
    model: str
    backend: str
    backends: tuple[str, ...] = ()  # others a client may pin; empty = any configured


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    backends: tuple[BackendConfig, ...]
    routes: tuple[RouteConfig, ...]
    listen: ListenConfig = ListenConfig()
    limits: LimitsConfig = LimitsConfig()
    tracing: TracingConfig = TracingConfig()
    allow_backend_pinning: bool = True


def load_config(path: str | Path) -> GatewayConfig:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidArgument(f"cannot read config {path}: {exc}") from exc
    return parse_config(raw)


def parse_config(raw: Any) -> GatewayConfig:
    doc = _mapping(raw, "config")
    backends = tuple(
        _backend(name, spec) for name, spec in _mapping(doc.get("backends", {}), "backends").items()
    )
    if not backends:
        raise InvalidArgument("config: at least one backend is required")
    names = {b.name for b in backends}
    routes = tuple(
        _route(model, spec, names)
        for model, spec in _mapping(doc.get("models", {}), "models").items()
    )
    return GatewayConfig(
        backends=backends,
        routes=routes,
        listen=_section(ListenConfig, doc.get("listen"), "listen"),
        limits=_section(LimitsConfig, doc.get("limits"), "limits"),
        tracing=_section(TracingConfig, doc.get("tracing"), "tracing"),
        allow_backend_pinning=bool(doc.get("allow_backend_pinning", True)),
    )


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"config: {what} must be a mapping, got {type(value).__name__}")
    return value


def _section(cls: Any, value: Any, what: str) -> Any:
    items = dict(_mapping(value, what))
    unknown = set(items) - set(cls.__dataclass_fields__)
    if unknown:
        raise InvalidArgument(f"config: unknown keys in {what}: {sorted(unknown)}")
    return cls(**items)


def _backend(name: str, spec: Any) -> BackendConfig:
    items = dict(_mapping(spec, f"backends.{name}"))
    kind = items.pop("kind", None)
    if not isinstance(kind, str):
        raise InvalidArgument(f"config: backends.{name}.kind is required")
    policy = {k: items.pop(k) for k in POLICY_KEYS if k in items}
    cfg = BackendConfig(name=name, kind=kind, options=items, **policy)
    if cfg.max_concurrency < 1 or cfg.max_queue < 0:
        raise InvalidArgument(f"config: backends.{name}: max_concurrency >= 1, max_queue >= 0")
    return cfg


def _route(model: str, spec: Any, backends: set[str]) -> RouteConfig:
    if isinstance(spec, str):
        spec = {"backend": spec}
    items = _mapping(spec, f"models.{model}")
    backend = items.get("backend")
    allowed = tuple(items.get("backends", ()))
    for name in (backend, *allowed):
        if name not in backends:
            raise InvalidArgument(f"config: models.{model} names unknown backend {name!r}")
    return RouteConfig(model=model, backend=str(backend), backends=allowed)

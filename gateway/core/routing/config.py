"""The routing keys of the config file (issue 11; DESIGN.md section 9 makes them a contract).

A model's route is ``backend: NAME`` or ``policy: {kind: ..., ...}``, one of::

    {kind: spillover, primary: triton, overflow: [lambda, cloudrun], max_queue_wait_ms: 20}
    {kind: fallback, order: [triton, cloudrun, lambda]}
    {kind: weighted, weights: {triton: 80, cloudrun: 20}}
    {kind: hedge, backends: [lambda, sagemaker], delay_ms: 50, budget_percent: 10}

and next to a backend's ``max_concurrency``/``max_queue``::

    outlier: {consecutive_failures: 5, base_ejection_s: 30, max_ejection_s: 300,
              max_ejected_percent: 10}
    retry: {max_retries: 2, base_ms: 25, max_ms: 250, budget_percent: 20, min_concurrent: 3}

Defaults are Envoy's (outlier detection, retry budget; retry backoff base 25 ms capped at
10x) and the issue's (hedge budget 10%). The models are self-contained (pydantic only) so
``gateway/core/config.py`` can import them without an import cycle; they are
``Section``s: frozen, strict, unknown keys refused.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, Strict, field_validator, model_validator
from pydantic_core import PydanticCustomError

from infergw.gateway.core.sections import Section

Milliseconds = Annotated[float, Field(gt=0)]
Seconds = Annotated[float, Field(gt=0)]
Percent = Annotated[float, Field(ge=0, le=100)]
BackendName = Annotated[str, Field(min_length=1)]
# A YAML list of strict strings (strict mode alone refuses a list for a tuple).
Names = Annotated[tuple[BackendName, ...], Strict(False), Field(min_length=1)]
Location = tuple[str | int, ...]
KeepWarmMode = Literal["off", "fixed", "adaptive"]


class RoutingSection(Section):
    """A section of the routing keys (frozen, strict, closed to unknown keys)."""


class OutlierConfig(RoutingSection):
    """Ejection after consecutive failures (Envoy's outlier detection defaults).

    Ejected for ``base_ejection_s`` x times ejected, at most ``max_ejection_s``; a route
    ejects at most ``max_ejected_percent`` of its backends (at least one).
    """

    consecutive_failures: Annotated[int, Field(ge=1)] = 5
    base_ejection_s: Seconds = 30.0
    max_ejection_s: Seconds = 300.0
    max_ejected_percent: Percent = 10.0

    @model_validator(mode="after")
    def _cap_at_least_base(self) -> Self:
        if self.max_ejection_s < self.base_ejection_s:
            raise PydanticCustomError(
                "ejection_cap",
                f"max_ejection_s ({self.max_ejection_s:g}) must be >= "
                f"base_ejection_s ({self.base_ejection_s:g})",
            )
        return self


class RetryConfig(RoutingSection):
    """Retries with full-jitter backoff within the deadline, limited by a retry budget.

    The budget (Envoy's): retries in flight at most ``budget_percent`` of the backend's
    active requests, never fewer than ``min_concurrent``. Meant to replace
    ``config.RetryConfig`` (same first three keys and defaults).
    """

    max_retries: Annotated[int, Field(ge=0)] = 2
    base_ms: Milliseconds = 25.0
    max_ms: Milliseconds = 250.0
    budget_percent: Percent = 20.0
    min_concurrent: Annotated[int, Field(ge=0)] = 3

    @model_validator(mode="after")
    def _cap_at_least_base(self) -> Self:
        if self.max_ms < self.base_ms:
            raise PydanticCustomError(
                "retry_cap", f"max_ms ({self.max_ms:g}) must be >= base_ms ({self.base_ms:g})"
            )
        return self


class KeepWarmConfig(RoutingSection):
    """A serverless backend's ``keep_warm`` section (``keep_warm.py`` runs it).

    ``bin_s`` and ``bins`` shape the adaptive histogram: the paper's 1-minute bins up
    to 4 hours by default; the local stack, whose instances idle out in seconds to
    minutes, scales the bins down. ``max_cost_per_hour`` (USD) unset: no cap. A ping is
    the smallest request ``model`` takes (default: the first route naming the backend).
    """

    mode: KeepWarmMode = "off"
    model: Annotated[str, Field(min_length=1)] | None = None
    interval_s: Annotated[float, Field(gt=0)] = 240.0
    max_cost_per_hour: Annotated[float, Field(gt=0)] | None = None
    bin_s: Annotated[float, Field(gt=0)] = 60.0
    bins: Annotated[int, Field(ge=2)] = 240

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML 1.1 reads a bare ``off`` as the boolean false; it means the mode."""
        return "off" if value is False else value


class AutoscaleConfig(RoutingSection):
    """An always-on backend's ``autoscale`` section (``autoscale.py`` runs it): its slots
    follow the load reactively, as a VM pool would (Spock's VM-only baseline).

    The backend's ``max_concurrency`` is the floor. Every ``interval_s`` the peak demand
    (in flight + queued) is read; slots short of ``peak / target_utilization`` are
    ordered and join ``provision_delay_s`` later; slots no peak needed for
    ``idle_release_s`` are released. Defaults: 3 minutes each, as Spock and MArk assume.
    """

    max_slots: Annotated[int, Field(ge=1)]
    provision_delay_s: Annotated[float, Field(ge=0)] = 180.0
    idle_release_s: Annotated[float, Field(ge=0)] = 180.0
    interval_s: Annotated[float, Field(gt=0)] = 1.0
    target_utilization: Annotated[float, Field(gt=0, le=1)] = 1.0


class SpilloverConfig(RoutingSection):
    """The always-on ``primary`` while it can start a request within ``max_queue_wait_ms``;
    else the first ``overflow`` backend whose expected latency fits the deadline."""

    kind: Literal["spillover"]
    primary: BackendName
    overflow: Names
    max_queue_wait_ms: Annotated[float, Field(ge=0)] = 20.0

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        _require_distinct((self.primary, *self.overflow))
        return self

    def named(self) -> tuple[tuple[Location, str], ...]:
        """Each backend this policy names, with its key path (for unknown-name errors)."""
        overflow = tuple((("overflow", i), name) for i, name in enumerate(self.overflow))
        return ((("primary",), self.primary), *overflow)


class FallbackConfig(RoutingSection):
    """Backends tried in ``order``; the next one only for what another backend may serve."""

    kind: Literal["fallback"]
    order: Names

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        _require_distinct(self.order)
        return self

    def named(self) -> tuple[tuple[Location, str], ...]:
        return tuple((("order", i), name) for i, name in enumerate(self.order))


class WeightedConfig(RoutingSection):
    """A split by integer weight (0: receives none), per request id when there is one."""

    kind: Literal["weighted"]
    weights: dict[BackendName, Annotated[int, Field(ge=0)]]

    @model_validator(mode="after")
    def _some_weight(self) -> Self:
        if not any(self.weights.values()):
            raise PydanticCustomError("no_weight", "at least one weight must be > 0")
        return self

    def named(self) -> tuple[tuple[Location, str], ...]:
        return tuple((("weights", name), name) for name in self.weights)


class HedgeConfig(RoutingSection):
    """The first backend; after ``delay_ms`` without an answer (``"p95"``: its observed
    95th percentile) also the next; first success wins. Hedges are at most
    ``budget_percent`` of requests."""

    kind: Literal["hedge"]
    backends: Annotated[tuple[BackendName, ...], Strict(False), Field(min_length=2)]
    delay_ms: Annotated[float, Field(ge=0)] | Literal["p95"]
    budget_percent: Percent = 10.0

    @field_validator("delay_ms", mode="before")
    @classmethod
    def _number_or_p95(cls, value: object) -> object:
        """One clear error instead of one per member of the union."""
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise PydanticCustomError("delay", "must be a number (ms) or 'p95'")
        if isinstance(value, str) and value != "p95":
            raise PydanticCustomError("delay", f"must be a number (ms) or 'p95', got {value!r}")
        if not isinstance(value, str) and value < 0:
            raise PydanticCustomError("delay", f"must be >= 0, got {value:g}")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        _require_distinct(self.backends)
        return self

    def named(self) -> tuple[tuple[Location, str], ...]:
        return tuple((("backends", i), name) for i, name in enumerate(self.backends))


RoutePolicyConfig = Annotated[
    SpilloverConfig | FallbackConfig | WeightedConfig | HedgeConfig,
    Field(discriminator="kind"),
]
"""A route's ``policy:``, told apart by ``kind``."""

POLICY_KINDS = ("spillover", "fallback", "weighted", "hedge")


def _require_distinct(names: tuple[str, ...]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PydanticCustomError(
            "repeated_backend", f"backend {repeated[0]!r} is named more than once"
        )

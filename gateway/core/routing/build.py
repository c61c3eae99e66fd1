"""A route policy from its ``policy:`` config, chosen by the config's type (``kind``).

The router supplies the parts: each member as a ``Target`` (its stack without
``OutlierGate``, the backend's shared ``OutlierDetector``, its warm-state estimate), the
primary's ``QueueState`` for spill-over, the clock, the decision sink, the pre-warmer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import singledispatch

from infergw.gateway.core.routing.attempts import Attempts, Target
from infergw.gateway.core.routing.budget import HedgeBudget
from infergw.gateway.core.routing.clock import SYSTEM_CLOCK, Clock
from infergw.gateway.core.routing.config import (
    FallbackConfig,
    HedgeConfig,
    RoutingSection,
    SpilloverConfig,
    WeightedConfig,
)
from infergw.gateway.core.routing.decisions import NO_DECISIONS, DecisionSink
from infergw.gateway.core.routing.fallback import Fallback
from infergw.gateway.core.routing.hedge import Hedge
from infergw.gateway.core.routing.queue_state import QueueState
from infergw.gateway.core.routing.route import Route
from infergw.gateway.core.routing.spillover import Prewarm, Spillover
from infergw.gateway.core.routing.weighted import Weighted
from infergw.vocab.errors import InvalidArgument


@dataclass(frozen=True)
class RouteParts:
    route: str  # the model name: the decision counters' ``route`` label
    targets: Mapping[str, Target]
    queues: Mapping[str, QueueState] = field(default_factory=dict)
    clock: Clock = SYSTEM_CLOCK
    sink: DecisionSink = NO_DECISIONS
    prewarm: Prewarm | None = None

    def attempts(self) -> Attempts:
        return Attempts(self.route, self.clock, self.sink)

    def target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            raise InvalidArgument(f"route {self.route!r}: unknown backend {name!r}") from None


@singledispatch
def build_route(policy: RoutingSection, parts: RouteParts) -> Route:
    raise InvalidArgument(f"route {parts.route!r}: not a routing policy: {type(policy).__name__}")


@build_route.register
def _spillover(policy: SpilloverConfig, parts: RouteParts) -> Route:
    queue = parts.queues.get(policy.primary)
    if queue is None:
        raise InvalidArgument(f"route {parts.route!r}: no queue state for {policy.primary!r}")
    return Spillover(
        parts.target(policy.primary),
        [parts.target(n) for n in policy.overflow],
        queue,
        policy.max_queue_wait_ms / 1000.0,
        parts.attempts(),
        prewarm=parts.prewarm,
    )


@build_route.register
def _fallback(policy: FallbackConfig, parts: RouteParts) -> Route:
    return Fallback([parts.target(n) for n in policy.order], parts.attempts())


@build_route.register
def _weighted(policy: WeightedConfig, parts: RouteParts) -> Route:
    targets = [parts.target(n) for n in policy.weights]
    return Weighted(targets, policy.weights, parts.attempts())


@build_route.register
def _hedge(policy: HedgeConfig, parts: RouteParts) -> Route:
    delay_s = None if policy.delay_ms == "p95" else policy.delay_ms / 1000.0
    return Hedge(
        [parts.target(n) for n in policy.backends],
        delay_s,
        parts.attempts(),
        HedgeBudget(policy.budget_percent),
    )

"""What a run costs, from the packaged price list (``infergw.vocab.prices``).

Always-on: slot-seconds x the slot's hourly price (the instance's price / slots per
instance). Serverless: each request's own billed duration (its service time, plus its own
cold start where the platform bills init), rounded up to the billing granularity, x the
rate per second at the configured memory, plus the per-request price; pre-warm
invocations and keep-warm pings are billed the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from infergw.planner.simulate import SERVERLESS, Outcome
from infergw.vocab.prices import PriceError, Rate, node_hourly, packaged_prices, serverless_rate

SECONDS_PER_MONTH = 30 * 86_400


@dataclass(frozen=True)
class Pricing:
    """The prices one plan uses: an always-on slot per hour and a serverless rate."""

    slot_usd_per_hour: float
    rate: Rate
    instance: str
    slots_per_instance: int
    serverless_kind: str

    @classmethod
    def from_prices(
        cls,
        prices: Mapping[str, Any] | None = None,
        *,
        instance: str = "triton",
        slots_per_instance: int = 1,
        serverless_kind: str = "lambda",
        memory_mb: int | None = None,
    ) -> Pricing:
        prices = packaged_prices() if prices is None else prices
        if slots_per_instance < 1:
            raise PriceError("slots per instance must be >= 1")
        name, hourly = node_hourly(instance, prices)
        return cls(
            hourly / slots_per_instance,
            serverless_rate(serverless_kind, prices, memory_mb),
            name,
            slots_per_instance,
            serverless_kind,
        )

    def describe(self) -> dict[str, Any]:
        r = self.rate
        return {
            "instance": self.instance,
            "slots_per_instance": self.slots_per_instance,
            "slot_usd_per_hour": self.slot_usd_per_hour,
            "serverless": self.serverless_kind,
            "memory_mb": r.memory_mb,
            "serverless_usd_per_second": r.usd_per_second,
            "serverless_usd_per_request": r.usd_per_request,
            "billing_granularity_ms": r.granularity_ms,
            "bills_coldstart": r.bills_coldstart,
        }


@dataclass(frozen=True)
class Cost:
    always_on_usd: float
    serverless_usd: float
    warmth_usd: float  # pre-warm invocations and keep-warm pings

    @property
    def total_usd(self) -> float:
        return self.always_on_usd + self.serverless_usd + self.warmth_usd


def billed(durations_s: np.ndarray, rate: Rate) -> np.ndarray:
    """Durations rounded up to the billing granularity (seconds)."""
    step = rate.granularity_ms / 1e3
    if step <= 0:
        return np.asarray(durations_s, dtype=float)
    # A tolerance so that a duration already on the grid is not rounded up by float noise.
    return np.ceil(np.asarray(durations_s, dtype=float) / step - 1e-9) * step


def cost(outcome: Outcome, pricing: Pricing) -> Cost:
    """The bill of one run (see the module docstring)."""
    rate = pricing.rate
    on_serverless = outcome.backend == SERVERLESS
    config = outcome.policy.serverless
    durations = outcome.billed_s if rate.bills_coldstart else outcome.service
    durations = np.maximum(durations[on_serverless] - config.invoke_overhead_s, 0.0)
    requests = float(np.sum(billed(durations, rate))) * rate.usd_per_second
    requests += int(on_serverless.sum()) * rate.usd_per_request
    warm = np.asarray(outcome.prewarm_billed_s, dtype=float)
    if not rate.bills_coldstart:
        warm = np.full(len(warm), config.ping_s)
    pings = np.full(outcome.keep_warm_pings, config.ping_s)
    warmth = float(np.sum(billed(np.concatenate([warm, pings]), rate))) * rate.usd_per_second
    warmth += (len(warm) + len(pings)) * rate.usd_per_request
    return Cost(outcome.slot_seconds / 3600 * pricing.slot_usd_per_hour, requests, warmth)

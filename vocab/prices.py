"""The packaged price list (``prices.json``: dated list prices, with their sources).

Data both sides read: the load generator prices a run's requests with it, the gateway
prices its keep-warm pings. Read on demand, never at import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any


def packaged_prices() -> dict[str, Any]:
    """The packaged ``prices.json`` as a dict (a fresh copy each call)."""
    text = resources.files("infergw.vocab").joinpath("prices.json").read_text()
    prices: dict[str, Any] = json.loads(text)
    return prices


class PriceError(ValueError):
    """The price list cannot price this: an unknown kind, or a section lacks a key."""


@dataclass(frozen=True, slots=True)
class Rate:
    """What one request on a serverless platform costs: its billed duration (rounded up
    to ``granularity_ms``, cold start included when ``bills_coldstart``) at
    ``usd_per_second``, plus ``usd_per_request``."""

    usd_per_second: float
    usd_per_request: float
    granularity_ms: float
    bills_coldstart: bool
    memory_mb: int


def serverless_rate(kind: str, prices: Mapping[str, Any], memory_mb: int | None = None) -> Rate:
    """The per-request rate of ``kind`` (``lambda``, ``sagemaker``, ``cloudrun``) at
    ``memory_mb`` (default: the list's ``default_memory_mb``)."""
    rates = {"lambda": _lambda, "sagemaker": _sagemaker, "cloudrun": _cloudrun}
    if kind not in rates or not isinstance(prices.get(kind), Mapping):
        raise PriceError(f"no serverless prices for {kind!r}")
    section = prices[kind]
    try:
        memory = int(memory_mb or section["default_memory_mb"])
        per_second, per_request = rates[kind](section, memory)
        return Rate(
            per_second,
            per_request,
            float(section.get("billing_granularity_ms", 1)),
            bool(section.get("bills_coldstart", True)),
            memory,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PriceError(f"prices for {kind!r} lack {exc}") from exc


def _lambda(section: Mapping[str, Any], memory_mb: int) -> tuple[float, float]:
    per_gb_second = float(section["gb_second_usd"][section.get("architecture", "x86_64")])
    return memory_mb / 1024 * per_gb_second, float(section["request_usd_per_million"]) / 1e6


def _sagemaker(section: Mapping[str, Any], memory_mb: int) -> tuple[float, float]:
    return float(section["usd_per_second_by_memory_mb"][str(memory_mb)]), 0.0


def _cloudrun(section: Mapping[str, Any], memory_mb: int) -> tuple[float, float]:
    cpu = float(section["vcpu"]) * float(section["vcpu_second_usd"])
    memory = memory_mb / 1024 * float(section["gib_second_usd"])
    return cpu + memory, float(section["request_usd_per_million"]) / 1e6

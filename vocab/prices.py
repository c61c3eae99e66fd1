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
    ``usd_per_second``, plus ``usd_per_request``. ``per_second`` names the parts of the
    per-second price (Cloud Run: ``cpu`` and ``memory``; the others: ``compute``)."""

    usd_per_second: float
    usd_per_request: float
    granularity_ms: float
    bills_coldstart: bool
    memory_mb: int
    per_second: tuple[tuple[str, float], ...] = ()


def serverless_rate(kind: str, prices: Mapping[str, Any], memory_mb: int | None = None) -> Rate:
    """The per-request rate of ``kind`` (``lambda``, ``sagemaker``, ``cloudrun``) at
    ``memory_mb`` (default: the list's ``default_memory_mb``). The one place the
    providers' per-second formulas live: the load generator, the planner and keep-warm
    pricing all read them from here."""
    rates = {"lambda": _lambda, "sagemaker": _sagemaker, "cloudrun": _cloudrun}
    if kind not in rates or not isinstance(prices.get(kind), Mapping):
        raise PriceError(f"no serverless prices for {kind!r}")
    section = prices[kind]
    try:
        memory = int(memory_mb or section["default_memory_mb"])
        parts, per_request = rates[kind](section, memory)
        return Rate(
            sum(parts.values()),
            per_request,
            float(section.get("billing_granularity_ms", 1)),
            bool(section.get("bills_coldstart", True)),
            memory,
            tuple(parts.items()),
        )
    except PriceError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise PriceError(f"prices for {kind!r} lack {exc}") from exc


def node_hourly(instance: str, prices: Mapping[str, Any]) -> tuple[str, float]:
    """An always-on node's instance type and hourly USD: ``instance`` is a type of the
    list's ``nodes.hourly_usd`` or one of its ``aliases`` (``triton``, ``runtime``...)."""
    nodes = prices.get("nodes")
    nodes = nodes if isinstance(nodes, Mapping) else {}
    name = (nodes.get("aliases") or {}).get(instance, instance)
    hourly = nodes.get("hourly_usd") or {}
    if name not in hourly:
        raise PriceError(f"no hourly price for instance {instance!r}")
    return name, float(hourly[name])


Parts = tuple[dict[str, float], float]  # per-second parts, per-request price


def _lambda(section: Mapping[str, Any], memory_mb: int) -> Parts:
    arch = section.get("architecture", "x86_64")
    rates = section["gb_second_usd"]
    if arch not in rates:
        raise PriceError(f"lambda prices have no GB-second rate for architecture {arch!r}")
    per_gb_second = float(rates[arch])
    per_request = float(section["request_usd_per_million"]) / 1e6
    return {"compute": memory_mb / 1024 * per_gb_second}, per_request


def _sagemaker(section: Mapping[str, Any], memory_mb: int) -> Parts:
    table = section["usd_per_second_by_memory_mb"]
    if str(memory_mb) not in table:
        sizes = ", ".join(sorted(table, key=int))
        raise PriceError(f"sagemaker serverless has no price for {memory_mb} MB (sizes: {sizes})")
    return {"compute": float(table[str(memory_mb)])}, 0.0


def _cloudrun(section: Mapping[str, Any], memory_mb: int) -> Parts:
    cpu = float(section["vcpu"]) * float(section["vcpu_second_usd"])
    memory = memory_mb / 1024 * float(section["gib_second_usd"])
    return {"cpu": cpu, "memory": memory}, float(section["request_usd_per_million"]) / 1e6

"""What a run's requests would cost per million on each serving option.

The formulas are the providers' published ones, applied to the durations the run
measured; the prices live in ``vocab/prices.json`` (dated, with sources) so a user can
override them without touching code. Every result says which duration it billed
(``basis``) because the cost is only as good as that number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infergw.vocab.prices import PriceError, node_hourly, packaged_prices, serverless_rate

SERVERLESS_KINDS = ("lambda", "sagemaker", "cloudrun")
MILLION = 1_000_000
GIB = 1024**3


class CostError(ValueError):
    """A cost cannot be computed: unknown backend kind, missing prices or no durations."""


def load_prices(path: Path | None = None) -> dict[str, Any]:
    """The packaged prices, with ``path`` (a user file) merged over them key by key."""
    packaged = packaged_prices()
    if path is None:
        return packaged
    try:
        override = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CostError(f"prices file {path}: {exc}") from exc
    if not isinstance(override, dict):
        raise CostError(f"prices file {path}: expected a JSON object")
    return _merge(packaged, override)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def cost_per_million(
    run: dict[str, Any],
    backend_kind: str,
    prices: dict[str, Any] | None = None,
    memory_mb: int | None = None,
) -> dict[str, Any]:
    """USD per 1M requests for ``run``'s measured durations on ``backend_kind``.

    ``backend_kind`` is ``lambda``, ``sagemaker``, ``cloudrun``, a node alias
    (``triton``, ``runtime``, ``node``) or ``node:INSTANCE``. Returns
    ``{"kind", "usd_per_million", "components", "basis", "billed_ms", "memory_mb",
    "read_on", "source"}``; raises ``CostError`` when it cannot be priced.
    """
    prices = load_prices() if prices is None else prices
    kind = backend_kind.strip().lower()
    if kind in SERVERLESS_KINDS:
        return _serverless(run, kind, _section(prices, kind), memory_mb)
    return _node(run, kind, _section(prices, "nodes"))


def _section(prices: dict[str, Any], name: str) -> dict[str, Any]:
    section = prices.get(name)
    if not isinstance(section, dict):
        known = [k for k in (*SERVERLESS_KINDS, "nodes") if isinstance(prices.get(k), dict)]
        raise CostError(f"no prices for {name!r} (prices cover: {', '.join(known) or 'nothing'})")
    return section


def _price(section: dict[str, Any], key: str, kind: str) -> Any:
    if key not in section:
        raise CostError(f"prices for {kind!r} lack {key!r}")
    return section[key]


# --- measured durations ---------------------------------------------------------


def _phase_ms(run: dict[str, Any], phase: str) -> float | None:
    """A phase's typical duration: its mean when the runner recorded one, else its p50."""
    entry = (run.get("split_ms") or {}).get(phase)
    if not isinstance(entry, dict):
        return None
    value = entry.get("mean", entry.get("p50"))
    return float(value) if value is not None else None


def _share_ms(run: dict[str, Any], phase: str) -> float | None:
    """A phase's mean over *all* the run's requests, for a phase only some requests have
    (a cold start): its mean over those, times their share (``n`` of ``ok``). Without
    the counts (a result recorded before they were), its typical duration, which bills
    every request as if it had paid it."""
    entry = (run.get("split_ms") or {}).get(phase)
    if not isinstance(entry, dict):
        return None
    ok, n = run.get("ok"), entry.get("n")
    if ok and n is not None and entry.get("mean") is not None:
        return float(entry["mean"]) * float(n) / float(ok)
    return _phase_ms(run, phase)


def billed_duration_ms(run: dict[str, Any], include_coldstart: bool = True) -> tuple[float, str]:
    """The per-request duration a serverless platform bills, and where it came from.

    Preference: the backend-reported compute (+ the cold starts' share: their mean over
    every request, so one cold request of 100 adds 1/100 of its init) from Server-Timing;
    for cold runs without a split, the cold samples; otherwise the backend round trip
    (end-to-end minus the client/gateway phases), which overestimates the bill.
    """
    compute = _phase_ms(run, "compute")
    if compute is not None:
        cold = (_share_ms(run, "coldstart") or 0.0) if include_coldstart else 0.0
        return compute + cold, "compute+coldstart" if cold else "compute"
    samples = run.get("cold") or []
    if samples:
        key = ("init_ms", "inference_ms") if include_coldstart else ("inference_ms",)
        total = sum(sum(float(s.get(k) or 0.0) for k in key) for s in samples)
        return total / len(samples), "cold samples"
    latency = run.get("latency_ms") or {}
    e2e = latency.get("mean", latency.get("p50"))
    if e2e is None:
        raise CostError(f"run {run.get('label')!r} has no measured duration to bill")
    outside = sum(_phase_ms(run, p) or 0.0 for p in ("protocol", "queue"))
    return max(float(e2e) - outside, 0.0), "backend round trip (no compute split)"


def _round_up(ms: float, granularity_ms: float) -> float:
    return math.ceil(ms / granularity_ms - 1e-9) * granularity_ms if ms > 0 else granularity_ms


def _result(
    kind: str,
    components: dict[str, float],
    basis: str,
    section: dict[str, Any],
    billed_ms: float | None = None,
    memory_mb: int | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "usd_per_million": sum(components.values()),
        "components": components,
        "basis": basis,
        "billed_ms": billed_ms,
        "memory_mb": memory_mb,
        "read_on": section.get("read_on"),
        "source": section.get("source"),
    }


# --- the formulas ----------------------------------------------------------------


def _serverless(
    run: dict[str, Any], kind: str, p: dict[str, Any], memory_mb: int | None
) -> dict[str, Any]:
    """The platform's per-second rate (``vocab.prices.serverless_rate``) over the billed
    duration, rounded up to its granularity, plus its per-request charge; Cloud Run's
    billed time shared by ``concurrency`` requests; SageMaker's data processed (bytes in
    and out)."""
    try:
        rate = serverless_rate(kind, {kind: p}, memory_mb)
    except PriceError as exc:
        raise CostError(str(exc)) from exc
    ms, basis = billed_duration_ms(run, rate.bills_coldstart)
    billed = _round_up(ms, rate.granularity_ms)
    shared = max(float(p.get("concurrency", 1)), 1.0) if kind == "cloudrun" else 1.0
    seconds = billed / 1000 / shared
    components = {part: usd * seconds * MILLION for part, usd in rate.per_second}
    if rate.usd_per_request:
        components["requests"] = rate.usd_per_request * MILLION
    if kind == "sagemaker":
        sizes_b = run.get("bytes") or {}
        per_request = float(sizes_b.get("sent_per_request") or 0.0) + float(
            sizes_b.get("received_per_request") or 0.0
        )
        per_gb = float(p.get("data_processed_usd_per_gb", 0.0))
        components["data"] = per_request / GIB * per_gb * MILLION
    return _result(kind, components, basis, p, billed, rate.memory_mb)


def _node(run: dict[str, Any], kind: str, p: dict[str, Any]) -> dict[str, Any]:
    """An always-on node: its hourly price spread over the throughput the run achieved."""
    hourly = _price(p, "hourly_usd", "nodes")
    try:
        instance, usd = node_hourly(kind.removeprefix("node:"), {"nodes": p})
    except PriceError as exc:
        known = sorted({*SERVERLESS_KINDS, *hourly, *(p.get("aliases") or {})})
        known_kinds = ", ".join(known)
        raise CostError(f"no prices for backend kind {kind!r} (known: {known_kinds})") from exc
    rps = float(run.get("achieved_rps") or 0.0)
    if rps <= 0:
        raise CostError(f"run {run.get('label')!r} achieved no throughput to spread a node over")
    compute = usd / (rps * 3600) * MILLION
    basis = f"{instance} at {rps:.1f} req/s achieved"
    return _result(f"node:{instance}", {"instance": compute}, basis, p)


def mixed_cost_per_million(
    run: dict[str, Any],
    prices: dict[str, Any],
    kinds: dict[str, str] | None = None,
    instances: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """USD per 1M requests for a route that several backends answered (spill-over,
    fallback, hedging, weights), from the share each answered (``run["answered"]``).

    A serverless backend bills its own requests: its formula over their own compute and
    cold-start means (``run["billed_ms_by_backend"]``). An always-on node is paid for the
    whole run whether it served or idled: its hourly price x the run's measured time,
    spread over every request (``instances`` of it: default 1). ``kinds`` maps a backend
    name to its kind (default: the name, as on the local stack: triton, lambda,
    sagemaker, cloudrun).
    """
    ok = int(run.get("ok") or 0)
    billed = run.get("billed_ms_by_backend") or {}
    if not ok or not billed:
        raise CostError(f"run {run.get('label')!r} says no backend answered it")
    components: dict[str, float] = {}
    for backend, durations in billed.items():
        kind = (kinds or {}).get(backend, backend)
        requests = float(durations["requests"])
        if kind in SERVERLESS_KINDS:
            own = {"split_ms": {p: {"mean": durations[p]} for p in ("compute", "coldstart")}}
            per_million = cost_per_million(own, kind, prices)["usd_per_million"]
            components[backend] = per_million * requests / ok
        else:
            node = {"achieved_rps": ok / max(float(run.get("measured_s") or 0.0), 1e-9)}
            one = _node(node, kind, _section(prices, "nodes"))["usd_per_million"]
            components[backend] = one * (instances or {}).get(backend, 1)
    shares = ", ".join(f"{b} {billed[b]['requests']}" for b in billed)
    basis = f"requests answered: {shares}; nodes for the whole run"
    return _result("mixed", components, basis, {"read_on": prices.get("read_on")})


def annotate_costs(
    result: dict[str, Any],
    backend_kind: str,
    prices: dict[str, Any] | None = None,
    memory_mb: int | None = None,
) -> None:
    """Store ``cost_per_million`` in each run as ``run["cost"]`` (or ``{"error": ...}``).

    The report reads ``run["cost"]``, so the runner calls this once with the prices the
    user chose; a run that cannot be priced keeps the reason instead of failing the report.
    """
    prices = load_prices() if prices is None else prices
    for run in result.get("runs") or []:
        try:
            run["cost"] = cost_per_million(run, backend_kind, prices, memory_mb)
        except CostError as exc:
            run["cost"] = {"kind": backend_kind, "error": str(exc)}

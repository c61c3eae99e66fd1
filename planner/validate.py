"""``infergw plan --bench-result FILE``: the simulator checked against a measured run.

A ``bench hybrid`` result holds everything the simulation needs to replay it: the trace
settings (so ``loadgen.scenarios.trace_schedule`` rebuilds the very arrivals the load
generator sent), the slots of each configuration, the autoscaler's delays, the gateway's
admission bounds, the Lambda stand-in's limits, and the latencies each backend showed
(Server-Timing: the gateway's round trip to Triton, the function's billed compute, its
cold starts). Each configuration is simulated with those and put next to what was
measured: SLO violations and cost per 1M answered requests, each within
``TOLERANCE_REL`` (relative) or ``TOLERANCE_PTS`` (points of violations) — the issue's
acceptance bound for trusting the planner at cloud scale.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from infergw.loadgen.scenarios import trace_offsets
from infergw.loadgen.settings import Settings
from infergw.planner.costs import Pricing
from infergw.planner.dists import Dist, Latencies
from infergw.planner.pools import Autoscale, Serverless
from infergw.planner.report import summarise
from infergw.planner.simulate import Draws, Policy, simulate

TOLERANCE_REL = 0.20
TOLERANCE_PTS = 1.0
Z95 = 1.6449  # the standard normal's 95th percentile: a lognormal's sigma from p50 and p95


def arrivals_of(result: Mapping[str, Any]) -> np.ndarray:
    """The offsets the load generator sent, rebuilt from the result's settings."""
    names = {f.name for f in dataclasses.fields(Settings)}
    saved = {k: v for k, v in (result.get("settings") or {}).items() if k in names}
    saved.pop("protocol", None)  # the transport does not change the arrivals
    offsets, _ = trace_offsets(Settings(**saved))
    return offsets


def lognormal_of(entry: Mapping[str, Any] | None, what: str) -> Dist:
    """A lognormal through a phase's measured p50 and p95 (ms)."""
    if not entry or not entry.get("p50"):
        raise ValueError(f"the result has no measured {what}")
    p50, p95 = float(entry["p50"]), float(entry.get("p95") or entry["p50"])
    sigma = math.log(max(p95, p50) / p50) / Z95
    return Dist.lognormal(p50 / 1e3, sigma)


def measured_latencies(runs: Mapping[str, Mapping[str, Any]]) -> tuple[Latencies, float]:
    """The service times the runs showed, and the function's invoke overhead (round trip
    minus billed compute: the platform does not bill it)."""
    always_on = next((r for n, r in runs.items() if n.startswith("always-on")), None)
    serverless = runs.get("serverless")
    if always_on is None or serverless is None:
        raise ValueError("the result needs an always-on and a serverless run to measure from")
    split, fn = always_on.get("split_ms") or {}, serverless.get("split_ms") or {}
    cold = fn.get("coldstart") or {}
    compute = fn.get("compute") or {}
    backend = fn.get("backend") or {}
    warm_compute = lognormal_of(compute, "serverless compute")
    overhead = max(0.0, float(backend.get("p50") or 0) - float(compute.get("p50") or 0)) / 1e3
    serverless_dist = Dist.lognormal(warm_compute.params[0] + overhead, warm_compute.params[1])
    latencies = Latencies(
        always_on=lognormal_of(split.get("backend"), "round trip to the always-on backend"),
        serverless=serverless_dist,
        coldstart=lognormal_of(cold, "cold start") if cold.get("p50") else Latencies().coldstart,
    )
    return latencies, overhead


def policies_of(result: Mapping[str, Any], overhead_s: float) -> dict[str, Policy]:
    """Each configuration of the result as the simulator's policy."""
    sizing, scaling = result.get("sizing") or {}, result.get("scaling") or {}
    stack = result.get("stack") or {}
    fn = stack.get("serverless") or {}
    functions = Serverless(
        int(fn.get("concurrency_limit", 1000)),
        float(fn.get("idle_timeout_s", 600.0)),
        invoke_overhead_s=overhead_s,
    )
    mean, peak = int(sizing.get("mean_slots", 1)), int(sizing.get("peak_slots", 1))
    max_queue = stack.get("max_queue")
    base = Policy(
        "always-on",
        slots=mean,
        max_queue=None if max_queue is None else int(max_queue),
        queue_timeout_s=float(stack.get("queue_timeout_ms", 5000.0)) / 1e3,
        serverless=functions,
    )
    pool = Autoscale(
        min_slots=mean,
        max_slots=max(peak, mean),
        provision_delay_s=float(scaling.get("provision_delay_s", 180.0)),
        idle_release_s=float(scaling.get("idle_release_s", 180.0)),
    )
    bound = float(stack.get("max_queue_wait_ms", 20.0)) / 1e3
    return {
        "always-on-mean": base,
        "always-on-peak": dataclasses.replace(base, slots=peak),
        "always-on-autoscaled": dataclasses.replace(base, name="autoscaled", autoscale=pool),
        "serverless": dataclasses.replace(base, name="serverless", slots=0),
        "hybrid": dataclasses.replace(base, name="hybrid", max_queue_wait_s=bound, prewarm=True),
    }


def within(measured: float | None, predicted: float | None, points: bool) -> bool | None:
    """The acceptance bound: 20% relative, or (violations) 1 percentage point."""
    if measured is None or predicted is None:
        return None
    if points and abs(predicted - measured) <= TOLERANCE_PTS:
        return True
    return abs(predicted - measured) <= TOLERANCE_REL * abs(measured)


def validate(
    result: Mapping[str, Any], pricing: Pricing, seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of measured vs predicted per configuration, and what the simulation used."""
    runs = {str(r.get("label")): r for r in result.get("runs") or []}
    slo_ms = float((result.get("settings") or {}).get("slo_ms") or 0)
    if not runs or slo_ms <= 0:
        raise ValueError("not a bench hybrid result with runs and an --slo-ms")
    arrivals = arrivals_of(result)
    latencies, overhead = measured_latencies(runs)
    policies = policies_of(result, overhead)
    draws = Draws.make(len(arrivals), latencies, seed)
    rows = []
    for name, run in runs.items():
        if name not in policies:
            continue
        predicted = summarise(simulate(arrivals, policies[name], latencies, draws), pricing,
                              slo_ms / 1e3)  # fmt: skip
        served = predicted["requests"] - predicted["failed"]
        measured_usd = (run.get("cost") or {}).get("usd_per_million")
        predicted_usd = predicted["cost_usd"] / served * 1e6 if served else None
        measured_pct = 100 * float((run.get("slo") or {}).get("share") or 0.0)
        rows.append(
            {
                "configuration": name,
                "requests": {"measured": run.get("requests"), "predicted": predicted["requests"]},
                "violation_pct": {
                    "measured": measured_pct,
                    "predicted": predicted["violation_pct"],
                    "within": within(measured_pct, predicted["violation_pct"], points=True),
                },
                "usd_per_million_answered": {
                    "measured": measured_usd,
                    "predicted": predicted_usd,
                    "within": within(measured_usd, predicted_usd, points=False),
                },
                "failed": {"measured": _failed(run), "predicted": predicted["failed"]},
                "cold_starts": {"predicted": predicted["cold_starts"]},
            }
        )
    used = {
        "arrivals": int(arrivals.size),
        "slo_ms": slo_ms,
        "latencies": {
            "always_on": latencies.always_on.describe(),
            "serverless": latencies.serverless.describe(),
            "coldstart": latencies.coldstart.describe(),
            "invoke_overhead_ms": round(overhead * 1e3, 3),
        },
        "tolerance": {"relative": TOLERANCE_REL, "points": TOLERANCE_PTS},
    }
    return rows, used


def _failed(run: Mapping[str, Any]) -> int:
    return int(sum((run.get("errors") or {}).values()))


def table(rows: list[dict[str, Any]]) -> str:
    """The terminal table of ``validate``'s rows."""

    def mark(ok: bool | None) -> str:
        return {True: "yes", False: "NO", None: "-"}[ok]

    def usd(value: float | None) -> str:
        return "-" if value is None else f"${value:,.2f}"

    head = ("configuration", "viol measured", "predicted", "within", "$/1M measured",
            "predicted", "within")  # fmt: skip
    lines = [head]
    for r in rows:
        v, c = r["violation_pct"], r["usd_per_million_answered"]
        lines.append(
            (
                r["configuration"],
                f"{v['measured']:.1f}%",
                f"{v['predicted']:.1f}%",
                mark(v["within"]),
                usd(c["measured"]),
                usd(c["predicted"]),
                mark(c["within"]),
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(x).rjust(w) for x, w in zip(line, widths, strict=True))
                     for line in lines)  # fmt: skip

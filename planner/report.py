"""A run's figures (violations, percentiles, shares, cold starts, cost), the terminal
table, the JSON/CSV files and the cost/SLO frontier figure."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infergw.planner.costs import SECONDS_PER_MONTH, Pricing, cost
from infergw.planner.simulate import ALWAYS_ON, FAILED, SERVERLESS, Outcome


def summarise(outcome: Outcome, pricing: Pricing, slo_s: float) -> dict[str, Any]:
    """The figures of one run. Percentiles are over served requests; a failed request
    (throttled, queue full) counts as an SLO violation."""
    n = len(outcome.arrivals)
    failed = outcome.backend == FAILED
    served = outcome.latency[~failed]
    violations = int(failed.sum() + (served > slo_s).sum())
    p50, p95, p99 = (
        (float(x) * 1e3 for x in np.percentile(served, [50, 95, 99]))
        if len(served)
        else (None, None, None)
    )
    bill = cost(outcome, pricing)
    per = max(n, 1)
    policy = outcome.policy
    return {
        "policy": policy.name,
        "slots": policy.slots,
        "autoscaled": policy.autoscale is not None,
        "prewarm": policy.prewarm,
        "requests": n,
        "slo_ms": slo_s * 1e3,
        "violations": violations,
        "violation_pct": 100 * violations / per,
        "failed": int(failed.sum()),
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "share_always_on": float((outcome.backend == ALWAYS_ON).sum()) / per,
        "share_serverless": float((outcome.backend == SERVERLESS).sum()) / per,
        "cold_starts": int(outcome.cold.sum()),
        "prewarms": len(outcome.prewarm_billed_s),
        "keep_warm_pings": outcome.keep_warm_pings,
        "peak_slots": outcome.peak_slots,
        "peak_instances": outcome.peak_instances,
        "slot_hours": outcome.slot_seconds / 3600,
        "horizon_s": outcome.horizon_s,
        "cost_always_on_usd": bill.always_on_usd,
        "cost_serverless_usd": bill.serverless_usd,
        "cost_warmth_usd": bill.warmth_usd,
        "cost_usd": bill.total_usd,
        "usd_per_million": bill.total_usd / per * 1e6,
        "usd_per_month": bill.total_usd * SECONDS_PER_MONTH / outcome.horizon_s
        if outcome.horizon_s > 0
        else None,
    }


COLUMNS = (
    ("policy", "policy", "{}"),
    ("slots", "slots", "{}"),
    ("violation_pct", "viol %", "{:.2f}"),
    ("p50_ms", "p50 ms", "{:.0f}"),
    ("p95_ms", "p95 ms", "{:.0f}"),
    ("p99_ms", "p99 ms", "{:.0f}"),
    ("share_serverless", "spill", "{:.1%}"),
    ("cold_starts", "cold", "{}"),
    ("prewarms", "prewarm", "{}"),
    ("failed", "failed", "{}"),
    ("cost_usd", "cost $", "{:.4g}"),
    ("usd_per_month", "$/month", "{:,.0f}"),
)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table, one line per run."""

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        label = f"{value}{'+as' if row['autoscaled'] else ''}" if key == "slots" else value
        return fmt.format(label) if key != "slots" else str(label)

    cells = [[head for _, head, _ in COLUMNS]]
    cells += [[cell(r, key, fmt) for key, _, fmt in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(line, widths, strict=True))) for line in cells]  # fmt: skip
    return "\n".join(lines)


def write(out_dir: Path, meta: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[Path]:
    """``plan.json`` (inputs and runs), ``plan.csv`` (one row per run); the frontier PNG
    when there are several runs per policy and matplotlib is installed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "plan.json", out_dir / "plan.csv"]
    written[0].write_text(json.dumps({**meta, "runs": list(rows)}, indent=2) + "\n")
    with written[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["policy"])
        writer.writeheader()
        writer.writerows(rows)
    png = frontier_png(rows, out_dir / "frontier.png", meta)
    if png is not None:
        written.append(png)
    return written


def pareto(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs no other run beats on both cost and violations, by cost."""
    ordered = sorted(rows, key=lambda r: (r["cost_usd"], r["violation_pct"]))
    front: list[dict[str, Any]] = []
    for row in ordered:
        if not front or row["violation_pct"] < front[-1]["violation_pct"]:
            front.append(row)
    return front


def frontier_png(rows: Sequence[dict[str, Any]], path: Path, meta: dict[str, Any]) -> Path | None:
    """Cost per month vs SLO violations, a line per policy, the Pareto front dashed."""
    if len(rows) < 2:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["policy"] for r in rows):
        mine = sorted((r for r in rows if r["policy"] == name), key=lambda r: r["slots"])
        x = [r["usd_per_month"] for r in mine]
        y = [r["violation_pct"] for r in mine]
        ax.plot(x, y, marker="o", label=name)
        for r, xi, yi in zip(mine, x, y, strict=True):
            if name != "serverless":
                ax.annotate(str(r["slots"]), (xi, yi), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
    front = pareto(rows)
    ax.plot([r["usd_per_month"] for r in front], [r["violation_pct"] for r in front], "k--",
            lw=0.8, label="frontier")  # fmt: skip
    ax.set_xlabel("cost, USD per month (extrapolated from the trace)")
    ax.set_ylabel(f"SLO violations, % (> {rows[0]['slo_ms']:g} ms or failed)")
    ax.set_title(f"infergw plan: {meta.get('trace', {}).get('source', '')}", fontsize=9)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

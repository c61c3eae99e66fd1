"""``infergw plan`` once parsed: load the inputs, run the policies, print and write."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from infergw.planner import dists, traces
from infergw.planner.costs import Pricing
from infergw.planner.pools import Autoscale, Serverless
from infergw.planner.report import summarise, table, write
from infergw.planner.simulate import POLICIES, Draws, Policy, simulate

SCHEMA = "infergw.plan/1"


def slot_counts(args: argparse.Namespace) -> list[int]:
    if not args.sweep_slots:
        return [args.slots]
    try:
        low, high = (int(x) for x in args.sweep_slots.split(":"))
    except ValueError as exc:
        raise ValueError(f"--sweep-slots {args.sweep_slots!r}: expected A:B") from exc
    if not 0 <= low <= high:
        raise ValueError("--sweep-slots A:B needs 0 <= A <= B")
    return list(range(low, high + 1))


def policies(args: argparse.Namespace) -> list[Policy]:
    """Every run the arguments ask for, in table order."""
    names = POLICIES if args.policy == "all" else (args.policy,)
    functions = Serverless(
        args.concurrency_limit, args.idle_timeout_s, args.keep_warm, args.keep_warm_interval_s
    )

    def scaling(floor: int) -> Autoscale:
        return Autoscale(
            floor, max(args.max_slots, floor), args.provision_delay_s, args.idle_release_s,
            args.target_utilisation, args.scale_interval_s,
        )  # fmt: skip

    runs: list[Policy] = []
    for name in names:
        counts = [0] if name == "serverless" else slot_counts(args)
        for c in counts:
            if name == "always-on" and c == 0:
                continue
            runs.append(
                Policy(
                    name,
                    slots=c,
                    max_queue=args.max_queue,
                    queue_timeout_s=args.queue_timeout_s,
                    autoscale=scaling(c)
                    if name == "autoscaled" or (name == "hybrid" and args.hybrid_autoscaled)
                    else None,
                    serverless=functions,
                    max_queue_wait_s=args.max_queue_wait_ms / 1e3,
                    prewarm=args.prewarm,
                )
            )
    return runs


def main(args: argparse.Namespace) -> int:
    if args.bench_result:
        return check_against_bench(args)
    try:
        trace = traces.load(
            args.trace,
            time_scale=args.time_scale,
            rate_scale=args.rate_scale,
            seed=args.seed,
            start_s=args.trace_start,
            duration_s=args.trace_duration,
        )
        latencies = dists.load_latencies(args.latencies)
        prices = _prices(args.prices)
        pricing = Pricing.from_prices(
            prices,
            instance=args.instance,
            slots_per_instance=args.slots_per_instance,
            serverless_kind=args.serverless,
            memory_mb=args.memory_mb,
        )
        runs = policies(args)
        if args.slo_ms <= 0:
            raise ValueError("--slo-ms must be > 0")
    except (OSError, ValueError) as exc:  # PriceError is a ValueError
        print(f"infergw plan: error: {exc}", file=sys.stderr)
        return 2
    if len(trace.arrivals) == 0:
        print("infergw plan: error: the trace has no arrivals", file=sys.stderr)
        return 2
    draws = Draws.make(len(trace.arrivals), latencies, args.seed)
    rows: list[dict[str, Any]] = []
    for policy in runs:
        started = time.perf_counter()
        outcome = simulate(trace.arrivals, policy, latencies, draws)
        row = summarise(outcome, pricing, args.slo_ms / 1e3)
        row["sim_seconds"] = round(time.perf_counter() - started, 3)
        rows.append(row)
    meta = {
        "schema": SCHEMA,
        "trace": trace.describe(),
        "seed": args.seed,
        "latencies": {
            "always_on": latencies.always_on.describe(),
            "serverless": latencies.serverless.describe(),
            "coldstart": latencies.coldstart.describe(),
        },
        "pricing": pricing.describe(),
        "prices_read_on": prices.get("read_on"),
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
    }
    scale = ""
    if trace.time_scale != 1 or trace.rate_scale != 1:
        scale = f", time-scale {trace.time_scale:g}, rate-scale {trace.rate_scale:g}"
    d = trace.describe()
    print(
        f"trace {trace.source}: {d['requests']} requests over {d['span_s']} s{scale}; "
        f"SLO {args.slo_ms:g} ms; {pricing.instance} / {pricing.slots_per_instance} slot(s), "
        f"{pricing.serverless_kind} {pricing.rate.memory_mb} MB"
    )
    print(table(rows))
    if args.out:
        for path in write(Path(args.out), meta, rows):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _prices(path: str | None) -> dict[str, Any]:
    from infergw.loadgen.cost import CostError, load_prices

    try:
        return load_prices(Path(path) if path else None)
    except CostError as exc:
        raise ValueError(str(exc)) from exc


def check_against_bench(args: argparse.Namespace) -> int:
    """``--bench-result``: predicted next to measured (``validate.py``)."""
    from infergw.planner.validate import table as validation_table
    from infergw.planner.validate import validate

    try:
        result = json.loads(Path(args.bench_result).read_text())
        prices = _prices(args.prices or (result.get("settings") or {}).get("prices_file"))
        stack = result.get("stack") or {}
        pricing = Pricing.from_prices(
            prices,
            instance=args.instance,
            slots_per_instance=int(stack.get("slots_per_instance", args.slots_per_instance)),
            serverless_kind=str((stack.get("serverless") or {}).get("kind", args.serverless)),
            memory_mb=args.memory_mb,
        )
        rows, used = validate(result, pricing, args.seed)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # json errors are ValueErrors
        print(f"infergw plan: error: --bench-result {args.bench_result}: {exc}", file=sys.stderr)
        return 2
    lat = used["latencies"]
    print(
        f"{args.bench_result}: {used['arrivals']} arrivals replayed as measured; SLO "
        f"{used['slo_ms']:g} ms; measured latencies: always-on {lat['always_on']['mean_ms']} ms, "
        f"serverless {lat['serverless']['mean_ms']} ms (invoke overhead "
        f"{lat['invoke_overhead_ms']} ms unbilled), cold start {lat['coldstart']['mean_ms']} ms"
    )
    print(validation_table(rows))
    print("within: 20% relative or (violations) 1 point; cost per 1M answered requests")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "plan-validation.json"
        path.write_text(json.dumps({"schema": SCHEMA, "used": used, "rows": rows}, indent=2))
        print(f"wrote {path}", file=sys.stderr)
    return 0

"""``infergw plan``: argparse only here; the simulator is imported when the command runs."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  infergw plan --trace ../shared/traces/azure_llm_2023_code.csv --policy all --slots 2 \\
      --slo-ms 500 --out out/plan
  infergw plan --trace poisson:100:86400 --policy always-on --slots 8 --slo-ms 200
  infergw plan --trace trace.csv --latencies bench-latencies.json --sweep-slots 1:16 \\
      --prewarm --out out/frontier
  infergw plan --bench-result out/hybrid/result.json     # predicted next to measured

--latencies FILE (milliseconds; every key optional, see docs/plan.md):
  {"always_on_ms": [samples...], "serverless_ms": {"lognormal": {"median_ms": 40,
   "sigma": 0.4}}, "coldstart_ms": 2500}
"""


def register(sub: Any) -> None:
    """Add the ``plan`` subcommand to the ``infergw`` parser's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "plan",
        help="simulate the routing policies over a trace: SLO violations and cost",
        description="A discrete-event simulation of always-on, autoscaled, serverless and "
        "hybrid (spill-over) serving over an arrival trace, priced with the packaged list.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--trace", help="CSV of timestamps, azure-code|azure-conv, or poisson:RATE:SECONDS"
    )
    source.add_argument(
        "--bench-result",
        help="a bench hybrid result.json: simulate its configurations with its trace and "
        "measured latencies, and compare with what it measured (--prices, --seed, --out apply)",
    )
    p.add_argument("--trace-start", type=float, default=0.0, help="seconds into the trace")
    p.add_argument("--trace-duration", type=float, help="seconds of the trace (default: all)")
    p.add_argument("--time-scale", type=float, default=1.0, help=">1 compresses time")
    p.add_argument("--rate-scale", type=float, default=1.0, help="thin (<1) or replicate (>1)")
    p.add_argument(
        "--policy",
        choices=("always-on", "autoscaled", "serverless", "hybrid", "all"),
        default="all",
    )
    p.add_argument("--slots", type=int, default=1, help="always-on slots (autoscaled: minimum)")
    p.add_argument("--sweep-slots", help="A:B, every slot count from A to B (inclusive)")
    p.add_argument("--slo-ms", type=float, default=500.0, help="latency SLO (default 500)")
    p.add_argument("--latencies", help="JSON of service and cold-start times (see below)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-queue", type=int, help="always-on queue bound (default unbounded)")
    p.add_argument(
        "--queue-timeout-s",
        type=float,
        default=5.0,
        help="a request that would wait longer for an always-on slot fails "
        "(default 5, the gateway's queue_timeout_ms)",
    )
    g = p.add_argument_group("autoscaling (the autoscaled policy, --hybrid-autoscaled)")
    g.add_argument("--max-slots", type=int, default=64)
    g.add_argument("--provision-delay-s", type=float, default=180.0)
    g.add_argument("--idle-release-s", type=float, default=180.0)
    g.add_argument("--target-utilisation", type=float, default=1.0)
    g.add_argument(
        "--scale-interval-s", type=float, default=1.0, help="the autoscaler's step (gateway's)"
    )
    g = p.add_argument_group("serverless")
    g.add_argument("--concurrency-limit", type=int, default=1000)
    g.add_argument("--idle-timeout-s", type=float, default=600.0)
    g.add_argument("--keep-warm", type=int, default=0, help="instances kept warm by pings")
    g.add_argument("--keep-warm-interval-s", type=float, default=300.0)
    g = p.add_argument_group("hybrid (spill-over)")
    g.add_argument("--max-queue-wait-ms", type=float, default=20.0)
    g.add_argument("--prewarm", action="store_true", help="warm a function at half the bound")
    g.add_argument("--hybrid-autoscaled", action="store_true", help="autoscale its always-on")
    g = p.add_argument_group("prices")
    g.add_argument("--prices", help="a prices JSON merged over the packaged one")
    g.add_argument("--instance", default="triton", help="always-on node (nodes section)")
    g.add_argument("--slots-per-instance", type=int, default=1)
    g.add_argument("--serverless", default="lambda", choices=("lambda", "sagemaker", "cloudrun"))
    g.add_argument("--memory-mb", type=int, help="serverless memory (default: the list's)")
    p.add_argument("--out", help="write plan.json, plan.csv (and frontier.png) here")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from infergw.planner.app import main

    return main(args)

"""``infergw bench``: argparse only; the load generator is imported when the command runs."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Mapping
from typing import Any

from infergw.loadgen.settings import DEFAULTS as D
from infergw.wire.protocols import Protocol

SCENARIOS = ("warm", "cold", "scale", "protocol", "concurrency", "trace")
EPILOG = """\
examples:
  infergw bench warm --target 127.0.0.1:8001 --model identity --concurrency 40 --duration 30
  infergw bench warm --target 127.0.0.1:8000 --protocol rest-binary --model mobilenet --rate 50
  infergw bench cold --stack-ready-file ready.json --backend lambda --model minilm --repeats 5
  infergw bench cold --target GATEWAY:8001 --backend cloudrun --model minilm --cold-wait 900
  infergw bench scale --target 127.0.0.1:8001 --model minilm --backend lambda \\
      --ramp-from 1 --ramp-to 100 --duration 60 --slo-ms 200 --out out/scale
  infergw bench protocol --target 127.0.0.1:8001 --http-target 127.0.0.1:8000 --sizes 1KB,1MB
  infergw bench concurrency --target 127.0.0.1:8001 --model identity --levels 1,4,16,64
  infergw bench trace --target 127.0.0.1:8001 --model identity --trace-kind mmpp --seed 7
  infergw bench trace --target 127.0.0.1:8001 --trace-kind azure-code --trace-speedup 10
  infergw bench trace --target 127.0.0.1:8001 --trace-kind fitted --trace-file azure-code
"""


# A scenario that lives outside the load generator (``bench hybrid`` drives the local
# stack, which the load generator may not import): its options, then its command.
ExtraScenario = tuple[
    Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]
]


def register(sub: Any, extra: Mapping[str, ExtraScenario] | None = None) -> None:
    """Add the ``bench`` subcommand to the ``infergw`` parser's subparsers (with the
    ``extra`` scenarios the caller supplies)."""
    extra = dict(extra or {})
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="load-test an OIP endpoint (the gateway, Triton, ...) with a named scenario",
        description="Measure an Open Inference Protocol endpoint: latency from the intended "
        "send time (no coordinated omission), the Server-Timing split, server statistics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", choices=(*SCENARIOS, *extra))
    p.add_argument("--target", help="HOST:PORT (gRPC address in the protocol scenario)")
    p.add_argument("--http-target", help="HOST:PORT of the REST endpoint (protocol scenario)")
    p.add_argument("--protocol", choices=[p.value for p in Protocol], default=D.protocol.value)
    p.add_argument("--model", help="model name (default identity)")
    p.add_argument("--backend", help="pin a gateway backend (x-infergw-backend)")
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, help="seconds per run (after warm-up)")
    bound.add_argument("--requests", type=int, help="measured requests per run")
    cost = p.add_argument_group("cost")
    cost.add_argument(
        "--prices", dest="prices_file", help="a prices JSON merged over vocab/prices.json"
    )
    cost.add_argument(
        "--backend-kind", help="price runs as lambda|sagemaker|cloudrun|triton|node:INSTANCE"
    )
    cost.add_argument("--memory-mb", type=int, help="serverless memory size to price at")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, help="open loop: requests per second")
    load.add_argument("--concurrency", type=int, help="closed loop: requests in flight")
    p.add_argument("--warmup", type=float, help="seconds of warm-up, excluded (per run)")
    p.add_argument("--slo-ms", type=float, default=D.slo_ms, help="latency SLO (default 500)")
    p.add_argument("--out", help="write result.json, result.csv and report.html here")
    p.add_argument("--seed", type=int, default=D.seed, help="seed for schedules and inputs")
    p.add_argument("--arrival", choices=("constant", "poisson"), default=D.arrival)
    p.add_argument("--payload-bytes", type=int, help="identity models: input tensor size")
    p.add_argument("--timeout", type=float, default=D.timeout, help="per-request timeout (s)")
    p.add_argument(
        "--max-outstanding", type=int, default=D.max_outstanding, help="open loop: drop beyond"
    )
    p.add_argument("--no-server-stats", action="store_true", help="skip the statistics diff")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--stack-ready-file", help="`infergw local up --ready-file` JSON")
    p.add_argument(
        "--splits-url",
        help="the gateway's metrics endpoint (http://HOST:PORT): per-request backend_queue "
        "and compute for Triton rows (default: from --stack-ready-file)",
    )
    p.add_argument("--no-splits", action="store_true", help="do not fetch per-request splits")
    p.add_argument(
        "--splits-wait", type=float, default=D.splits_wait, help="s to wait for pending splits"
    )
    cold = p.add_argument_group("cold")
    cold.add_argument("--repeats", type=int, default=D.repeats, help="cold starts to measure")
    cold.add_argument("--cold-wait", type=float, help="seconds to wait for scale-to-zero")
    scale = p.add_argument_group("scale")
    scale.add_argument("--ramp-from", type=float, default=D.ramp_from, help="rps (default 1)")
    scale.add_argument("--ramp-to", type=float, default=D.ramp_to, help="rps (default 100)")
    scale.add_argument("--hold", type=float, default=D.hold, help="seconds at the peak after it")
    scale.add_argument(
        "--steady-window", type=float, default=D.steady_window, help="sliding window (s)"
    )
    proto = p.add_argument_group("protocol")
    proto.add_argument("--sizes", help="payload sizes, e.g. 1KB,mobilenet,1MB,yolov5,8MB")
    proto.add_argument("--protocols", default=D.protocols)
    conc = p.add_argument_group("concurrency")
    conc.add_argument("--levels", help="comma-separated levels (default 1,2,4,...,64)")
    tr = p.add_argument_group("trace")
    tr.add_argument("--trace-csv", help="CSV of arrival timestamps (first column)")
    tr.add_argument("--trace-unit", choices=("s", "ms"), default=D.trace_unit)
    tr.add_argument(
        "--trace-speedup",
        "--time-scale",
        dest="trace_speedup",
        type=float,
        default=D.trace_speedup,
        help="compress time k times",
    )
    tr.add_argument(
        "--rate-scale",
        type=float,
        default=D.rate_scale,
        help="replayed traces: k times the arrivals on the same clock (seeded by --seed)",
    )
    tr.add_argument(
        "--trace-kind",
        choices=("onoff", "mmpp", "file", "azure-code", "azure-conv", "fitted"),
        default=D.trace_kind,
        help="synthetic (onoff, mmpp), replayed (file, the packaged azure-*), or a seeded "
        "2-state MMPP fitted to --trace-file (default mmpp; file when a file is given)",
    )
    tr.add_argument("--trace-file", help="CSV of timestamps (ISO or s/ms), or azure-code|conv")
    tr.add_argument("--trace-counts", help="CSV of per-interval counts (last column)")
    tr.add_argument("--interval-s", type=float, default=D.interval_s, help="counts: s per row")
    tr.add_argument(
        "--trace-spread", choices=("uniform", "poisson", "even"), default=D.trace_spread
    )
    tr.add_argument("--trace-start", type=float, default=D.trace_start, help="trace s to start at")
    tr.add_argument("--trace-duration", type=float, help="trace s to replay (default: all)")
    tr.add_argument(
        "--trace-fit-window", type=float, default=D.trace_fit_window, help="fitted: window (s)"
    )
    tr.add_argument("--on-rate", type=float, default=D.on_rate, help="onoff: rps while on")
    tr.add_argument("--mean-on", type=float, default=D.mean_on, help="onoff: mean on period (s)")
    tr.add_argument("--mean-off", type=float, default=D.mean_off, help="onoff: mean off period (s)")
    tr.add_argument("--mmpp-rates", default=D.mmpp_rates, help="mmpp: rps per state")
    tr.add_argument("--mmpp-dwell", default=D.mmpp_dwell, help="mmpp: mean seconds per state")
    tr.add_argument(
        "--diurnal-amplitude", type=float, default=D.diurnal_amplitude, help="0..1 (default 0.5)"
    )
    tr.add_argument("--diurnal-period", type=float, help="seconds (default: the run)")
    for add_options, _ in extra.values():
        add_options(p)
    p.set_defaults(func=functools.partial(_run, extra=extra))


def _run(args: argparse.Namespace, extra: Mapping[str, ExtraScenario]) -> int:
    if args.scenario in extra:
        return extra[args.scenario][1](args)
    from infergw.loadgen.app import main

    return main(args)

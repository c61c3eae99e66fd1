"""``bench hybrid``'s options and command, light to import (argparse only): the run
itself (``hybrid.run``: numpy, the load generator, process groups) loads when used."""

from __future__ import annotations

import argparse

CONFIGS = ("always-on-mean", "always-on-peak", "always-on-autoscaled", "serverless", "hybrid")


def add_options(bench: argparse.ArgumentParser) -> None:
    """``bench hybrid``'s own options, on the ``bench`` parser."""
    group = bench.add_argument_group("hybrid (bench hybrid: trace options above apply)")
    group.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, in order")
    group.add_argument(
        "--service-ms", type=float, default=15.0, help="one request's service time on Triton"
    )
    group.add_argument("--slots-per-instance", type=int, default=1, help="always-on slots/node")
    group.add_argument(
        "--max-queue-wait-ms", type=float, default=20.0, help="hybrid: the spill-over bound"
    )
    group.add_argument(
        "--provision-delay-s",
        type=float,
        default=None,
        help="always-on-autoscaled: seconds before an ordered slot serves "
        "(default: 180 s on the trace's clock, i.e. divided by --trace-speedup)",
    )
    group.add_argument(
        "--serverless-idle-timeout-s",
        type=float,
        default=None,
        help="the Lambda stand-in's idle timeout (default: 300 s of trace time, compressed)",
    )
    group.add_argument(
        "--idle-release-s",
        type=float,
        default=None,
        help="always-on-autoscaled: seconds a slot is unneeded before release (default as above)",
    )


def run(args: argparse.Namespace) -> int:
    from infergw.experiments.hybrid import run as run_hybrid

    return run_hybrid(args)

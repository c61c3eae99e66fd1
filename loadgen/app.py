"""Running ``infergw bench``: check the settings, run the scenario, write the result.

Ctrl-C sets a stop flag the loops check: the current run ends early, requests in
flight get two seconds to finish, and whatever was measured is written as usual
(``"interrupted": true``). A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from infergw.loadgen import traces
from infergw.loadgen.progress import Progress
from infergw.loadgen.settings import Settings
from infergw.wire.protocols import Protocol

SCHEMA = "infergw.bench/1"


class UsageError(ValueError):
    """A bad combination of options: reported as ``error: ...`` with exit status 2."""


def resolve(s: Settings) -> Settings:
    """Fill scenario defaults and reject combinations that cannot mean anything."""
    from infergw.loadgen import payloads, standins

    info = standins.read_ready_file(s.stack_ready_file) if s.stack_ready_file else None
    if info is not None and not s.target:
        gateway = info["gateway"]
        if s.scenario == "protocol":
            s = s.replace(target=gateway["grpc"], http_target=s.http_target or gateway["http"])
        else:
            s = s.replace(target=gateway["http"] if s.protocol.is_rest else gateway["grpc"])
    s = _resolve_splits(s)
    if not s.target and s.protocol.is_rest and s.http_target:
        s = s.replace(target=s.http_target)
    if not s.target:
        raise UsageError("--target HOST:PORT is required (or --stack-ready-file)")
    for name in ("duration", "rate", "timeout", "slo_ms"):
        value = getattr(s, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0")
    for name in ("requests", "concurrency", "repeats", "max_outstanding"):
        value = getattr(s, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if s.warmup is not None and s.warmup < 0:
        raise UsageError("--warmup must be >= 0")
    if s.model not in payloads.MODEL_INPUTS:
        raise UsageError(
            f"--model {s.model}: inputs are generated for {', '.join(payloads.MODEL_INPUTS)}"
        )
    if s.scenario in ("scale", "trace") and s.concurrency is not None:
        raise UsageError(f"{s.scenario} is open loop: use --rate, not --concurrency")
    if s.scenario in ("concurrency", "protocol", "cold") and s.rate is not None:
        raise UsageError(f"{s.scenario} is closed loop: --rate does not apply")
    if s.scenario == "cold":
        _check_cold(s, info)
    if s.scenario == "protocol":
        s = _resolve_protocol(s)
    if s.scenario == "trace":
        _check_trace_files(s)
    if s.prices_file and not Path(s.prices_file).is_file():
        raise UsageError(f"--prices {s.prices_file}: no such file")
    if s.scenario == "scale" and (s.ramp_from < 0 or s.ramp_to <= 0 or s.hold < 0):
        raise UsageError("--ramp-from must be >= 0, --ramp-to > 0, --hold >= 0")
    return s


def _resolve_splits(s: Settings) -> Settings:
    """``--splits-url`` as a URL (``HOST:PORT`` is taken); from the ready file otherwise, per
    run (``scenarios.splits_url_for``)."""
    if s.no_splits or not s.splits_url or "://" in s.splits_url:
        return s
    return s.replace(splits_url=f"http://{s.splits_url}")


def _check_cold(s: Settings, info: dict[str, Any] | None) -> None:
    from infergw.loadgen import standins

    if s.concurrency is not None:
        raise UsageError("cold sends one request per cold start: --concurrency does not apply")
    if s.cold_wait is not None:
        return
    scalable = standins.scalable(info) if info is not None else []
    if s.backend is None or s.backend not in scalable:
        names = "|".join(scalable) or "lambda|sagemaker|cloudrun"
        raise UsageError(
            f"cold needs --stack-ready-file with --backend {names} "
            "(the stand-ins scale to zero on request) or --cold-wait SECONDS"
        )


def _resolve_protocol(s: Settings) -> Settings:
    from infergw.loadgen import payloads

    if s.model != "identity":
        raise UsageError("the protocol sweep sizes the identity model's input: --model identity")
    s = s.replace(sizes=s.sizes or ",".join(payloads.DEFAULT_SWEEP))
    assert s.sizes is not None
    try:
        for size in s.sizes.split(","):
            payloads.parse_size(size)
        protocols = [Protocol.parse(p) for p in s.protocols.split(",")]
    except ValueError as exc:
        raise UsageError(f"{exc}") from None
    if any(p.is_rest for p in protocols) and not s.http_target:
        raise UsageError(
            "the protocol scenario sends gRPC to --target and REST to --http-target: "
            "give --http-target HOST:PORT (or --protocols grpc)"
        )
    return s


async def run_scenario(s: Settings, progress: Progress) -> tuple[list[Any], bool]:
    from infergw.loadgen.scenarios import SCENARIOS, Context

    ctx = Context(asyncio.Event(), progress, [])
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        print("\nstopping: writing what was measured (Ctrl-C again to abort)", file=sys.stderr)
        ctx.stop.set()
        loop.remove_signal_handler(signal.SIGINT)  # the next one raises KeyboardInterrupt

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        await SCENARIOS[s.scenario](s, ctx)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        progress.close()
    return ctx.runs, ctx.stop.is_set()


def build_result(
    s: Settings, runs: list[Any], started: dt.datetime, elapsed: float
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "scenario": s.scenario,
        "target": s.target,
        "http_target": s.http_target,
        "protocol": s.protocol,
        "model": s.model,
        "backend": s.backend,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": elapsed,
        "settings": json.loads(json.dumps(s.as_dict(), default=str)),
        "runs": runs,
    }


def main(args: argparse.Namespace) -> int:
    try:
        s = resolve(Settings.from_namespace(args))
    except ValueError as exc:  # UsageError, or a bad ready file / protocol name
        print(f"infergw bench: error: {exc}", file=sys.stderr)
        return 2
    progress = Progress(s.progress)
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    try:
        runs, interrupted = asyncio.run(run_scenario(s, progress))
    except ValueError as exc:  # e.g. a stand-in that cannot scale to zero
        print(f"infergw bench: error: {exc}", file=sys.stderr)
        return 2
    result = build_result(s, runs, started, time.perf_counter() - t0)
    if interrupted:
        result["interrupted"] = True
    emit(result, Path(s.out) if s.out else None)
    return 130 if interrupted else 0


def emit(result: dict[str, Any], out: Path | None) -> None:
    """The terminal table, and the files when ``out`` is given (the report module's job)."""
    try:
        from infergw.loadgen.report import format_table, write_reports
    except ImportError:  # the report module is optional at run time: keep the JSON at least
        print(json.dumps(result["runs"], indent=1, default=str)[:4000])
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "result.json").write_text(json.dumps(result, indent=2))
            print(f"wrote {out / 'result.json'} (report module unavailable)", file=sys.stderr)
        return
    print(format_table(result))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_reports(result, out)
        print(f"wrote {out}/result.json, result.csv, report.html", file=sys.stderr)


def _check_trace_files(s: Settings) -> None:
    """A trace file that is not there fails before anything connects."""
    for flag, path in (
        ("--trace-csv", s.trace_csv),
        ("--trace-file", s.trace_file),
        ("--trace-counts", s.trace_counts),
    ):
        if path and path not in traces.NAMED and not Path(path).is_file():
            raise UsageError(f"{flag} {path}: no such file")

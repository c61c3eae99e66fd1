"""The scenarios, named after the published serverless-inference experiments.

Each takes the ``Settings`` and a ``Context`` and returns the result's ``runs``.
They share one measuring step (``Context.measure``): open a sender, run a loop with
server statistics fetched around the measurement window, close the sender. ``warm``
and ``cold`` are also what the demo and ``bench/backends.py`` measure with: they may
pass their own ``inputs`` instead of the example model's.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infergw.loadgen import payloads, schedules, splits, standins, traces
from infergw.loadgen.progress import Progress
from infergw.loadgen.recorder import Recorder
from infergw.loadgen.runner import closed_loop, open_loop
from infergw.loadgen.server_stats import StatsWindow
from infergw.loadgen.settings import Settings
from infergw.loadgen.splits import TraceIds
from infergw.loadgen.targets import make_sender
from infergw.loadgen.timeseries import Window, steady_state_verdict
from infergw.wire.protocols import Protocol

Run = dict[str, Any]
Inputs = Mapping[str, np.ndarray]
Scenario = Callable[[Settings, "Context"], Coroutine[Any, Any, list[Run]]]
DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class Context:
    """What every scenario needs besides its settings."""

    stop: asyncio.Event
    progress: Progress
    runs: list[Run]  # filled as runs finish, so Ctrl-C keeps what was measured
    last_windows: list[Window] = field(default_factory=list)  # of the last run

    @property
    def stopped(self) -> bool:
        return self.stop.is_set()

    async def measure(
        self,
        s: Settings,
        label: str,
        params: dict[str, Any],
        *,
        inputs: Inputs,
        protocol: Protocol | None = None,
        schedule: Iterable[float] | None = None,
        concurrency: int | None = None,
        duration_s: float | None = None,
        requests: int | None = None,
        warmup_s: float = 0.0,
    ) -> Run:
        """One run: open loop when ``schedule`` is given, else closed with ``concurrency``."""
        protocol = protocol or s.protocol
        address = address_for(s, protocol)
        sender = make_sender(
            protocol, address, s.model, inputs, backend=s.backend, timeout_s=s.timeout
        )
        stats = StatsWindow(protocol, address, s.model, enabled=not s.no_server_stats)
        splits_url = splits_url_for(s, address)
        trace_ids = TraceIds.new() if splits_url else None
        if trace_ids is not None:
            sender.trace(trace_ids)  # each request's trace id finds its split afterwards
        await sender.open()
        try:
            if schedule is not None:
                rec = await open_loop(
                    sender,
                    schedule,
                    duration_s=duration_s,
                    max_requests=requests,
                    warmup_s=warmup_s,
                    max_outstanding=s.max_outstanding,
                    drain_s=s.timeout,
                    stop=self.stop,
                    on_measure_start=stats.begin,
                    progress=self.progress,
                )
            else:
                rec = await closed_loop(
                    sender,
                    concurrency=concurrency or 1,
                    duration_s=duration_s,
                    max_requests=requests,
                    warmup_s=warmup_s,
                    stop=self.stop,
                    on_measure_start=stats.begin,
                    progress=self.progress,
                )
        finally:
            await sender.close()
        mode = "open" if schedule is not None else "closed"
        server_stats = await stats.end()
        if trace_ids is not None and splits_url:
            rec.apply_splits(await splits.fetch(splits_url, trace_ids, s.splits_wait))
        run = rec.run_dict(
            label, mode, {"protocol": protocol, **params}, mode == "open", server_stats
        )
        run["slo"] = rec.slo(s.slo_ms)
        self.last_windows = rec.timeseries.windows()
        self.runs.append(run)
        return run


def address_for(s: Settings, protocol: Protocol) -> str:
    """gRPC goes to ``--target``; REST to ``--http-target`` when given, else ``--target``."""
    if protocol.is_rest and s.http_target:
        return s.http_target
    return str(s.target)


def splits_url_for(s: Settings, address: str) -> str | None:
    """Where per-request splits come from: ``--splits-url``, else the ready file's gateway
    when the run targets it (so the demo and bench scripts get them too)."""
    if s.no_splits:
        return None
    if s.splits_url or not s.stack_ready_file:
        return s.splits_url
    return splits.url_from_ready_file(standins.read_ready_file(s.stack_ready_file), address)


def inputs_for(s: Settings) -> Inputs:
    return payloads.model_inputs(s.model, s.seed, s.payload_bytes)


def arrivals(s: Settings, rate: float) -> Iterator[float]:
    if s.arrival == "poisson":
        return schedules.poisson(rate, s.seed)
    return schedules.constant(rate)


def bounds(s: Settings, default_duration: float) -> tuple[float | None, int | None]:
    """(duration, requests) for one run: ``--requests`` wins, else ``--duration``."""
    if s.requests is not None:
        return None, s.requests
    return (s.duration if s.duration is not None else default_duration), None


# --- scenarios -----------------------------------------------------------------------


async def warm(s: Settings, ctx: Context, inputs: Inputs | None = None) -> list[Run]:
    """Pre-warmed, fixed concurrency (default 40) or a fixed open-loop rate."""
    duration, requests = bounds(s, 10.0)
    ctx.progress.stage(0, 1, "warm")
    inputs = inputs_for(s) if inputs is None else inputs
    params: dict[str, Any] = {"payload_bytes": int(sum(a.nbytes for a in inputs.values()))}
    if s.rate is not None:
        await ctx.measure(
            s,
            "warm",
            {**params, "rate": s.rate},
            inputs=inputs,
            schedule=arrivals(s, s.rate),
            duration_s=duration,
            requests=requests,
            warmup_s=_warmup(s, 2.0),
        )
    else:
        concurrency = s.concurrency or 40
        await ctx.measure(
            s,
            "warm",
            {**params, "concurrency": concurrency},
            inputs=inputs,
            concurrency=concurrency,
            duration_s=duration,
            requests=requests,
            warmup_s=_warmup(s, 2.0),
        )
    return ctx.runs


async def cold(s: Settings, ctx: Context, inputs: Inputs | None = None) -> list[Run]:
    """Time to first prediction after scale-to-zero, split into init and inference."""
    info = standins.read_ready_file(s.stack_ready_file) if s.stack_ready_file else None
    inputs = inputs_for(s) if inputs is None else inputs
    address = address_for(s, s.protocol)
    sender = make_sender(
        s.protocol, address, s.model, inputs, backend=s.backend, timeout_s=s.timeout
    )
    repeats = s.requests or s.repeats
    rec = Recorder(time.perf_counter(), 0.0, sender.sent_bytes)
    firsts: list[dict[str, float]] = []
    await sender.open()
    try:
        for i in range(repeats):
            if ctx.stopped:
                break
            ctx.progress.stage(i, repeats, f"cold start {i + 1}/{repeats}")
            await standins.force_cold(info, s.backend, s.model, s.cold_wait)
            t0 = time.perf_counter()
            outcome = await sender.send()
            done = time.perf_counter()
            rec.record(t0, t0, done, outcome)
            error, timing = outcome[0], outcome[1]
            if error is None:
                firsts.append(_cold_split((done - t0) * 1000.0, timing))
    finally:
        await sender.close()
        rec.send_end = time.perf_counter()
    params = {"repeats": repeats, "backend": s.backend, "cold_wait_s": s.cold_wait}
    run = rec.run_dict("cold", "closed", {"protocol": s.protocol, **params}, offered=False)
    run["cold"] = firsts
    ctx.runs.append(run)
    return ctx.runs


def _cold_split(first_ms: float, timing: str | None) -> dict[str, float]:
    from infergw.wire.server_timing import parse_server_timing

    init = sum(e.duration_ms for e in parse_server_timing(timing or "") if e.name == "coldstart")
    return {"first_ms": first_ms, "init_ms": init, "inference_ms": first_ms - init}


async def scale(s: Settings, ctx: Context) -> list[Run]:
    """Open-loop ramp (default 1 -> 100 QPS), then a hold; time to steady state."""
    peak = s.rate if s.rate is not None else s.ramp_to
    ramp_s = s.duration if s.duration is not None else 60.0
    ramp = schedules.ramp(s.ramp_from, peak, ramp_s, poisson=s.arrival == "poisson", seed=s.seed)
    hold = (ramp_s + t for t in arrivals(s, peak)) if s.hold > 0 else iter(())
    total_s = ramp_s + s.hold
    ctx.progress.stage(0, 1, f"ramp {s.ramp_from:g} -> {peak:g} rps")
    run = await ctx.measure(
        s,
        "scale",
        {"ramp_from": s.ramp_from, "ramp_to": peak, "ramp_s": ramp_s, "hold_s": s.hold},
        inputs=inputs_for(s),
        schedule=itertools.chain(ramp, hold),
        duration_s=total_s,
        requests=s.requests,
    )
    verdict = steady_state_verdict(ctx.last_windows, s.slo_ms, max(1, round(s.steady_window)))
    run["steady_state_s"] = verdict.at_s
    run["steady_state"] = verdict.as_dict()
    run["params"]["steady_window_s"] = s.steady_window
    return ctx.runs


async def protocol(s: Settings, ctx: Context) -> list[Run]:
    """Payload sweep on ``identity``: gRPC vs REST JSON vs REST binary."""
    protocols = [Protocol.parse(p) for p in s.protocols.split(",")]
    sizes = [x.strip() for x in (s.sizes or ",".join(payloads.DEFAULT_SWEEP)).split(",")]
    duration, requests = (s.duration, None) if s.duration is not None else (None, s.requests or 20)
    cells = [(size, p) for size in sizes for p in protocols]
    for i, (size, proto) in enumerate(cells):
        if ctx.stopped:
            break
        nbytes = payloads.parse_size(size)
        ctx.progress.stage(i, len(cells), f"{payloads.size_label(size)} over {proto}")
        inputs = payloads.model_inputs("identity", s.seed, nbytes)
        await ctx.measure(
            s,
            f"{payloads.size_label(size)} {proto}",
            {"payload_bytes": int(inputs["input"].nbytes), "size": size},
            inputs=inputs,
            protocol=proto,
            concurrency=s.concurrency or 1,
            duration_s=duration,
            requests=requests,
            warmup_s=_warmup(s, 0.5),
        )
    return ctx.runs


async def concurrency(s: Settings, ctx: Context) -> list[Run]:
    """Closed loop at 1, 2, 4, ... 64 in flight: the latency/throughput curve."""
    levels = _levels(s)
    duration, requests = bounds(s, 5.0)
    inputs = inputs_for(s)
    for i, level in enumerate(levels):
        if ctx.stopped:
            break
        ctx.progress.stage(i, len(levels), f"concurrency {level}")
        await ctx.measure(
            s,
            f"concurrency {level}",
            {"concurrency": level},
            inputs=inputs,
            concurrency=level,
            duration_s=duration,
            requests=requests,
            warmup_s=_warmup(s, 1.0),
        )
    return ctx.runs


def _levels(s: Settings) -> list[int]:
    if s.levels:
        return [int(x) for x in s.levels.split(",")]
    if s.concurrency:
        return [c for c in (2**i for i in range(16)) if c < s.concurrency] + [s.concurrency]
    return list(DEFAULT_LEVELS)


async def trace(s: Settings, ctx: Context) -> list[Run]:
    """Replay a real trace (a file, the packaged Azure ones, an MMPP fitted to one) or a
    generated bursty one (on/off or MMPP), open loop."""
    schedule, params, length = trace_schedule(s)
    duration = s.duration if s.duration is not None else length
    ctx.progress.stage(0, 1, f"trace {params['trace']}")
    await ctx.measure(
        s,
        f"trace {params['trace']}",
        params,
        inputs=inputs_for(s),
        schedule=schedule,
        duration_s=duration,
        requests=s.requests,
        warmup_s=_warmup(s, 0.0),
    )
    return ctx.runs


def trace_offsets(s: Settings) -> tuple[np.ndarray, dict[str, Any]]:
    """The offsets a ``trace`` run sends (up to ``--duration``, else the trace's own
    length) as an array, and their params: what ``bench hybrid`` sizes its slots with and
    ``plan --bench-result`` replays."""
    schedule, params, length = trace_schedule(s)
    horizon = s.duration if s.duration is not None else length  # a generated one never ends
    offsets = np.fromiter(itertools.takewhile(lambda t: t < horizon, schedule), np.float64)
    return offsets, params


def trace_schedule(s: Settings) -> tuple[Iterator[float], dict[str, Any], float]:
    """(offsets, params describing them, natural length in seconds)."""
    kind = trace_kind(s)
    if kind in REPLAYED:
        offsets, params, length = replayed_trace(s, kind)
        return iter(offsets.tolist()), params, length
    length = s.duration if s.duration is not None else 60.0
    period = s.diurnal_period or length
    common: dict[str, Any] = {
        "diurnal_amplitude": s.diurnal_amplitude,
        "diurnal_period_s": period,
        "seed": s.seed,
    }
    if s.trace_kind == "onoff":
        on_rate = s.rate if s.rate is not None else s.on_rate
        gen = schedules.onoff(
            on_rate,
            s.mean_on,
            s.mean_off,
            diurnal_amplitude=s.diurnal_amplitude,
            diurnal_period_s=period,
            seed=s.seed,
        )
        params = {"trace": "onoff", "on_rate": on_rate, "mean_on_s": s.mean_on}
        params |= {"mean_off_s": s.mean_off, **common}
        return gen, params, length
    rates = [float(x) for x in s.mmpp_rates.split(",")]
    dwell = [float(x) for x in s.mmpp_dwell.split(",")]
    gen = schedules.mmpp(
        rates, dwell, diurnal_amplitude=s.diurnal_amplitude, diurnal_period_s=period, seed=s.seed
    )
    return gen, {"trace": "mmpp", "rates": rates, "mean_dwell_s": dwell, **common}, length


REPLAYED = ("file", "azure-code", "azure-conv", "fitted")


def trace_kind(s: Settings) -> str:
    """``--trace-kind``, except that a given file is replayed rather than ignored."""
    if (s.trace_file or s.trace_counts or s.trace_csv) and s.trace_kind in ("onoff", "mmpp"):
        return "file"
    return s.trace_kind


def replayed_trace(s: Settings, kind: str) -> tuple[np.ndarray, dict[str, Any], float]:
    """The offsets a real (or fitted) trace sends: its window [start, start + duration) in
    trace time, then compressed by the speedup; params saying which were replayed; and
    the replay's length in seconds (the window's, so a quiet tail is part of the run)."""
    if kind in traces.NAMED:
        if s.trace_file or s.trace_counts or s.trace_csv:
            raise ValueError(f"--trace-kind {kind} replays the packaged trace: drop the file")
        source: dict[str, Any] = {"source": kind}
        arrivals = traces.packaged(kind)
    else:
        source, arrivals = _trace_source(s, kind)
    part = traces.window(arrivals, s.trace_start, s.trace_duration)
    length = s.trace_duration or float(part[-1]) + 1e-3  # in trace seconds
    params: dict[str, Any] = {"trace": kind, **source, "trace_start_s": s.trace_start}
    params |= {"trace_duration_s": s.trace_duration, "speedup": s.trace_speedup}
    if kind == "fitted":
        fit = traces.fit_mmpp(part, s.trace_fit_window)
        length = max(length, (s.duration or 0.0) * s.trace_speedup)
        gen = itertools.takewhile(lambda t: t < length, fit.schedule(s.seed))
        part = np.fromiter(gen, dtype=np.float64)
        params |= {"fit": fit.as_dict(), "seed": s.seed, "fitted_length_s": length}
        if part.size == 0:
            raise ValueError("the fitted trace has no arrivals: give a longer --trace-duration")
    offsets = traces.speedup(part, s.trace_speedup)
    if s.rate_scale != 1.0:
        offsets = traces.scale_rate(offsets, s.rate_scale, s.seed)
        params |= {"rate_scale": s.rate_scale, "seed": s.seed}
    params["arrivals"] = int(offsets.size)
    if offsets.size >= 2 and offsets[-1] > offsets[0]:
        params["replay_stats"] = traces.describe(offsets).as_dict()  # in replay seconds
    return offsets, params, length / s.trace_speedup


def _trace_source(s: Settings, kind: str) -> tuple[dict[str, Any], np.ndarray]:
    if s.trace_counts:
        arrivals = traces.read_counts(s.trace_counts, s.interval_s, s.trace_spread, s.seed)
        source = {"source": str(s.trace_counts), "interval_s": s.interval_s}
        return source | {"spread": s.trace_spread, "seed": s.seed}, arrivals
    path = s.trace_file or s.trace_csv
    if not path:
        raise ValueError(
            f"--trace-kind {kind} needs --trace-file FILE|{'|'.join(traces.NAMED)} "
            "or --trace-counts FILE"
        )
    return {"source": str(path), "unit": s.trace_unit}, traces.load(path, s.trace_unit)


def _warmup(s: Settings, default: float) -> float:
    return float(s.warmup) if s.warmup is not None else default


SCENARIOS: dict[str, Scenario] = {
    "warm": warm,
    "cold": cold,
    "scale": scale,
    "protocol": protocol,
    "concurrency": concurrency,
    "trace": trace,
}

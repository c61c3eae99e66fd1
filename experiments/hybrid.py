"""``infergw bench hybrid``: one trace against several routing configurations of the
local stack, one after the other, and the papers' comparison from the results.

Each configuration is its own ``infergw local up --config FILE`` (a process group of its
own, so the stack and the load generator do not share an event loop), replayed open
loop with the same trace and seed by the load generator's ``trace`` scenario:

- ``always-on-mean`` / ``always-on-peak``: Triton only, its slots (the backend's
  ``max_concurrency``) sized for the trace's mean rate / its peak 1 s rate at
  ``--service-ms`` per request;
- ``always-on-autoscaled``: Spock's VM-only baseline, Triton's slots following the load
  reactively (``gateway/core/autoscale.py``: from the mean's slots up to the peak's,
  ordered slots serve after ``--provision-delay-s``, unneeded ones go after
  ``--idle-release-s``; default 180 s of trace time each, compressed with the trace).
  Emulated: the gateway changes how many requests it lets into one Triton process; the
  slots over time are scraped from its metrics endpoint and billed as a pool would be;
- ``serverless``: Lambda only;
- ``hybrid``: spill-over from Triton (sized for the mean) to Lambda, with the gateway's
  cold-start hiding (pre-warm, no avoidable cold start).

Every run is priced by who answered it (``loadgen.cost.mixed_cost_per_million``: the
always-on instances for the whole run, each serverless request its own bill) and its SLO
violations are counted; the notes compare ``hybrid`` with the others next to the
published figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from infergw.deploy.local.lambda_standin import FunctionConfig
from infergw.deploy.local.stack import DEFAULT_IDLE_TIMEOUT_S as LOCAL_IDLE_TIMEOUT_S
from infergw.experiments.hybrid_cli import CONFIGS
from infergw.gateway.core.config import BackendConfig
from infergw.gateway.processes import ProcessGroup, ProcessStartError
from infergw.loadgen import traces
from infergw.loadgen.app import build_result, emit, resolve, run_scenario
from infergw.loadgen.cost import CostError, load_prices, mixed_cost_per_million
from infergw.loadgen.progress import Progress
from infergw.loadgen.scenarios import trace_offsets
from infergw.loadgen.settings import Settings

READY_TIMEOUT_S = 300.0
POOL_DELAY_S = 180.0  # a VM's provisioning delay and idle release (Spock, MArk)
SCRAPE_EVERY_S = 1.0
# The published points, relative to always-on procurement (SLO violations, cost).
PUBLISHED = {
    "Spock (CLOUD'19)": (-0.74, -0.33),
    "PennState (WoSC'20)": (-0.60, -0.10),
}


@dataclasses.dataclass(frozen=True)
class Sizing:
    """Always-on slots for the trace: its mean and peak (1 s windows) rates at the
    service time of one request."""

    mean_rps: float
    peak_rps: float
    service_s: float

    @property
    def mean_slots(self) -> int:
        return max(1, math.ceil(self.mean_rps * self.service_s))

    @property
    def peak_slots(self) -> int:
        return max(self.mean_slots, math.ceil(self.peak_rps * self.service_s))

    @classmethod
    def of(cls, offsets: np.ndarray, service_s: float) -> Sizing:
        """From the trace's rate statistics in 1 s windows (``traces.describe``)."""
        stats = traces.describe(offsets, window_s=1.0)
        return cls(stats.mean_rate, stats.max, service_s)


@dataclasses.dataclass(frozen=True)
class Scaling:
    """The platforms' timers on the replay's clock: seconds before an ordered always-on
    slot serves and that a slot goes unneeded before it is released
    (``always-on-autoscaled``), and that an idle serverless instance is kept."""

    provision_delay_s: float
    idle_release_s: float
    serverless_idle_s: float

    @classmethod
    def of(cls, args: argparse.Namespace) -> Scaling:
        """The options, or their trace-time defaults (a VM's 3 minutes as Spock and MArk
        assume, a function kept 5 minutes) compressed as the trace is: a replay 10x
        faster with uncompressed timers would keep every function warm 10x longer."""
        speedup = float(args.trace_speedup or 1.0)

        def pick(value: float | None, default_s: float) -> float:
            return default_s / speedup if value is None else float(value)

        return cls(
            pick(args.provision_delay_s, POOL_DELAY_S),
            pick(args.idle_release_s, POOL_DELAY_S),
            pick(args.serverless_idle_timeout_s, LOCAL_IDLE_TIMEOUT_S),
        )


def stack_config(
    name: str, model: str, sizing: Sizing, max_queue_wait_ms: float, scaling: Scaling
) -> dict:
    """The ``local up --config`` document of one configuration."""
    spill = {"kind": "spillover", "primary": "triton", "overflow": ["lambda"]}
    autoscale = {
        "max_slots": sizing.peak_slots,
        "provision_delay_s": scaling.provision_delay_s,
        "idle_release_s": scaling.idle_release_s,
    }
    routes: dict[str, Callable[[], dict[str, Any]]] = {
        "always-on-mean": lambda: _triton(model, sizing.mean_slots),
        "always-on-peak": lambda: _triton(model, sizing.peak_slots),
        "always-on-autoscaled": lambda: _triton(model, sizing.mean_slots, autoscale=autoscale),
        "serverless": lambda: {"models": {model: {"backend": "lambda"}}},
        "hybrid": lambda: {
            "backends": {"triton": {"max_concurrency": sizing.mean_slots}},
            "models": {model: {"policy": {**spill, "max_queue_wait_ms": max_queue_wait_ms}}},
        },
    }
    if name not in routes:
        raise ValueError(f"unknown configuration {name!r} (known: {', '.join(CONFIGS)})")
    return routes[name]()


def _triton(model: str, slots: int, **policy: Any) -> dict[str, Any]:
    return {
        "backends": {"triton": {"max_concurrency": slots, **policy}},
        "models": {model: {"backend": "triton"}},
    }


def slots_of(config: Mapping[str, Any]) -> int:
    """The always-on slots a configuration runs (0 when it routes none to Triton)."""
    routes = json.dumps(config.get("models", {}))
    if '"triton"' not in routes:
        return 0
    return int(config.get("backends", {}).get("triton", {}).get("max_concurrency", 1))


# ``local up`` stops the gateway (its drain), the stand-ins and Triton (whose own exit
# timeout is 5 s) on SIGTERM; killed sooner, it leaves Triton, which leads a process
# group of its own, running.
STACK_STOP_GRACE_S = 30.0


class Stack:
    """``infergw local up --config FILE`` in a process group of its own, until ``stop``."""

    def __init__(
        self, config: Mapping[str, Any], workdir: Path, name: str, serverless_idle_s: float
    ) -> None:
        self.config_file = workdir / f"{name}.json"  # JSON is YAML
        self.config_file.write_text(json.dumps(config))
        self.ready_file = workdir / f"{name}-ready.json"
        argv = [sys.executable, "-m", "infergw.gateway.cli", "local", "up"]
        argv += ["--config", str(self.config_file), "--ready-file", str(self.ready_file)]
        argv += ["--serverless-idle-timeout-s", str(serverless_idle_s)]
        argv += ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"]
        argv += ["--metrics-port", "0"]
        self.group = ProcessGroup.start(argv, log=workdir / f"{name}.log", name=f"stack {name}")
        try:
            self.group.wait_ready(self._ready, READY_TIMEOUT_S)
        except BaseException:
            self.group.stop()
            raise

    def _ready(self) -> bool:
        return self.ready_file.exists() and self.ready_file.stat().st_size > 0

    @property
    def metrics_url(self) -> str:
        info = json.loads(self.ready_file.read_text())
        return f"http://{info['gateway']['metrics']}/metrics"

    def stop(self) -> None:
        self.group.stop(STACK_STOP_GRACE_S)


async def measure_with_capacity(
    s: Settings, metrics_url: str | None
) -> tuple[list[Any], bool, dict[str, Any] | None]:
    """The load generator's runs, and while they run the autoscaled Triton's slots
    scraped from the gateway's metrics endpoint every second (None: not autoscaled)."""
    if metrics_url is None:
        runs, interrupted = await run_scenario(s, Progress(s.progress))
        return runs, interrupted, None
    samples: list[tuple[float, float, float, float]] = []
    t0 = time.monotonic()

    async def scrape(session: aiohttp.ClientSession) -> None:
        async with session.get(metrics_url) as reply:
            text = await reply.text()
        got = slot_samples(text, "triton")
        if got is not None:
            samples.append((time.monotonic() - t0, *got))

    async def scrape_forever(session: aiohttp.ClientSession) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await scrape(session)
            await asyncio.sleep(SCRAPE_EVERY_S)

    timeout = aiohttp.ClientTimeout(total=5.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        poller = asyncio.create_task(scrape_forever(session))
        try:
            runs, interrupted = await run_scenario(s, Progress(s.progress))
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            await scrape(session)  # the last reading closes the bill
    return runs, interrupted, capacity_of(samples)


def slot_samples(text: str, backend: str) -> tuple[float, float, float] | None:
    """(ready, provisioning, slot-seconds so far) of ``backend`` in a metrics page."""
    ready = provisioning = billed = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("backend") != backend:
                continue
            if sample.name == "infergw_backend_slots":
                if sample.labels.get("state") == "ready":
                    ready = sample.value
                else:
                    provisioning = sample.value
            elif sample.name == "infergw_backend_slot_seconds_total":
                billed = sample.value
    if ready is None or provisioning is None or billed is None:
        return None
    return ready, provisioning, billed


def capacity_of(samples: list[tuple[float, float, float, float]]) -> dict[str, Any] | None:
    """The slots over time and their mean (slot-seconds between the first and the last
    reading over the time between them)."""
    if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
        return None
    (t_first, *_, billed_first), (t_last, *_, billed_last) = samples[0], samples[-1]
    return {
        "backend": "triton",
        "emulated": "the gateway's admission slots in front of one Triton process",
        "samples": [[round(t, 3), ready, prov] for t, ready, prov, _ in samples],
        "mean_slots": (billed_last - billed_first) / (t_last - t_first),
        "max_ready": max(ready for _, ready, _, _ in samples),
    }


def run(args: argparse.Namespace) -> int:
    """The ``bench hybrid`` command (see the module docstring)."""
    base = Settings.from_namespace(args)
    base = dataclasses.replace(base, scenario="trace")
    names = [n.strip() for n in str(args.configs).split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        known = ", ".join(CONFIGS)
        print(f"infergw bench hybrid: error: --configs: {unknown or 'none'} (known: {known})",
              file=sys.stderr)  # fmt: skip
        return 2
    offsets, params = trace_offsets(base)
    if offsets.size < 2:
        print("infergw bench hybrid: error: the trace has fewer than 2 arrivals", file=sys.stderr)
        return 2
    sizing = Sizing.of(offsets, args.service_ms / 1000.0)
    scaling = Scaling.of(args)
    prices = load_prices(Path(base.prices_file) if base.prices_file else None)
    started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}  # configurations whose stack did not start: why
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="infergw-hybrid-") as tmp:
        for name in names:
            config = stack_config(name, base.model, sizing, args.max_queue_wait_ms, scaling)
            print(f"{name}: starting the local stack", file=sys.stderr)
            try:
                stack = Stack(config, Path(tmp), name, scaling.serverless_idle_s)
            except ProcessStartError as exc:  # its log tail is in the message
                print(f"{name}: skipped: {exc}", file=sys.stderr)
                skipped[name] = str(exc).splitlines()[0]
                continue
            try:
                s = resolve(dataclasses.replace(base, stack_ready_file=str(stack.ready_file)))
                scraped = stack.metrics_url if name == "always-on-autoscaled" else None
                measured, interrupted, capacity = asyncio.run(measure_with_capacity(s, scraped))
            finally:
                stack.stop()
            for one in measured:
                one["label"] = name
                one["config"] = config
                if capacity is not None:
                    one["capacity"] = capacity
                _price(one, prices, instances_of(config, capacity, args.slots_per_instance))
            runs.extend(measured)
            if interrupted:
                break
    result = build_result(base, runs, started, time.perf_counter() - t0)
    result["scenario"] = "hybrid"
    result["target"] = "the local stack, one per configuration"
    result["trace"] = params
    result["sizing"] = dataclasses.asdict(sizing) | {
        "mean_slots": sizing.mean_slots,
        "peak_slots": sizing.peak_slots,
    }
    result["scaling"] = dataclasses.asdict(scaling)
    result["stack"] = stack_limits(args, scaling)
    result["comparison"] = compare(runs)
    if interrupted:
        result["interrupted"] = True
    if skipped:
        result["skipped"] = skipped
    emit(result, Path(base.out) if base.out else None)
    return 130 if interrupted else 1 if skipped else 0


def instances_of(
    config: Mapping[str, Any], capacity: Mapping[str, Any] | None, per_instance: int
) -> float:
    """The always-on instances billed for the whole run: a fixed pool's slots in whole
    instances; an autoscaled one's mean slots (ready and provisioning) per instance."""
    if capacity is not None:
        return max(1.0, float(capacity["mean_slots"]) / per_instance)
    slots = slots_of(config)
    return float(math.ceil(slots / per_instance)) if slots else 0.0


def stack_limits(args: argparse.Namespace, scaling: Scaling) -> dict[str, Any]:
    """What the local stack's configurations ran with beyond their own keys: the
    gateway's admission defaults, the Lambda stand-in's limits, the spill-over bound and
    the instance size (``infergw plan --bench-result`` simulates the same)."""
    function = FunctionConfig("any")
    return {
        "max_queue": BackendConfig.model_fields["max_queue"].default,
        "queue_timeout_ms": BackendConfig.model_fields["queue_timeout_ms"].default,
        "serverless": {
            "kind": "lambda",
            "concurrency_limit": function.reserved_concurrency,
            "idle_timeout_s": scaling.serverless_idle_s,
        },
        "max_queue_wait_ms": args.max_queue_wait_ms,
        "slots_per_instance": args.slots_per_instance,
    }


def _price(run: dict[str, Any], prices: dict[str, Any], always_on: float) -> None:
    instances = {"triton": always_on} if always_on else {}
    try:
        run["cost"] = mixed_cost_per_million(run, prices, instances=instances)
    except CostError as exc:
        run["cost"] = {"kind": "mixed", "error": str(exc)}


def compare(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``hybrid`` relative to every other run: SLO violations and cost per 1M requests
    (negative: fewer, cheaper), next to the published figures."""
    by_label = {r["label"]: r for r in runs}
    hybrid = by_label.get("hybrid")
    if hybrid is None:
        return {}
    out: dict[str, Any] = {"published": PUBLISHED}
    for label, other in by_label.items():
        if label == "hybrid":
            continue
        out[label] = {
            "violations": _relative(_violations(hybrid), _violations(other)),
            "cost": _relative(_usd(hybrid), _usd(other)),
        }
    return out


def _violations(run: Mapping[str, Any]) -> float | None:
    slo = run.get("slo") or {}
    return slo.get("share")


def _usd(run: Mapping[str, Any]) -> float | None:
    return (run.get("cost") or {}).get("usd_per_million")


def _relative(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline - 1.0

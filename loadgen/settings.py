"""What one ``infergw bench`` run is asked to do, as one typed value.

The CLI builds it from its arguments (``Settings.from_namespace``; the argparse
defaults are these field defaults); the demo and the benchmark scripts build it
directly, so they run exactly the scenarios users run.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from infergw.wire.protocols import Protocol


@dataclass(frozen=True)
class Settings:
    scenario: str = "warm"
    target: str | None = None  # HOST:PORT (gRPC address in the protocol scenario)
    http_target: str | None = None  # REST address, when it differs (protocol scenario)
    protocol: Protocol = Protocol.GRPC
    model: str = "identity"
    backend: str | None = None  # pinned with x-infergw-backend
    duration: float | None = None
    requests: int | None = None
    rate: float | None = None
    concurrency: int | None = None
    warmup: float | None = None  # seconds; None: the scenario's default
    slo_ms: float = 500.0
    out: str | None = None
    seed: int = 0
    arrival: str = "constant"
    payload_bytes: int | None = None
    timeout: float = 120.0
    max_outstanding: int = 10_000
    no_server_stats: bool = False
    progress: bool | None = None
    stack_ready_file: str | None = None
    # cost: a prices JSON over vocab/prices.json; what to price a run as (default: the
    # pinned backend's name when it is a kind, or who answered); serverless memory size
    prices_file: str | None = None
    backend_kind: str | None = None
    memory_mb: int | None = None
    # per-request backend splits: the gateway's metrics endpoint (http://HOST:PORT)
    splits_url: str | None = None
    splits_wait: float = 5.0  # seconds to wait for splits still pending after a run
    no_splits: bool = False
    # cold
    repeats: int = 3
    cold_wait: float | None = None
    # scale
    ramp_from: float = 1.0
    ramp_to: float = 100.0
    hold: float = 10.0
    steady_window: float = 10.0
    # protocol
    sizes: str | None = None
    protocols: str = ",".join(Protocol)
    # concurrency
    levels: str | None = None
    # trace
    trace_csv: str | None = None
    trace_unit: str = "s"
    trace_speedup: float = 1.0
    rate_scale: float = 1.0  # replayed traces: arrivals x this, on the same clock
    trace_kind: str = "mmpp"  # onoff|mmpp|file|azure-code|azure-conv|fitted (loadgen.traces)
    trace_file: str | None = None  # timestamps CSV, or a packaged trace's name (fitted)
    trace_counts: str | None = None  # CSV of per-interval counts
    interval_s: float = 1.0  # --trace-counts: seconds per row
    trace_spread: str = "uniform"  # --trace-counts: uniform|poisson|even within an interval
    trace_start: float = 0.0  # trace seconds: replay [start, start + duration)
    trace_duration: float | None = None
    trace_fit_window: float = 10.0  # fitted: the window of the dispersion and autocorrelation
    on_rate: float = 50.0
    mean_on: float = 2.0
    mean_off: float = 4.0
    mmpp_rates: str = "5,50"
    mmpp_dwell: str = "10,3"
    diurnal_amplitude: float = 0.5
    diurnal_period: float | None = None

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> Settings:
        """The fields of ``args`` that are settings (``func`` and the like are not)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in names and v is not None}
        if "protocol" in values:
            values["protocol"] = Protocol.parse(values["protocol"])
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the result's ``settings``."""
        return {k: str(v) if isinstance(v, Protocol) else v for k, v in vars(self).items()}


DEFAULTS = Settings()

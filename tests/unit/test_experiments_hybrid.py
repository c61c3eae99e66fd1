"""``bench hybrid``'s pieces that need no stack: sizing, the configurations, the comparison."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from infergw.experiments.hybrid import (
    Scaling,
    Sizing,
    capacity_of,
    compare,
    instances_of,
    slot_samples,
    slots_of,
    stack_config,
)
from infergw.gateway.core.autoscale import AutoscaleCollector, Autoscaler
from infergw.gateway.core.config import parse_config
from infergw.gateway.core.metrics import GatewayMetrics
from infergw.gateway.core.routing.config import AutoscaleConfig

SCALING = Scaling(provision_delay_s=18.0, idle_release_s=18.0, serverless_idle_s=30.0)


def test_slots_are_sized_for_the_mean_and_the_peak_second() -> None:
    # 100 arrivals over 10 s (10/s), 40 of them in the same second: the peak.
    offsets = np.sort(np.concatenate([np.linspace(0, 10, 60), np.full(40, 3.5)]))
    sizing = Sizing.of(offsets, service_s=0.05)
    assert sizing.mean_rps == pytest.approx(10.0) and sizing.peak_rps == 46.0
    assert (sizing.mean_slots, sizing.peak_slots) == (1, 3)  # ceil(0.5), ceil(2.3)


@pytest.mark.parametrize(
    ("name", "slots", "first_choice"),
    [
        ("always-on-mean", 2, "triton"),
        ("always-on-peak", 14, "triton"),  # ceil(90 x 0.15)
        ("always-on-autoscaled", 2, "triton"),  # from the mean's slots
        ("serverless", 0, "lambda"),
        ("hybrid", 2, "triton"),
    ],
)
def test_each_configuration_is_a_valid_route_for_the_stack(
    name: str, slots: int, first_choice: str
) -> None:
    config = stack_config(name, "minilm", Sizing(10.0, 90.0, 0.15), 20, SCALING)
    assert slots_of(config) == slots
    backends = {
        "triton": {"kind": "triton", "url": "127.0.0.1:1"},
        "lambda": {"kind": "lambda", "function_name": "f"},
    }
    for backend, keys in config.get("backends", {}).items():
        backends[backend] |= keys
    gateway = parse_config({"backends": backends, "models": config["models"]})
    (route,) = gateway.routes
    assert route.model == "minilm" and route.primary == first_choice
    if name == "hybrid":
        assert route.members == ("triton", "lambda")
    (triton, *_) = gateway.backends
    if name == "always-on-autoscaled":
        assert triton.autoscale == AutoscaleConfig(
            max_slots=14, provision_delay_s=18.0, idle_release_s=18.0
        )
    else:
        assert triton.autoscale is None


def test_unknown_configurations_are_named() -> None:
    with pytest.raises(ValueError, match="unknown configuration 'autoscaled'"):
        stack_config("autoscaled", "minilm", Sizing(1.0, 1.0, 0.1), 20, SCALING)


def test_hybrid_is_compared_with_every_other_run() -> None:
    def run(label: str, share: float, usd: float) -> dict:
        return {"label": label, "slo": {"share": share}, "cost": {"usd_per_million": usd}}

    comparison = compare([run("always-on-peak", 0.5, 20.0), run("hybrid", 0.1, 5.0)])
    assert comparison["always-on-peak"] == {
        "violations": pytest.approx(-0.8), "cost": pytest.approx(-0.75)
    }  # fmt: skip
    assert "Spock (CLOUD'19)" in comparison["published"]
    assert compare([run("always-on-peak", 0.5, 20.0)]) == {}  # no hybrid run: nothing


def test_unknown_configurations_on_the_command_line_fail_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from infergw.gateway.cli import build_parser

    args = build_parser().parse_args(["bench", "hybrid", "--configs", "always-on-mean,vm"])
    assert args.func(args) == 2
    assert "--configs: ['vm'] (known: always-on-mean," in capsys.readouterr().err


def test_the_platform_timers_default_to_trace_time_compressed_with_the_trace() -> None:
    args = argparse.Namespace(
        trace_speedup=10.0, provision_delay_s=None, idle_release_s=5.0,
        serverless_idle_timeout_s=None,
    )  # fmt: skip
    assert Scaling.of(args) == Scaling(18.0, 5.0, serverless_idle_s=30.0)


class Pool:
    def __init__(self) -> None:
        self.max_concurrency = 2
        self.peaks = [5]

    def resize(self, max_concurrency: int) -> None:
        self.max_concurrency = max_concurrency

    def take_peak_demand(self) -> int:
        return self.peaks.pop(0) if self.peaks else 0


def test_the_slots_are_read_back_from_the_gateway_metrics_page_and_averaged() -> None:
    now = [0.0]
    config = AutoscaleConfig(max_slots=8, provision_delay_s=2.0, idle_release_s=100.0)
    scaler = Autoscaler("triton", Pool(), config, clock=lambda: now[0])
    metrics = GatewayMetrics()
    metrics.registry.register(AutoscaleCollector({"triton": scaler}))
    samples = []
    for t in (0.0, 1.0, 2.0, 3.0, 4.0):
        now[0] = t
        if t == 1.0:
            scaler.step()  # orders 3 slots, ready at t=3
        if t == 3.0:
            scaler.step()
        got = slot_samples(metrics.render().decode(), "triton")
        assert got is not None
        samples.append((t, *got))
    assert [s[1:3] for s in samples] == [(2, 0), (2, 3), (2, 3), (5, 0), (5, 0)]
    capacity = capacity_of(samples)
    assert capacity is not None
    assert capacity["mean_slots"] == pytest.approx((2 * 1 + 5 * 3) / 4)  # billed from the order
    assert capacity["max_ready"] == 5
    assert slot_samples("infergw_requests_total 3\n", "triton") is None


def test_always_on_instances_whole_when_fixed_and_a_mean_when_autoscaled() -> None:
    fixed = stack_config("always-on-peak", "minilm", Sizing(10.0, 90.0, 0.15), 20, SCALING)
    assert instances_of(fixed, None, per_instance=4) == 4.0  # ceil(14 / 4)
    serverless = stack_config("serverless", "minilm", Sizing(10.0, 90.0, 0.15), 20, SCALING)
    assert instances_of(serverless, None, per_instance=4) == 0.0
    assert instances_of(fixed, {"mean_slots": 6.0}, per_instance=4) == 1.5

"""``bench hybrid``'s pieces that need no stack: sizing, the configurations, the comparison."""

from __future__ import annotations

import numpy as np
import pytest

from infergw.experiments.hybrid import Sizing, compare, slots_of, stack_config
from infergw.gateway.core.config import parse_config


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
        ("serverless", 0, "lambda"),
        ("hybrid", 2, "triton"),
    ],
)
def test_each_configuration_is_a_valid_route_for_the_stack(
    name: str, slots: int, first_choice: str
) -> None:
    config = stack_config(name, "minilm", Sizing(10.0, 90.0, 0.15), max_queue_wait_ms=20)
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


def test_unknown_configurations_are_named() -> None:
    with pytest.raises(ValueError, match="unknown configuration 'autoscaled'"):
        stack_config("autoscaled", "minilm", Sizing(1.0, 1.0, 0.1), 20)


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

"""Settings, option checks, protocol registry and the ready file's scale-to-zero routes."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infergw.loadgen import standins
from infergw.loadgen.app import UsageError, resolve
from infergw.loadgen.cli import register
from infergw.loadgen.settings import Settings
from infergw.loadgen.targets import SENDERS, make_sender
from infergw.wire.protocols import Protocol

URL = "http://127.0.0.1:9/_infergw/functions/infergw-{}/scale-to-zero"
READY: dict[str, Any] = {
    "gateway": {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000", "metrics": "127.0.0.1:8002"},
    "backends": {
        "triton": {"grpc": "127.0.0.1:9001", "http": "127.0.0.1:9000"},
        "lambda": {
            "endpoint": "http://127.0.0.1:9",
            "scale_to_zero": {m: URL.format(m) for m in ("identity", "minilm")},
        },
    },
}


def parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return Settings.from_namespace(parser.parse_args(["bench", *argv]))


@pytest.fixture
def ready_file(tmp_path: Path) -> str:
    path = tmp_path / "ready.json"
    path.write_text(json.dumps(READY))
    return str(path)


def test_cli_defaults_are_the_settings_defaults() -> None:
    assert parse("warm") == Settings(scenario="warm")
    s = parse("protocol", "--protocol", "rest-binary", "--slo-ms", "80")
    assert s.protocol is Protocol.REST_BINARY and s.slo_ms == 80.0
    assert json.loads(json.dumps(s.as_dict()))["protocol"] == "rest-binary"


@pytest.mark.parametrize(
    ("protocol", "target"), [("grpc", "127.0.0.1:8001"), ("rest", "127.0.0.1:8000")]
)
def test_the_ready_file_gives_the_gateway_address_per_protocol(
    ready_file: str, protocol: str, target: str
) -> None:
    s = resolve(parse("warm", "--stack-ready-file", ready_file, "--protocol", protocol))
    assert s.target == target
    sweep = resolve(parse("protocol", "--stack-ready-file", ready_file))
    assert (sweep.target, sweep.http_target) == ("127.0.0.1:8001", "127.0.0.1:8000")
    assert sweep.sizes  # the default sweep filled in


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cold", "--backend", "triton"], "--backend lambda (the stand-ins"),
        (["cold", "--backend", "lambda", "--concurrency", "2"], "--concurrency does not apply"),
        (["warm", "--model", "resnet"], "--model resnet: inputs are generated for identity"),
        (["protocol", "--protocols", "grpc,soap"], "unknown protocol 'soap'"),
        (["trace", "--trace-file", "/nonexistent.csv"], "--trace-file /nonexistent.csv: no such"),
        (["trace", "--trace-counts", "/nope.csv"], "--trace-counts /nope.csv: no such file"),
        (["warm", "--prices", "/nope.json"], "--prices /nope.json: no such file"),
    ],
)
def test_bad_settings_are_usage_errors(ready_file: str, argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        resolve(parse(*argv, "--stack-ready-file", ready_file))


def test_the_cost_settings_reach_the_result(ready_file: str, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text('{"lambda": {"request_usd_per_million": 0.25}}')
    argv = ["--prices", str(prices), "--backend-kind", "lambda", "--memory-mb", "1024"]
    s = resolve(parse("warm", "--stack-ready-file", ready_file, *argv))
    assert (s.prices_file, s.backend_kind, s.memory_mb) == (str(prices), "lambda", 1024)
    assert {"prices_file", "backend_kind", "memory_mb"} <= set(s.as_dict())  # run_costs reads


def test_a_packaged_trace_name_is_not_a_missing_file(ready_file: str) -> None:
    resolve(parse("trace", "--stack-ready-file", ready_file, "--trace-file", "azure-code"))


def test_cold_on_a_scalable_backend_or_with_a_wait_is_fine(ready_file: str) -> None:
    resolve(parse("cold", "--stack-ready-file", ready_file, "--backend", "lambda"))
    resolve(parse("cold", "--target", "x:1", "--backend", "triton", "--cold-wait", "0"))


def test_scale_to_zero_routes_come_from_the_ready_file() -> None:
    assert standins.scalable(READY) == ["lambda"]
    assert standins.scale_to_zero_url(READY, "lambda", "minilm") == URL.format("minilm")
    with pytest.raises(ValueError, match=r"'triton' cannot be scaled to zero.*\['lambda'\]"):
        standins.scale_to_zero_url(READY, "triton", "identity")
    with pytest.raises(ValueError, match="does not serve model 'yolo'"):
        standins.scale_to_zero_url(READY, "lambda", "yolo")


def test_force_cold_waits_where_nothing_can_scale_and_refuses_with_neither() -> None:
    asyncio.run(standins.force_cold(READY, "triton", "identity", 0.0))  # the wait: no HTTP
    asyncio.run(standins.force_cold(None, None, "identity", 0.0))
    with pytest.raises(ValueError, match="cannot be scaled to zero"):
        asyncio.run(standins.force_cold(READY, "triton", "identity", None))
    with pytest.raises(ValueError, match="--cold-wait"):
        asyncio.run(standins.force_cold(None, "lambda", "identity", None))


def test_every_protocol_has_a_sender_that_says_which_it_is() -> None:
    assert set(SENDERS) == set(Protocol)
    inputs = {"input": np.ones((1, 4), np.float32)}
    for protocol in Protocol:
        sender = make_sender(protocol.value, "127.0.0.1:1", "identity", inputs)  # not opened
        assert sender.protocol is protocol
    with pytest.raises(ValueError, match="unknown protocol 'http'; use one of grpc, rest"):
        make_sender("http", "127.0.0.1:1", "identity", inputs)

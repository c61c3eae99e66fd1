"""Keep-warm against the local Lambda stand-in: pings keep an instance past its idle
timeout, a backend without them goes cold, the pings are counted and priced; spill-over
pre-warms a cold overflow and sends it no request before it is warm.

Functions of the stand-in with a 1 s idle timeout: ``kept`` has ``keep_warm: {mode:
fixed, interval_s: 0.3}``, ``left`` none (reached by pinning), ``overflow`` takes what
the real Triton (one slot) spills. Each wait is on a state the stand-in or the gateway
reports, bounded; nothing is timed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from infergw.deploy.local.lambda_standin import FunctionConfig, LambdaStandIn
from infergw.deploy.triton.launcher import TritonEndpoints
from infergw.gateway.core.config import parse_config
from infergw.wire.server_timing import parse_server_timing
from tests.integration.aws import fake_aws_env
from tests.integration.conftest import GatewayThread, ServiceThread, wait_until

pytestmark = pytest.mark.integration

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
IDLE_S = 1.0
LISTEN = {"grpc_port": 0, "http_port": 0, "metrics_port": 0}
WAIT_S = 30.0
BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
).encode()


@pytest.fixture(scope="module")
def standin() -> Iterator[LambdaStandIn]:
    env = {**CREDS, "INFERGW_MODELS": "identity"}
    functions = [
        *(
            FunctionConfig(n, env=env, idle_timeout_s=IDLE_S, timeout_s=30)
            for n in ("kept", "left")
        ),
        FunctionConfig("overflow", env={**CREDS, "INFERGW_MODELS": "minilm"}, timeout_s=30),
    ]
    with fake_aws_env(CREDS):
        thread = ServiceThread(LambdaStandIn(functions))
        try:
            yield thread.service
        finally:
            thread.close()


@pytest.fixture(scope="module")
def gateway(standin: LambdaStandIn) -> Iterator[GatewayThread]:
    config = {
        "listen": LISTEN,
        "backends": {
            "kept": function(standin, "kept", keep_warm={"mode": "fixed", "interval_s": 0.3}),
            "left": function(standin, "left"),
        },
        "models": {"identity": {"backend": "kept", "backends": ["left"]}},
    }
    with fake_aws_env(CREDS):
        gw = GatewayThread(parse_config(config))
        try:
            yield gw
        finally:
            gw.close()


def function(standin: LambdaStandIn, name: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "lambda", "function_name": name, "endpoint_url": standin.endpoint, **extra}


def stats(standin: LambdaStandIn, function: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{standin.endpoint}/_infergw/functions/{function}") as reply:
        return dict(json.load(reply))


def timing(gateway: GatewayThread, model: str, body: bytes, pinned: str | None = None) -> dict:
    """One request through the gateway: its Server-Timing entries, by name."""
    headers = {"Content-Type": "application/json"}
    if pinned:
        headers["x-infergw-backend"] = pinned
    url = f"http://{gateway.http}/v2/models/{model}/infer"
    request = urllib.request.Request(url, body, headers)
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as reply:
            assert json.load(reply)["outputs"]
            return {e.name: e for e in parse_server_timing(reply.headers["Server-Timing"])}
    except urllib.error.HTTPError as exc:  # the gateway's answer says why
        raise AssertionError(f"{exc.code}: {exc.read().decode()}") from exc


def infer(gateway: GatewayThread, pinned: str | None = None) -> set[str]:
    """The Server-Timing entry names of one identity request through the gateway."""
    return set(timing(gateway, "identity", BODY, pinned))


def metric(gateway: GatewayThread, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://{gateway.metrics}/metrics") as reply:
        text = reply.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_pings_keep_an_instance_warm_past_its_idle_timeout(
    standin: LambdaStandIn, gateway: GatewayThread
) -> None:
    pings = "infergw_keep_warm_pings_total"
    # Fixed mode pings from start: the first ping paid the one cold start.
    wait_until(lambda: metric(gateway, pings, backend="kept") >= 1, "a first ping")
    assert stats(standin, "kept")["cold_starts"] == 1
    # Without pings, the idle timeout takes the instance: the next request is cold.
    assert "coldstart" in infer(gateway, pinned="left")
    wait_until(lambda: stats(standin, "left")["instances"] == 0, "left's instance reaped")
    assert "coldstart" in infer(gateway, pinned="left")
    # Meanwhile (well past the idle timeout) kept stayed warm: no second cold start.
    assert "coldstart" not in infer(gateway)
    kept = stats(standin, "kept")  # (a ping may be in flight: busy is 0 or 1)
    assert (kept["instances"], kept["cold_starts"]) == (1, 1)
    assert metric(gateway, pings, backend="kept", reason="keep_warm", outcome="warm") >= 3
    assert metric(gateway, pings, backend="left") == 0
    assert metric(gateway, "infergw_keep_warm_cost_usd_total", backend="kept") > 0


def test_spill_over_prewarms_a_cold_overflow_and_spills_nothing_to_it_cold(
    standin: LambdaStandIn, triton: TritonEndpoints
) -> None:
    # Triton with one slot under 3 in flight: its queue wait (two service times) passes
    # the 20 ms bound at once but stays far below a cold start, so every cold start is
    # avoidable: requests queue at Triton while the overflow is pre-warmed, spill to its
    # warm instances, and queue again whenever those are all busy (pre-warming one more).
    # The overflow's cold starts (a process loading the model each) starve Triton of CPU
    # on a small machine: its queue may hold a request for seconds, so the admission's
    # queue timeout is the client's wait, not the 5 s default (a 429 is not under test).
    spill = {"kind": "spillover", "primary": "triton", "overflow": ["lambda"]}
    config = {
        "listen": LISTEN,
        "backends": {
            "triton": {
                "kind": "triton",
                "url": triton.grpc,
                "max_concurrency": 1,
                "max_queue": 64,
                "queue_timeout_ms": WAIT_S * 1000,
            },
            "lambda": function(standin, "overflow"),
        },
        "models": {"minilm": {"policy": {**spill, "max_queue_wait_ms": 20}}},
    }
    body = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["warm me"]}]}
    ).encode()
    with fake_aws_env(CREDS):
        gw = GatewayThread(parse_config(config))
        try:
            with ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(lambda _: timing(gw, "minilm", body), range(300)))
            prewarms = metric(gw, "infergw_keep_warm_pings_total", reason="prewarm")
        finally:
            gw.close()
    spilled = [a for a in answers if "backend=lambda" in a["backend"].description]
    assert len(spilled) >= 30, f"{len(spilled)} spilled"
    assert all("reason=spill" in a["backend"].description for a in spilled)
    assert "coldstart" not in spilled[0]  # the first spilled request found it warm
    # The warm capacity is an estimate from overlapping answers (two that touch may have
    # been one instance): a rare spilled request may still start one.
    assert sum("coldstart" in a for a in spilled) <= 0.02 * len(spilled)
    assert prewarms >= 1 and stats(standin, "overflow")["cold_starts"] >= 1  # the ping's

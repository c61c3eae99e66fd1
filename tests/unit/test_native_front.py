"""Which routes the native plane forwards itself, and when it may own the gRPC port."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from infergw.gateway import native_front, native_plane
from infergw.gateway.core.backend import Backend, CallCredential
from infergw.gateway.core.config import parse_config
from infergw.vocab.errors import Unavailable

TRITON = {"kind": "triton", "url": "127.0.0.1:8001", "max_concurrency": 4, "max_queue": 2}
OTHER = {"kind": "triton", "url": "127.0.0.1:9"}
LANE = {"kind": "runtime", "models": ["identity"]}  # a backend only the lane serves
BACKENDS = {"triton": TRITON, "other": OTHER, "lam": LANE}


def config(models: dict[str, Any], **extra: Any) -> Any:
    backends = extra.pop("backends", {"triton": TRITON})
    return parse_config({"backends": backends, "models": models, **extra})


def test_plain_triton_routes_are_native_and_carry_their_limits() -> None:
    routes = native_front.native_routes(config({"identity": "triton", "*": "triton"}))
    assert routes.routes == {"identity": "triton"}  # "*" stays with the lane
    assert routes.backends["triton"] == native_plane.NativeBackend(
        "127.0.0.1:8001", max_concurrency=4, max_queue=2, queue_timeout_ms=5000.0
    )


def test_a_triton_over_tls_is_native_with_its_files() -> None:
    tls = {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "c.key", "server_name": "t"}
    backends = {"triton": {**TRITON, "tls": tls}}
    routes = native_front.native_routes(config({"identity": "triton"}, backends=backends))
    assert routes.routes == {"identity": "triton"}
    assert routes.backends["triton"].tls == native_plane.NativeTls("ca.pem", "c.pem", "c.key", "t")
    only_ca = {"triton": {**TRITON, "tls": {"ca_file": "ca.pem"}}}
    routes = native_front.native_routes(config({"identity": "triton"}, backends=only_ca))
    assert routes.backends["triton"].tls == native_plane.NativeTls(ca_file="ca.pem")


@pytest.mark.parametrize("url", ["h2c://127.0.0.1:8080", "127.0.0.1:8080"])
def test_a_cloud_run_route_over_h2c_is_native_and_serverless(url: str) -> None:
    backends = {"run": {"kind": "cloudrun", "url": url, "max_concurrency": 8}}
    routes = native_front.native_routes(config({"identity": "run"}, backends=backends))
    assert routes.routes == {"identity": "run"}
    assert routes.backends["run"] == native_plane.NativeBackend(
        "127.0.0.1:8080", max_concurrency=8, serverless=True
    )


def test_an_https_cloud_run_route_is_native_over_tls_with_a_credential() -> None:
    backends = {"run": {"kind": "cloudrun", "url": "https://svc-abc.a.run.app"}}
    routes = native_front.native_routes(config({"identity": "run"}, backends=backends))
    assert routes.routes == {"identity": "run"}
    assert routes.backends["run"] == native_plane.NativeBackend(
        "svc-abc.a.run.app:443",
        serverless=True,
        tls=native_plane.NativeTls(),  # the system's roots, the service's name
        credential_header="authorization",
    )
    front = native_front.NativeFront(routes)
    try:
        assert front.credentialed == {"run"}
        front.set_credential("run", CallCredential("Authorization", "Bearer t", 2e9))
        # Another header than the plane's would be sent under the plane's name: refused.
        with pytest.raises(ValueError, match="in 'authorization', not 'x-token'") as caught:
            front.set_credential("run", CallCredential("x-token", "secret-value", 2e9))
        assert "secret-value" not in str(caught.value)
    finally:
        front.stop(0)  # its lane's directory


class Tokens:
    """A backend handing out credentials: each call the next of ``results``."""

    def __init__(self, name: str, *results: CallCredential | Exception) -> None:
        self.name = name
        self.results = list(results)
        self.asked = 0

    async def call_credential(self) -> CallCredential:
        self.asked += 1
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, Exception):
            raise result
        return result


GOOD = CallCredential("authorization", "Bearer secret-token", 2e9)


async def test_the_keeper_pushes_each_credential_and_backs_off_after_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pushed: list[tuple[str, CallCredential]] = []
    came = asyncio.Event()

    def push(name: str, credential: CallCredential) -> None:
        pushed.append((name, credential))
        if name == "b":
            came.set()

    failing = Tokens("b", Unavailable("down"), Unavailable("down"), Unavailable("down"), GOOD)
    keeper = native_front.CredentialKeeper(
        {"a": Tokens("a", GOOD), "b": failing},
        push,
        every_s=0.4,
        retry_s=0.01,
    )
    assert not await keeper.first()
    assert pushed == [("a", GOOD)]
    task = asyncio.create_task(keeper.run(ok=False))
    try:
        await asyncio.wait_for(came.wait(), 5)
    finally:
        task.cancel()
    assert failing.asked == 4  # the retries 0.01, 0.02, 0.04 s apart, then it came
    assert "secret-token" not in caplog.text and "Unavailable" in caplog.text
    assert repr(GOOD).count("secret") == 0


def test_the_keeper_needs_backends_that_hand_out_credentials() -> None:
    backends = {"run": {"kind": "cloudrun", "url": "https://svc-abc.a.run.app"}}
    front = native_front.NativeFront(
        native_front.native_routes(config({"identity": "run"}, backends=backends))
    )
    try:
        with pytest.raises(TypeError, match="'run' hands out no call credential"):
            native_front.CredentialKeeper.of(front, {"run": cast(Backend, object())})
        keeper = native_front.CredentialKeeper.of(
            front, {"run": cast(Backend, Tokens("run", GOOD))}
        )
        assert list(keeper.backends) == ["run"]
    finally:
        front.stop(0)


@pytest.mark.parametrize(
    ("backend", "models", "extra"),
    [
        ({**TRITON, "retry": {"max_retries": 1}}, {"m": "triton"}, {}),
        ({**TRITON, "outlier": {}}, {"m": "triton"}, {}),
        ({"kind": "cloudrun", "url": "h2c://no-port"}, {"m": "triton"}, {}),
        (
            TRITON,
            {"m": {"policy": {"kind": "hedge", "backends": ["triton", "other"], "delay_ms": 5}}},
            {},
        ),
        (TRITON, {"m": {"policy": {"kind": "fallback", "order": ["triton", "lam"]}}}, {}),
        (TRITON, {"m": {"policy": {"kind": "weighted", "weights": {"triton": 1, "lam": 1}}}}, {}),
        (TRITON, {"*": {"policy": {"kind": "fallback", "order": ["triton", "other"]}}}, {}),
        (
            {**TRITON, "outlier": {}},
            {"m": {"policy": {"kind": "fallback", "order": ["triton", "other"]}}},
            {},
        ),
        (
            TRITON,
            {"m": {"policy": {"kind": "spillover", "primary": "lam", "overflow": ["triton"]}}},
            {},
        ),
    ],
    ids=[
        "retry",
        "outlier",
        "cloudrun-bad-url",
        "hedge",
        "fallback-to-lane",
        "weighted-lane",
        "wildcard",
        "ejecting-member",
        "lane-primary",
    ],
)
def test_what_the_plane_does_not_implement_stays_with_the_lane(
    backend: dict[str, Any], models: dict[str, Any], extra: dict[str, Any]
) -> None:
    backends = {
        "triton": backend,
        "other": {"kind": "triton", "url": "127.0.0.1:9"},
        "lam": LANE,
        **extra,
    }
    assert native_front.native_routes(config(models, backends=backends)).routes == {}


def test_the_environment_overrides_the_configs_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native_plane.ENV, raising=False)
    assert [native_plane.requested(p) for p in native_plane.DATA_PLANES] == [
        "auto",
        "python",
        "native",
    ]
    monkeypatch.setenv(native_plane.ENV, "0")
    assert {native_plane.requested(p) for p in native_plane.DATA_PLANES} == {"python"}
    monkeypatch.setenv(native_plane.ENV, "1")
    assert {native_plane.requested(p) for p in native_plane.DATA_PLANES} == {"native"}


def test_a_fallback_is_said_once_as_a_warning_only_when_native_was_asked_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(native_plane.ENV, raising=False)
    with caplog.at_level(logging.INFO):
        assert not native_plane.use_native("native", "listen.tls is set", "gateway")
        assert not native_plane.use_native("auto", "not built", "gateway")
        assert not native_plane.use_native("python", None, "gateway")
        assert native_plane.use_native("auto", None, "gateway")
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels == [
        ("WARNING", "gateway data plane: python, not native: listen.tls is set"),
        ("INFO", "gateway data plane: python, not native: not built"),
    ]


@pytest.mark.skipif(not native_plane.available(), reason="infergw._native is not built")
def test_auto_is_native_only_when_the_plane_forwards_a_route_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(native_plane.ENV, raising=False)
    policy = {"policy": {"kind": "hedge", "backends": ["triton", "other"], "delay_ms": 5}}
    other = {"triton": TRITON, "other": {"kind": "triton", "url": "127.0.0.1:9"}}
    served = native_front.NativeFront.of(config({"identity": "triton"}, data_plane="auto"))
    lane_only = config({"m": policy}, backends=other, data_plane="auto")
    forced = config({"m": policy}, backends=other, data_plane="native")
    try:
        assert served is not None and served.routes.routes == {"identity": "triton"}
        assert native_front.NativeFront.of(lane_only) is None  # the lane would only add a hop
        forced_front = native_front.NativeFront.of(forced)
        assert forced_front is not None and forced_front.routes.routes == {}
        forced_front.stop(0)
    finally:
        if served is not None:
            served.stop(0)


@pytest.mark.skipif(not native_plane.available(), reason="infergw._native is not built")
def test_tls_and_api_keys_no_longer_keep_the_python_plane(tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("")
    guarded = config({"m": "triton"}, auth={"api_keys_file": str(keys)})
    assert native_front.why_not(guarded) is None
    front = native_front.NativeFront.of(guarded.replace(data_plane="native"))
    assert front is not None
    front.stop(0)


def test_weighted_and_fallback_among_native_backends_are_native() -> None:
    weighted = {"kind": "weighted", "weights": {"other": 1, "triton": 3, "lam": 0}}
    fallback = {"kind": "fallback", "order": ["other", "triton"]}
    models = {"w": {"policy": weighted}, "f": {"policy": fallback}}
    routes = native_front.native_routes(config(models, backends=BACKENDS))
    # A weight of 0 receives nothing, so a lane backend there does not matter.
    assert routes.routes == {
        "w": native_plane.NativePolicy("weighted", ("other", "triton"), (1, 3)),
        "f": native_plane.NativePolicy("fallback", ("other", "triton")),
    }
    assert set(routes.backends) == {"other", "triton"}  # "lam" is the lane's
    assert routes.routes["w"].to_json() == {
        "kind": "weighted",
        "weights": [["other", 1], ["triton", 3]],
    }


def spillover(*overflow: str, **route: Any) -> dict[str, Any]:
    policy = {"kind": "spillover", "primary": "triton", "overflow": list(overflow)}
    return {"m": {"policy": {**policy, "max_queue_wait_ms": 5}, **route}}


def test_spillover_overflows_natively_or_to_the_lane_by_a_pin() -> None:
    routes = native_front.native_routes(config(spillover("other", "lam"), backends=BACKENDS))
    policy = routes.routes["m"]
    assert policy == native_plane.NativePolicy(
        "spillover", ("triton", "other", "lam"), max_queue_wait_ms=5, lane=frozenset({"lam"})
    )
    assert isinstance(policy, native_plane.NativePolicy)
    assert policy.to_json() == {
        "kind": "spillover",
        "primary": "triton",
        "overflow": [{"native": "other"}, {"lane": "lam"}],
        "max_queue_wait_ms": 5,
    }
    assert set(routes.backends) == {"triton", "other"}
    pinnable = config(spillover("lam", backends=["lam"]), backends=BACKENDS)
    assert "m" in native_front.native_routes(pinnable).routes


@pytest.mark.parametrize(
    ("models", "extra"),
    [
        (spillover("lam"), {"allow_backend_pinning": False}),
        (spillover("lam", backends=["other"]), {}),  # the route does not let "lam" be pinned
        (spillover("lam"), {"backends": {**BACKENDS, "lam": {**LANE, "outlier": {}}}}),
    ],
    ids=["pinning-off", "not-pinnable", "lane-member-ejects"],
)
def test_a_spillover_the_lane_cannot_take_pinned_stays_with_the_lane(
    models: dict[str, Any], extra: dict[str, Any]
) -> None:
    extra = {"backends": BACKENDS, **extra}
    assert native_front.native_routes(config(models, **extra)).routes == {}


class FakeFront(native_front.NativeFront):
    def __init__(self, stats: dict[str, Any]) -> None:
        self._stats = stats

    def stats(self) -> dict[str, Any]:
        return self._stats


def test_the_planes_series_are_by_answering_backend_and_decisions_by_reason() -> None:
    histogram = {"counts": [1] + [0] * 18, "sum_s": 0.0001}
    stats = {
        "bounds_s": list(native_front.BUCKETS),
        "models": {
            "m": {
                "backends": {
                    "triton": {0: {"count": 3, "total": histogram}},
                    "none": {8: {"count": 1, "total": histogram}},
                },
                "decisions": {"triton": {"spill": 1, "fallback": 2}, "lam": {"spill": 4}},
            }
        },
    }
    front = FakeFront(stats)
    series = {s.labels: s.requests for s in front.series()}
    assert series == {
        ("m", "triton", "grpc", "OK"): 3,
        ("m", "none", "grpc", "RESOURCE_EXHAUSTED"): 1,
    }
    assert dict(front.decisions()) == {
        ("m", "triton", "spill"): 1,
        ("m", "triton", "fallback"): 2,
        ("m", "lam", "spill"): 4,
    }
    from infergw.gateway.core.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    metrics.record("m", "triton", "spill")
    metrics.sources.append(front)
    page = metrics.render().decode()
    assert 'infergw_route_decisions_total{backend="triton",reason="spill",route="m"} 2.0' in page
    assert 'infergw_route_decisions_total{backend="lam",reason="spill",route="m"} 4.0' in page


@pytest.mark.skipif(not native_plane.available(), reason="infergw._native is not built")
def test_infergw_native_1_forces_the_plane_even_without_a_native_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(native_plane.ENV, "1")
    front = native_front.NativeFront.of(config({"*": "triton"}))  # auto, no named route
    assert front is not None and front.routes.routes == {}
    front.stop(0)

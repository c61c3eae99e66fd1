"""Which routes the native plane forwards itself, and when it may own the gRPC port."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from infergw.gateway import native_front, native_plane
from infergw.gateway.core.config import parse_config

TRITON = {"kind": "triton", "url": "127.0.0.1:8001", "max_concurrency": 4, "max_queue": 2}


def config(models: dict[str, Any], **extra: Any) -> Any:
    backends = extra.pop("backends", {"triton": TRITON})
    return parse_config({"backends": backends, "models": models, **extra})


def test_plain_triton_routes_are_native_and_carry_their_limits() -> None:
    routes = native_front.native_routes(config({"identity": "triton", "*": "triton"}))
    assert routes.routes == {"identity": "triton"}  # "*" stays with the lane
    assert routes.backends["triton"] == native_plane.NativeBackend(
        "127.0.0.1:8001", max_concurrency=4, max_queue=2, queue_timeout_ms=5000.0
    )


@pytest.mark.parametrize(
    ("backend", "models", "extra"),
    [
        ({**TRITON, "retry": {"max_retries": 1}}, {"m": "triton"}, {}),
        ({**TRITON, "outlier": {}}, {"m": "triton"}, {}),
        ({**TRITON, "tls": {"ca_file": "ca.pem"}}, {"m": "triton"}, {}),
        (TRITON, {"m": {"policy": {"kind": "fallback", "order": ["triton", "other"]}}}, {}),
    ],
    ids=["retry", "outlier", "tls", "policy"],
)
def test_what_the_plane_does_not_implement_stays_with_the_lane(
    backend: dict[str, Any], models: dict[str, Any], extra: dict[str, Any]
) -> None:
    backends = {"triton": backend, "other": {"kind": "triton", "url": "127.0.0.1:9"}, **extra}
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
    policy = {"policy": {"kind": "fallback", "order": ["triton", "other"]}}
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


def test_tls_or_api_keys_keep_the_python_plane(tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("")
    guarded = config({"m": "triton"}, auth={"api_keys_file": str(keys)})
    reason = native_front.why_not(guarded)
    assert reason is not None and ("auth" in reason or "not built" in reason)
    assert native_front.NativeFront.of(guarded.replace(data_plane="native")) is None

"""Which routes the native plane forwards itself, and when it may own the gRPC port."""

from __future__ import annotations

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


def test_the_environment_and_the_config_choose_the_plane(monkeypatch: pytest.MonkeyPatch) -> None:
    native = config({"m": "triton"}, data_plane="native")
    python = config({"m": "triton"})
    monkeypatch.delenv("INFERGW_NATIVE", raising=False)
    assert native_front.wanted(native) and not native_front.wanted(python)
    monkeypatch.setenv("INFERGW_NATIVE", "0")
    assert not native_front.wanted(native)
    monkeypatch.setenv("INFERGW_NATIVE", "1")
    assert native_front.wanted(python)


def test_tls_or_api_keys_keep_the_python_plane(tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("")
    guarded = config({"m": "triton"}, auth={"api_keys_file": str(keys)})
    reason = native_front.why_not(guarded)
    assert reason is not None and ("auth" in reason or "not built" in reason)
    assert native_front.NativeFront.of(guarded.replace(data_plane="native")) is None

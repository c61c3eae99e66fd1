"""Which plane serves the sidecar's gRPC port, and the plane's counters under the Python
sidecar's metric names (no servers started)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from infergw.gateway import native_plane
from infergw.gateway.cli import build_parser
from infergw.gateway.core.config import TlsConfig
from infergw.gateway.core.metrics import BUCKETS
from infergw.gateway.sidecar import native
from infergw.gateway.sidecar.app import SidecarConfig
from infergw.gateway.sidecar.metrics import SidecarMetrics

UPSTREAM = "127.0.0.1:9001"
needs_native = pytest.mark.skipif(
    not native_plane.available(), reason="infergw._native is not built (or INFERGW_NATIVE=0)"
)


def test_a_data_plane_outside_the_choices_is_refused() -> None:
    with pytest.raises(ValueError, match="data_plane"):
        SidecarConfig(UPSTREAM, data_plane="rust")  # type: ignore[arg-type]


@needs_native
def test_tls_keeps_the_python_proxy_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    tls = TlsConfig(cert_file="cert.pem", key_file="key.pem")
    config = SidecarConfig(UPSTREAM, tls=tls, data_plane="native")
    with caplog.at_level(logging.WARNING):
        assert native.NativeGrpc.of(config) is None
    assert "terminates no TLS" in caplog.text
    assert native.NativeGrpc.of(SidecarConfig(UPSTREAM, data_plane="native")) is not None


def test_the_cli_flag() -> None:
    parser = build_parser()
    assert parser.parse_args(["sidecar", "--upstream", UPSTREAM]).data_plane == "auto"
    args = parser.parse_args(["sidecar", "--upstream", UPSTREAM, "--data-plane", "native"])
    assert args.data_plane == "native"


def test_the_planes_counters_show_under_the_sidecars_names() -> None:
    counts = [0] * (len(BUCKETS) + 1)
    counts[3] = 2  # two calls of <= 1 ms
    stats: dict[str, Any] = {
        "methods": {"/inference.GRPCInferenceService/ModelInfer": {0: 2, 14: 1}},
        "inference": [
            {
                "model": "identity",
                "protocol": "grpc",
                "status": 0,
                "requests": 2,
                "phases": {"total": {"counts": counts, "sum_s": 0.0015}},
            }
        ],
    }
    m = SidecarMetrics()
    m.attach(lambda: stats)
    text = m.render().decode()
    infer = 'method="/inference.GRPCInferenceService/ModelInfer"'
    assert f'infergw_sidecar_rpcs_total{{{infer},status="OK"}} 2.0' in text
    assert f'infergw_sidecar_rpcs_total{{{infer},status="UNAVAILABLE"}} 1.0' in text
    labels = 'backend="upstream",model="identity",protocol="grpc",status="OK"'
    assert f"infergw_requests_total{{{labels}}} 2.0" in text
    bucket = 'le="0.001",model="identity",phase="total",protocol="grpc",status="OK"'
    assert f'infergw_phase_duration_seconds_bucket{{backend="upstream",{bucket}}} 2.0' in text
    assert text.count("# HELP infergw_phase_duration_seconds ") == 1  # one family, merged

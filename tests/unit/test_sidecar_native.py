"""Which plane serves the sidecar's gRPC port, and the plane's counters under the Python
sidecar's metric names (no servers started)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from infergw.gateway import native_plane
from infergw.gateway.cli import build_parser
from infergw.gateway.core.metrics import BUCKETS
from infergw.gateway.sidecar import native
from infergw.gateway.sidecar.app import SidecarConfig
from infergw.gateway.sidecar.metrics import SidecarMetrics, http_status_label
from infergw.gateway.tls import ServerTls
from infergw.vocab.errors import InvalidArgument
from tests.certs import CertificateAuthority

UPSTREAM = "127.0.0.1:9001"
needs_native = pytest.mark.skipif(
    not native_plane.available(), reason="infergw._native is not built (or INFERGW_NATIVE=0)"
)


def test_a_data_plane_outside_the_choices_is_refused() -> None:
    with pytest.raises(ValueError, match="data_plane"):
        SidecarConfig(UPSTREAM, data_plane="rust")  # type: ignore[arg-type]


@needs_native
def test_tls_is_native_and_certificates_it_cannot_use_are_a_clear_error(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "ca")
    issued = ca.issue("server")
    tls = ServerTls(issued.cert_file, issued.key_file)
    config = SidecarConfig(UPSTREAM, data_plane="native")
    assert native.wanted(config)
    grpc = native.NativeGrpc(config, tls)
    assert grpc.plane.config.tls and len(grpc.followers) == 1
    unusable = mock.Mock(spec=ServerTls)
    unusable.current.return_value = dataclasses.replace(tls.current(), chain=b"")
    with pytest.raises(InvalidArgument, match="certificate chain: no certificate in PEM"):
        native.NativeGrpc(config, unusable)


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


def test_the_rest_planes_http_statuses_show_as_the_python_proxys_labels() -> None:
    counts = [0] * (len(BUCKETS) + 1)
    counts[3] = 1
    rest: dict[str, Any] = {
        "methods": {"HTTP POST": {200: 3, 400: 1, 413: 1, 499: 1, 502: 1, 418: 1}},
        "inference": [
            {
                "model": "identity",
                "protocol": "rest",
                "status": 200,
                "requests": 3,
                "phases": {"backend": {"counts": counts, "sum_s": 0.0005}},
            }
        ],
    }
    grpc: dict[str, Any] = {"methods": {"/inference.GRPCInferenceService/ServerLive": {0: 4}}}
    m = SidecarMetrics()
    m.attach(lambda: grpc)
    m.attach(lambda: rest, label=http_status_label)
    text = m.render().decode()
    for status, n in [
        ("OK", 3),
        ("INVALID_ARGUMENT", 1),
        ("RESOURCE_EXHAUSTED", 1),
        ("CANCELLED", 1),  # the plane's 499: the client went away
        ("UNAVAILABLE", 1),  # 502: the upstream dropped the connection
        ("HTTP_418", 1),
    ]:
        assert f'infergw_sidecar_rpcs_total{{method="HTTP POST",status="{status}"}} {n}.0' in text
    live = 'method="/inference.GRPCInferenceService/ServerLive",status="OK"'
    assert f"infergw_sidecar_rpcs_total{{{live}}} 4.0" in text  # both planes, one family
    labels = 'backend="upstream",model="identity",protocol="rest",status="OK"'
    assert f"infergw_requests_total{{{labels}}} 3.0" in text

"""An ``https`` Cloud Run service that requires authentication, on both data planes: the
Cloud Run stand-in over TLS (a test CA, trusted through ``SSL_CERT_FILE`` /
``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``) checking Google ID tokens as IAM does, and the token
stand-in behind google-auth's real service-account flow (``GOOGLE_APPLICATION_CREDENTIALS``).
On the native plane the route is forwarded by the plane with the token Python keeps fresh
(``CredentialKeeper``); the token never shows in logs, metrics or answers."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from infergw.backends.cloudrun import CloudRunBackend
from infergw.gateway.core.backend import CallCredential
from infergw.gateway.core.config import parse_config
from infergw.gateway.lifecycle import ThreadedService
from infergw.proto import grpc_service_pb2 as pb
from infergw.wire.server_timing import parse_server_timing
from tests.certs import CertificateAuthority
from tests.integration.conftest import GatewayThread, model_infer

pytest.importorskip("google.auth")
pytestmark = pytest.mark.integration

from infergw.deploy.local.cloudrun_standin import CloudRunStandIn  # noqa: E402
from infergw.deploy.local.google_tokens import GoogleTokenStandIn  # noqa: E402

AUDIENCE = "https://infergw-abc123-uc.a.run.app"  # the service's URL, as its tokens name it


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleTokenStandIn]:
    run = ThreadedService(GoogleTokenStandIn())
    try:
        yield run.service
    finally:
        run.close()


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory, google: GoogleTokenStandIn) -> Iterator[Any]:
    """The test CA trusted as the system's roots, and a service-account key file in the
    credential chain's place, for this module."""
    directory = tmp_path_factory.mktemp("cloudrun-https")
    ca = CertificateAuthority(directory, "ca")
    key_file = directory / "service-account.json"
    key_file.write_text(json.dumps(google.service_account()))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SSL_CERT_FILE", ca.cert_file)  # rustls-native-certs (the plane)
        env.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", ca.cert_file)  # grpcio
        env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        yield ca


@pytest.fixture(scope="module")
def service(google: GoogleTokenStandIn, trust: CertificateAuthority) -> Iterator[CloudRunStandIn]:
    cert = trust.issue("run")
    standin = CloudRunStandIn(
        ("identity",),
        concurrency=4,
        max_instances=1,
        tls=(cert.cert_file, cert.key_file),
        authenticate=google.verifier(AUDIENCE),
    )
    run = ThreadedService(standin)
    try:
        yield run.service
    finally:
        run.close()


@pytest.fixture(scope="module", params=["native", "python"])
def gateway(request: pytest.FixtureRequest, service: CloudRunStandIn) -> Iterator[GatewayThread]:
    config = parse_config(
        {
            "listen": {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": 0},
            "backends": {
                "run": {
                    "kind": "cloudrun",
                    "url": f"https://127.0.0.1:{service.port}",
                    "audience": AUDIENCE,
                }
            },
            "models": {"identity": "run"},
            "data_plane": request.param,
        }
    )
    gw = GatewayThread(config)
    try:
        yield gw
    finally:
        gw.close()


def infer(
    gw: GatewayThread, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[pb.ModelInferResponse, grpc.Call]:
    values = np.arange(4, dtype=np.float32).reshape(1, 4)
    request = pb.ModelInferRequest(model_name="identity")
    request.inputs.add(name="input", datatype="FP32", shape=list(values.shape))
    request.raw_input_contents.append(values.tobytes())
    with grpc.insecure_channel(gw.grpc) as channel:
        response, call = model_infer(channel).with_call(request, timeout=60, metadata=metadata)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(values.shape)
    np.testing.assert_array_equal(got, values)
    return response, call


def token_of(gw: GatewayThread) -> str:
    backend = gw.gateway.router.unwrapped["run"]
    assert isinstance(backend, CloudRunBackend)
    credential: CallCredential = gw.run(backend.call_credential())
    return credential.value.removeprefix("Bearer ")


def test_an_authenticated_https_service_is_served_with_the_gateways_id_token(
    gateway: GatewayThread,
    service: CloudRunStandIn,
    google: GoogleTokenStandIn,
    trust: CertificateAuthority,
) -> None:
    front = gateway.gateway._native
    if front is not None:  # the native plane forwards it, over TLS, with the token
        assert front.routes.routes == {"identity": "run"}
        assert front.credentialed == {"run"}
    _, call = infer(gateway)
    entries = {
        e.name
        for key, value in call.trailing_metadata()
        if key == "server-timing"
        for e in parse_server_timing(str(value))
    }
    assert {"compute", "backend", "total"} <= entries  # the container's phases too
    issued = google.issued
    assert issued >= 1  # from the token endpoint, through google-auth
    # A client's own authorization never reaches the service: the gateway's replaces it.
    infer(gateway, (("authorization", "Bearer forged"),))
    assert google.issued == issued  # the token is reused until near its expiry
    roots = Path(trust.cert_file).read_bytes()
    with (
        grpc.secure_channel(service.endpoint, grpc.ssl_channel_credentials(roots)) as channel,
        pytest.raises(grpc.RpcError) as refused,  # the service does check
    ):
        model_infer(channel)(pb.ModelInferRequest(model_name="identity"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_an_expired_token_on_the_plane_is_unavailable_and_never_shown(
    gateway: GatewayThread, caplog: pytest.LogCaptureFixture
) -> None:
    front = gateway.gateway._native
    if front is None:
        pytest.skip("the plane's credential: the Python backend waits for a fresh token")
    caplog.set_level(logging.DEBUG)
    token = token_of(gateway)
    front.set_credential("run", CallCredential("authorization", f"Bearer {token}", time.time() - 1))
    with pytest.raises(grpc.RpcError) as failed:
        infer(gateway)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "backend 'run' is unavailable" in str(failed.value.details())
    assert "expired" in str(failed.value.details())
    front.set_credential(
        "run", CallCredential("authorization", f"Bearer {token}", time.time() + 600)
    )
    _, call = infer(gateway)
    with urllib.request.urlopen(f"http://{gateway.metrics}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    answered = repr(call.trailing_metadata()) + repr(call.initial_metadata())
    for where, text in (("logs", caplog.text), ("metrics", metrics), ("answers", answered)):
        assert token not in text and token[-16:] not in text, where

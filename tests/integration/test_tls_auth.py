"""TLS, mutual TLS, certificate rotation and API keys, with unmodified tritonclient.

A throwaway CA is made per module (``tests.certs``); the gateway runs in front of the
real tritonserver with ``listen.tls`` and ``auth`` set, and the clients are tritonclient
grpc/http as a user would configure them (``ssl=True``, root certificates, ``headers=``).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tritonclient.utils import InferenceServerException

from infergw.deploy.triton.launcher import TritonEndpoints, TritonServer
from infergw.gateway import native_plane
from infergw.gateway.core.config import AuthConfig, TlsConfig, parse_config
from infergw.gateway.sidecar.app import SidecarConfig
from infergw.wire import grpc_channel
from tests.certs import CertificateAuthority, Issued
from tests.integration.conftest import GatewayThread, ServiceThread, free_ports_config

KEY, OTHER_KEY, NEW_KEY = "k-3f9a1c0e5d7b", "k-other-8812aa", "k-new-77c1d0"
BEARER = {"authorization": f"Bearer {KEY}"}  # pass copies: tritonclient.http adds to it


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("pki")
    ca, clients_ca, other_ca = (
        CertificateAuthority(directory, n) for n in ("ca", "clients-ca", "other-ca")
    )
    return {
        "dir": directory,
        "ca": ca,
        "server": ca.issue("server"),
        "clients_ca": clients_ca,
        "client": clients_ca.issue("client", client=True),
        "stranger": other_ca.issue("stranger", client=True),
        "other_ca": other_ca,
    }


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text(f"# the team's keys\n{KEY}\n\n{OTHER_KEY}\n")
    return path


@pytest.fixture(scope="module")
def secured(
    triton: TritonEndpoints, pki: dict[str, Any], keys_file: Path
) -> Iterator[GatewayThread]:
    """TLS + API keys on every port; health open, metrics closed."""
    server: Issued = pki["server"]
    config = free_ports_config(triton)
    tls = TlsConfig(cert_file=server.cert_file, key_file=server.key_file)
    config = config.replace(
        listen=config.listen.replace(tls=tls),
        auth=AuthConfig(api_keys_file=str(keys_file), open_metrics=False),
    )
    gw = GatewayThread(config)
    try:
        yield gw
    finally:
        gw.close()


def _inputs_grpc(data: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("input", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def _inputs_http(data: np.ndarray) -> list[httpclient.InferInput]:
    tensor = httpclient.InferInput("input", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data, binary_data=True)
    return [tensor]


def _https(pki: dict[str, Any], cert: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki["ca"].cert_file)
    if cert is not None:
        context.load_cert_chain(cert.cert_file, cert.key_file)
    return context


def _get(
    url: str, context: ssl.SSLContext, headers: dict[str, str] | None = None
) -> tuple[int, bytes, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            return reply.status, reply.read(), reply.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


DATA = np.arange(16, dtype=np.float32).reshape(1, 16)


def test_grpc_over_tls_with_a_key_matches_triton_direct(
    secured: GatewayThread, triton: TritonEndpoints, pki: dict[str, Any]
) -> None:
    client = grpcclient.InferenceServerClient(
        secured.grpc, ssl=True, root_certificates=pki["ca"].cert_file
    )
    direct = grpcclient.InferenceServerClient(triton.grpc)
    try:
        got = client.infer("identity", _inputs_grpc(DATA), headers=dict(BEARER)).as_numpy("output")
        expected = direct.infer("identity", _inputs_grpc(DATA)).as_numpy("output")
        np.testing.assert_array_equal(got, expected)
        # x-api-key works as well as a bearer token; health needs no key
        other = {"x-api-key": OTHER_KEY}
        assert (
            client.infer("identity", _inputs_grpc(DATA), headers=other).as_numpy("output")
            is not None
        )
        assert client.is_server_live() and client.is_server_ready()
    finally:
        client.close()
        direct.close()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong-key"},
        {"authorization": f"Basic {KEY}"},  # the right key under another scheme
        {"x-api-key": KEY[:-1]},
    ],
    ids=["missing", "wrong", "not-bearer", "prefix"],
)
def test_grpc_without_a_valid_key_is_unauthenticated(
    secured: GatewayThread, pki: dict[str, Any], headers: dict[str, str]
) -> None:
    client = grpcclient.InferenceServerClient(
        secured.grpc, ssl=True, root_certificates=pki["ca"].cert_file
    )
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.infer("identity", _inputs_grpc(DATA), headers=headers)
        assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
        assert raised.value.message() == "missing or invalid API key"  # the same every time
        with pytest.raises(InferenceServerException) as raised:
            client.get_model_metadata("identity", headers=headers)
        assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
    finally:
        client.close()


def test_the_native_plane_serves_tls_and_refuses_before_forwarding(
    secured: GatewayThread, triton: TritonEndpoints, pki: dict[str, Any]
) -> None:
    """On the native plane (the default where it is built) the plane terminates TLS and
    checks the key itself: a keyed call is forwarded natively, a keyless one reaches
    neither Triton nor the python lane."""
    front = secured.gateway._native
    if front is None:
        pytest.skip("the Python plane serves the port (INFERGW_NATIVE=0, or not built)")

    def counts() -> tuple[int, int, int]:
        stats = front.stats()
        outcomes = stats["models"]["identity"]["backends"].values()
        native = sum(o["count"] for by_status in outcomes for o in by_status.values())
        lane = sum(stats["python_lane"]["requests"].values())
        model = direct.get_inference_statistics("identity").model_stats[0]
        return native, lane, int(model.inference_count)

    client = grpcclient.InferenceServerClient(
        secured.grpc, ssl=True, root_certificates=pki["ca"].cert_file
    )
    direct = grpcclient.InferenceServerClient(triton.grpc)
    try:
        native, lane, served = counts()
        client.infer("identity", _inputs_grpc(DATA), headers=dict(BEARER))
        assert counts() == (native + 1, lane, served + 1)
        with pytest.raises(InferenceServerException) as raised:
            client.infer("identity", _inputs_grpc(DATA), headers={"x-api-key": "k-wrong"})
        assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
        assert counts() == (native + 1, lane, served + 1)
    finally:
        client.close()
        direct.close()


def test_grpc_health_stays_open_and_plaintext_is_refused(
    secured: GatewayThread, pki: dict[str, Any]
) -> None:
    ca = Path(pki["ca"].cert_file).read_bytes()
    with grpc.secure_channel(secured.grpc, grpc.ssl_channel_credentials(ca)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(secured.grpc) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_rest_over_tls_with_tritonclient_http(
    secured: GatewayThread, triton: TritonEndpoints, pki: dict[str, Any]
) -> None:
    def context_factory() -> ssl.SSLContext:
        return _https(pki)

    client = httpclient.InferenceServerClient(
        secured.http, ssl=True, ssl_context_factory=context_factory
    )
    direct = httpclient.InferenceServerClient(triton.http)
    try:
        got = client.infer("identity", _inputs_http(DATA), headers=dict(BEARER)).as_numpy("output")
        expected = direct.infer("identity", _inputs_http(DATA)).as_numpy("output")
        np.testing.assert_array_equal(got, expected)
        assert client.is_server_ready()  # no key needed
        with pytest.raises(InferenceServerException) as raised:
            client.infer("identity", _inputs_http(DATA), headers={"x-api-key": "nope"})
        assert raised.value.status() == "401"
        assert "missing or invalid API key" in raised.value.message()
    finally:
        client.close()
        direct.close()


def test_rest_refusal_shape_health_open_metrics_closed(
    secured: GatewayThread, pki: dict[str, Any]
) -> None:
    https = _https(pki)
    status, body, headers = _get(f"https://{secured.http}/v2/models/identity", https)
    assert (status, body) == (401, b'{"error": "missing or invalid API key"}')
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert _get(f"https://{secured.http}/v2/models/identity", https, BEARER)[0] == 200
    assert _get(f"https://{secured.http}/v2/health/ready", https)[0] == 200
    assert _get(f"https://{secured.metrics}/metrics", https)[0] == 401  # open_metrics: false
    status, body, _ = _get(f"https://{secured.metrics}/metrics", https, BEARER)
    assert status == 200 and b"infergw_requests_total" in body
    # Keys do not become metric labels or values.
    assert KEY.encode() not in body and b"wrong-key" not in body


def test_keys_never_reach_the_logs_or_spans(
    secured: GatewayThread,
    pki: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    span_exporter: InMemorySpanExporter,
) -> None:
    caplog.set_level(logging.DEBUG)
    https = _https(pki)
    for headers in (BEARER, {"authorization": "Bearer k-guess-1234"}, {"x-api-key": OTHER_KEY}):
        _get(f"https://{secured.http}/v2/models/identity", https, headers)
    client = grpcclient.InferenceServerClient(
        secured.grpc, ssl=True, root_certificates=pki["ca"].cert_file
    )
    try:
        with pytest.raises(InferenceServerException):
            client.infer("identity", _inputs_grpc(DATA), headers={"x-api-key": "k-guess-5678"})
    finally:
        client.close()
    client = grpcclient.InferenceServerClient(
        secured.grpc, ssl=True, root_certificates=pki["ca"].cert_file
    )
    try:
        client.infer("identity", _inputs_grpc(DATA), headers=dict(BEARER))
    finally:
        client.close()
    logged = "\n".join(r.getMessage() + str(r.args) for r in caplog.records)
    spans = span_exporter.get_finished_spans()
    assert spans  # the calls were traced
    traced = "\n".join(f"{s.name} {dict(s.attributes or {})} {s.events}" for s in spans)
    for secret in (KEY, OTHER_KEY, "k-guess-1234", "k-guess-5678"):
        assert secret not in logged and secret not in traced


def _eventually(check: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    """Poll ``check`` until it is true (a reload is seen within ~1 s) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def _replace(path: str, source: str) -> None:
    """Rotate a file as a deployment does: write aside, then rename over."""
    aside = f"{path}.new"
    shutil.copyfile(source, aside)
    os.replace(aside, path)


def test_mutual_tls_and_rotation(
    triton: TritonEndpoints, pki: dict[str, Any], tmp_path: Path
) -> None:
    """Client certificates are required, then the server certificate and the clients' CA
    rotate on disk and new connections use the new ones, without a restart."""
    live = {name: str(tmp_path / name) for name in ("server.pem", "server.key", "clients.pem")}
    shutil.copyfile(pki["server"].cert_file, live["server.pem"])
    shutil.copyfile(pki["server"].key_file, live["server.key"])
    shutil.copyfile(pki["clients_ca"].cert_file, live["clients.pem"])
    config = free_ports_config(triton)
    tls = TlsConfig(
        cert_file=live["server.pem"],
        key_file=live["server.key"],
        client_ca_file=live["clients.pem"],
    )
    gw = GatewayThread(config.replace(listen=config.listen.replace(tls=tls)))
    try:
        url = f"https://{gw.http}/v2/models/identity"
        client, stranger = pki["client"], pki["stranger"]

        def grpc_ok(ca_file: str, cert: Issued | None) -> bool:
            kwargs = (
                {}
                if cert is None
                else {"private_key": cert.key_file, "certificate_chain": cert.cert_file}
            )
            c = grpcclient.InferenceServerClient(
                gw.grpc, ssl=True, root_certificates=ca_file, **kwargs
            )
            try:
                return bool(c.infer("identity", _inputs_grpc(DATA)).as_numpy("output") is not None)
            except InferenceServerException:
                return False
            finally:
                c.close()

        def rest_ok(ca_file: str, cert: Issued | None) -> bool:
            context = ssl.create_default_context(cafile=ca_file)
            if cert is not None:
                context.load_cert_chain(cert.cert_file, cert.key_file)
            try:
                return _get(url, context)[0] == 200
            except (ssl.SSLError, OSError):
                return False

        ca = pki["ca"].cert_file
        assert grpc_ok(ca, client) and rest_ok(ca, client)
        assert not grpc_ok(ca, None) and not rest_ok(ca, None)  # no client certificate
        assert not grpc_ok(ca, stranger) and not rest_ok(ca, stranger)  # another CA's

        # Rotation: a server certificate from another CA; strangers' CA now trusted.
        rotated = pki["other_ca"].issue("server-rotated")
        _replace(live["server.key"], rotated.key_file)
        _replace(live["server.pem"], rotated.cert_file)
        _replace(live["clients.pem"], pki["other_ca"].cert_file)
        new_ca = pki["other_ca"].cert_file
        assert _eventually(lambda: rest_ok(new_ca, stranger)), "REST never used the new files"
        assert _eventually(lambda: grpc_ok(new_ca, stranger)), "gRPC never used the new files"
        assert not rest_ok(ca, client) and not grpc_ok(ca, client)  # the old pair is gone

        # A broken rotation (a key that does not fit) keeps the last good certificate.
        _replace(live["server.key"], pki["client"].key_file)
        time.sleep(1.5)
        assert rest_ok(new_ca, stranger) and grpc_ok(new_ca, stranger)
    finally:
        gw.close()


def test_api_keys_file_rotation(triton: TritonEndpoints, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n")
    config = free_ports_config(triton).replace(auth=AuthConfig(api_keys_file=str(keys)))
    gw = GatewayThread(config)
    try:
        url = f"http://{gw.http}/v2/models/identity"

        def status(key: str) -> int:
            request = urllib.request.Request(url, headers={"x-api-key": key})
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    return int(reply.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert (status(KEY), status(NEW_KEY)) == (200, 401)
        aside = tmp_path / "keys.new"
        aside.write_text(f"{NEW_KEY}\n")
        os.replace(aside, keys)
        assert _eventually(lambda: status(NEW_KEY) == 200)
        assert status(KEY) == 401  # revoked
        assert _get(f"http://{gw.metrics}/metrics", ssl.create_default_context())[0] == 200
    finally:
        gw.close()


def test_a_bad_certificate_file_is_a_clear_config_error(
    triton: TritonEndpoints, tmp_path: Path
) -> None:
    from infergw.gateway.app import Gateway
    from infergw.vocab.errors import InvalidArgument

    missing = TlsConfig(cert_file=str(tmp_path / "nope.pem"), key_file=str(tmp_path / "nope.key"))
    config = free_ports_config(triton)
    thread = ServiceThread(
        Gateway(config.replace(listen=config.listen.replace(tls=missing))), start=False
    )
    try:
        with pytest.raises(InvalidArgument, match=r"listen\.tls: cannot load .*nope\.pem"):
            thread.run(thread.service.start())
    finally:
        thread.close()


# -- TLS toward Triton, and the sidecar ---------------------------------------------------


@pytest.fixture(scope="module")
def tls_triton(pki: dict[str, Any]) -> Iterator[TritonEndpoints]:
    """A second tritonserver whose gRPC port wants TLS and a client certificate."""
    server: Issued = pki["server"]
    args = [
        "--grpc-use-ssl=true",
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={server.cert_file}",
        f"--grpc-server-key={server.key_file}",
        f"--grpc-root-cert={pki['clients_ca'].cert_file}",
    ]
    with TritonServer(models=["identity"], extra_args=args) as triton:
        yield triton.endpoints


@pytest.mark.parametrize("data_plane", ["python", "native"])
def test_gateway_to_triton_over_mutual_tls(
    tls_triton: TritonEndpoints, pki: dict[str, Any], data_plane: str
) -> None:
    if data_plane == "native" and not native_plane.available():
        pytest.skip("the native plane is not built or INFERGW_NATIVE=0")
    client: Issued = pki["client"]
    tls = {
        "ca_file": pki["ca"].cert_file,
        "cert_file": client.cert_file,
        "key_file": client.key_file,
    }
    config = parse_config(
        {
            "listen": {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": 0},
            "backends": {
                "secure": {"kind": "triton", "url": tls_triton.grpc, "tls": tls},
                "plain": {"kind": "triton", "url": tls_triton.grpc},
            },
            "models": {"identity": "secure", "*": "plain"},
            "data_plane": data_plane,
        }
    )
    gw = GatewayThread(config)
    c = grpcclient.InferenceServerClient(gw.grpc)
    try:
        native = gw.gateway._native
        assert (native is not None and "identity" in native.routes.routes) == (
            data_plane == "native"
        )
        got = c.infer("identity", _inputs_grpc(DATA)).as_numpy("output")
        np.testing.assert_array_equal(got, DATA)
        with pytest.raises(InferenceServerException) as raised:  # plaintext to a TLS port
            c.infer("identity", _inputs_grpc(DATA), headers={"x-infergw-backend": "plain"})
        assert raised.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        c.close()
        gw.close()


def test_triton_tls_options_are_validated(pki: dict[str, Any]) -> None:
    from infergw.backends.triton import TritonBackend
    from infergw.vocab.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="cert_file and key_file go together"):
        TritonBackend.from_config(
            "t", {"url": "h:1", "tls": {"cert_file": pki["client"].cert_file}}
        )
    with pytest.raises(
        InvalidArgument, match=r"backend 't': tls\.ca_flie: unknown key; did you mean 'ca_file'"
    ):
        TritonBackend.from_config("t", {"url": "h:1", "tls": {"ca_flie": "x"}})
    with pytest.raises(InvalidArgument, match="cannot read"):
        TritonBackend.from_config("t", {"url": "h:1", "tls": {"ca_file": "/nonexistent/ca.pem"}})


def test_sidecar_serves_tls(triton: TritonEndpoints, pki: dict[str, Any]) -> None:
    from infergw.gateway.sidecar.app import Sidecar

    server: Issued = pki["server"]
    config = SidecarConfig(
        upstream=triton.grpc,
        http_upstream=triton.http,
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        tls=TlsConfig(cert_file=server.cert_file, key_file=server.key_file),
    )
    sidecar = ServiceThread(Sidecar(config))
    client = grpcclient.InferenceServerClient(
        sidecar.grpc, ssl=True, root_certificates=pki["ca"].cert_file
    )
    try:
        # auto: the native plane wherever it is built (it terminates the TLS itself).
        native = native_plane.available()
        assert sidecar.service.data_plane == ("native" if native else "python")
        np.testing.assert_array_equal(
            client.infer("identity", _inputs_grpc(DATA)).as_numpy("output"), DATA
        )
        if native:  # the plane forwarded it
            assert sidecar.service.plane_stats()["methods"]
        status, _, _ = _get(f"https://{sidecar.http}/v2/health/ready", _https(pki))
        assert status == 200
        if native:  # the REST port is a plane too, and says HTTP/1.1 in the handshake
            assert sidecar.service.rest_plane_stats()["methods"]["HTTP GET"] == {200: 1}
            https = _https(pki)
            https.set_alpn_protocols(["h2", "http/1.1"])
            host, port = sidecar.http.rsplit(":", 1)
            with (
                socket.create_connection((host, int(port)), timeout=5) as raw,
                https.wrap_socket(raw, server_hostname=host) as tls,
            ):
                assert tls.selected_alpn_protocol() == "http/1.1"
    finally:
        client.close()
        sidecar.close()


def test_channel_tls_credentials_read_the_files(pki: dict[str, Any]) -> None:
    assert isinstance(grpc_channel.tls_credentials(pki["ca"].cert_file), grpc.ChannelCredentials)
    with pytest.raises(FileNotFoundError):
        grpc_channel.tls_credentials("/nonexistent/ca.pem")


def test_the_sdk_reaches_a_secured_gateway(secured: GatewayThread, pki: dict[str, Any]) -> None:
    from infergw.clients import GrpcClient, HttpClient

    credentials = grpc_channel.tls_credentials(pki["ca"].cert_file)
    with GrpcClient(
        secured.grpc, credentials=credentials, headers=dict(BEARER), timeout=30
    ) as client:
        np.testing.assert_array_equal(
            client.infer("identity", {"input": DATA}).outputs["output"], DATA
        )
    https = _https(pki)
    url = f"https://{secured.http}"
    with HttpClient(
        url, binary=True, ssl_context=https, headers=dict(BEARER), timeout=30
    ) as client:
        np.testing.assert_array_equal(
            client.infer("identity", {"input": DATA}).outputs["output"], DATA
        )

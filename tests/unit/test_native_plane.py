"""The Python driver of the native plane, without sockets: its config JSON and switches."""

from __future__ import annotations

import errno
import importlib
import json
import os
import socket
from types import ModuleType

import pytest

from infergw.gateway import native_plane
from infergw.gateway.native_plane import NativeBackend, NativeConfig, NativePlane, NativeTls


def test_config_json_is_what_the_plane_reads() -> None:
    config = NativeConfig(
        python_lane="unix:/run/infergw/lane.sock",
        backends={
            "triton": NativeBackend("127.0.0.1:8001", max_concurrency=4, timeout_ms=None),
            "run": NativeBackend(
                "127.0.0.1:8080",
                serverless=True,
                tls=NativeTls("ca.pem"),
                credential_header="authorization",
            ),
        },
        routes={"identity": "triton"},
    )
    defaults = {"max_queue": 256, "queue_timeout_ms": 5000.0}
    assert json.loads(config.to_json()) == {
        "listen": "127.0.0.1:0",
        "python_lane": "unix:/run/infergw/lane.sock",
        "backends": {
            "triton": {
                "address": "127.0.0.1:8001",
                "max_concurrency": 4,
                **defaults,
                "timeout_ms": None,
                "serverless": False,
                "tls": None,
                "credential_header": None,
            },
            "run": {
                "address": "127.0.0.1:8080",
                "max_concurrency": 64,
                **defaults,
                "timeout_ms": 30000.0,
                "serverless": True,
                "tls": {
                    "ca_file": "ca.pem",
                    "cert_file": None,
                    "key_file": None,
                    "server_name": None,
                },
                "credential_header": "authorization",
            },
        },
        "routes": {"identity": "triton"},
        "worker_threads": 1,
        "max_message_bytes": 64 * 1024 * 1024,
        "trace_all": False,
        "max_connections": None,
        "idle_timeout_ms": None,
        "tls": False,
        "api_keys": False,
    }


def test_a_credential_is_set_only_for_a_backend_that_takes_one_and_never_echoed() -> None:
    pytest.importorskip("infergw._native")
    backends = {
        "run": NativeBackend("127.0.0.1:1", credential_header="authorization"),
        "triton": NativeBackend("127.0.0.1:2"),
    }
    plane = NativePlane(NativeConfig(backends=backends))  # never started: no socket
    plane.set_credential("run", "Bearer token", 2e9)
    plane.set_credential("run", None)
    with pytest.raises(ValueError, match="'triton' has no credential_header"):
        plane.set_credential("triton", "Bearer token", 2e9)
    with pytest.raises(ValueError) as bad:
        plane.set_credential("run", "Bearer top\nsecret", 2e9)
    assert "secret" not in str(bad.value)
    bogus = {"run": NativeBackend("127.0.0.1:1", credential_header="not a header")}
    with pytest.raises(ValueError, match="credential_header"):
        NativePlane(NativeConfig(backends=bogus))


def test_tls_does_not_start_without_certificates_and_never_quotes_them() -> None:
    pytest.importorskip("infergw._native")
    plane = NativePlane(NativeConfig(listen="127.0.0.1:0", tls=True))
    with pytest.raises(OSError, match="no certificate was set"):
        plane.start()  # never plaintext on a port meant for TLS
    secret = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n"
    chain = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    for args in ((chain, b"not a key"), (b"", secret), (chain, secret), (chain, secret, b"x")):
        with pytest.raises(ValueError) as bad:
            plane.set_server_tls(*args)
        assert "c2VjcmV0" not in str(bad.value) and "AAAA" not in str(bad.value)
    with pytest.raises(OSError, match="no certificate was set"):
        plane.start()  # a refused set is no set


def test_api_key_digests_are_32_bytes() -> None:
    pytest.importorskip("infergw._native")
    plane = NativePlane(NativeConfig(api_keys=True))
    plane.set_api_keys([bytes(32), b"\x01" * 32])
    plane.set_api_keys([])
    with pytest.raises(ValueError, match="32 bytes"):
        plane.set_api_keys([b"k-plain-key"])


def test_the_plane_serves_the_socket_python_bound_and_keeps_no_descriptor_after() -> None:
    pytest.importorskip("infergw._native")
    before = len(os.listdir("/proc/self/fd"))
    plane = NativePlane(NativeConfig(listen="127.0.0.1:0"))
    port = plane.start()
    assert plane.start() == port  # running: the same port, nothing bound again
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # served
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}") as taken:
        NativePlane(NativeConfig(listen=f"127.0.0.1:{port}")).start()
    assert taken.value.errno == errno.EADDRINUSE
    plane.stop(0)
    with socket.create_server(("127.0.0.1", port)):  # the plane closed its copy
        pass
    assert len(os.listdir("/proc/self/fd")) == before


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native_plane.ENV, "0")
    assert not native_plane.available()
    with pytest.raises(native_plane.NativeUnavailable, match="INFERGW_NATIVE=0"):
        NativePlane(NativeConfig())


def test_not_built_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native_plane.ENV, raising=False)
    real = importlib.import_module

    def no_native(name: str, package: str | None = None) -> ModuleType:
        if name == native_plane.MODULE:
            raise ImportError(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_native)
    assert not native_plane.available()
    with pytest.raises(native_plane.NativeUnavailable, match="not built"):
        NativePlane(NativeConfig())


def test_status_names_are_grpcs() -> None:
    import grpc

    for code in grpc.StatusCode:
        assert native_plane.status_name(code.value[0]) == code.name
    assert native_plane.status_name(99) == "UNKNOWN"

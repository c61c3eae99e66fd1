"""REST: a client's mistake is a 400 in OIP's shape, never a 500 (issue 9 items 1, 2, 12).

Through the real gateway (``gateway`` fixture: ``Gateway`` from a config, in front of a
real Triton on 127.0.0.1, free ports), since the 500s only showed on routes whose backend
re-encodes the request (OIP gRPC): values JSON can hold that protobuf or gRPC metadata
cannot. Each case failed with a 500 before the fix.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.integration.conftest import GatewayThread

pytestmark = pytest.mark.integration

INFER = "/v2/models/identity/infer"
TENSOR = b'{"name":"input","datatype":"FP32","shape":[1,2],"data":[1.0,2.0]}'
GOOD = b'{"inputs":[' + TENSOR + b"]}"
VALID_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def conn(gateway: GatewayThread) -> Iterator[http.client.HTTPConnection]:
    host, port = gateway.http.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        yield connection
    finally:
        connection.close()


def post(
    conn: http.client.HTTPConnection,
    body: bytes,
    headers: dict[str, str] | None = None,
    path: str = INFER,
) -> tuple[int, dict[str, str], bytes]:
    conn.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


@pytest.mark.parametrize(
    ("body", "headers", "field"),
    [
        (b'{"parameters":{"foo":18446744073709551615},"inputs":[' + TENSOR + b"]}", {}, "'foo'"),
        (b'{"parameters":{"foo":9223372036854775808},"inputs":[' + TENSOR + b"]}", {}, "'foo'"),
        (b'{"id":"\\ud800","inputs":[' + TENSOR + b"]}", {}, "'id'"),
        (b'{"parameters":{"x":"\\ud800"},"inputs":[' + TENSOR + b"]}", {}, "'parameters.x'"),
        (
            b'{"parameters":{"timeout":9223372036854775808},"inputs":[' + TENSOR + b"]}",
            {},
            "'timeout'",
        ),
        (GOOD, {"traceparent": "00-\u00e9\u00e9-01"}, "'traceparent'"),
    ],
    ids=[
        "uint64-parameter",
        "int64-max+1",
        "surrogate-id",
        "surrogate-parameter",
        "timeout",
        "traceparent",
    ],
)
def test_what_the_backend_wire_cannot_carry_is_a_400_naming_the_field(
    conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str], field: str
) -> None:
    if "traceparent" in headers:  # http.client sends latin-1; send the UTF-8 bytes as clients do
        headers = {"traceparent": headers["traceparent"].encode().decode("latin-1")}
    status, response_headers, payload = post(conn, body, headers)
    assert status == 400, payload
    assert field in json.loads(payload)["error"]
    assert "Server-Timing" in response_headers
    assert post(conn, GOOD)[0] == 200  # and the connection keeps serving


def test_a_false_content_encoding_is_a_400_and_the_connection_stays_usable(
    conn: http.client.HTTPConnection,
) -> None:
    status, headers, payload = post(conn, GOOD, {"Content-Encoding": "gzip"})
    assert status == 400
    assert json.loads(payload) == {"error": "request body is not valid gzip data"}
    assert headers.get("Connection", "").lower() != "close"
    sock = conn.sock
    status, _, payload = post(conn, GOOD)
    assert status == 200, payload
    assert conn.sock is sock  # the same keep-alive connection, not a new one


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_real_compressed_bodies_still_work(conn: http.client.HTTPConnection, encoding: str) -> None:
    import gzip
    import zlib

    data = gzip.compress(GOOD) if encoding == "gzip" else zlib.compress(GOOD)
    status, _, payload = post(conn, data, {"Content-Encoding": encoding})
    assert status == 200, payload
    assert json.loads(payload)["outputs"][0]["data"] == [1.0, 2.0]


def _raw(gateway: GatewayThread, request: bytes) -> bytes:
    host, port = gateway.http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):  # the server closes after a parse error
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "header",
    [b"Content-Type: application/json\r\n", b"Bad Header: x\r\n", b"X-Key: secret-value\x01\r\n"],
    ids=["two-content-types", "bad-token", "control-char"],
)
def test_a_malformed_header_is_a_400_logged_as_one_warning_line(
    gateway: GatewayThread, caplog: pytest.LogCaptureFixture, header: bytes
) -> None:
    request = (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + header
        + f"Content-Length: {len(GOOD)}\r\n\r\n".encode()
        + GOOD
    )
    with caplog.at_level(logging.DEBUG, logger="aiohttp"):
        reply = _raw(gateway, request)
    assert reply.split(b"\r\n", 1)[0].endswith(b"400 Bad Request")
    head, _, body = reply.partition(b"\r\n\r\n")  # in OIP's error shape, not aiohttp's text
    assert b"content-type: application/json" in head.lower()
    assert isinstance(json.loads(body)["error"], str)
    records = [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert [(r.levelno, r.exc_info) for r in records] == [(logging.WARNING, None)]
    assert "malformed HTTP request" in records[0].getMessage()
    assert "secret-value" not in caplog.text


def test_an_invalid_traceparent_is_ignored(
    conn: http.client.HTTPConnection, span_exporter: InMemorySpanExporter
) -> None:
    """Not a 429 or an error: W3C says to ignore it (and start a new trace). That it is not
    forwarded to the backend is checked in tests/unit/test_tracing.py."""
    for value in ("a" * 8000, "00-zz", VALID_TRACEPARENT + "-extra"):
        status, _, payload = post(conn, GOOD, {"traceparent": value, "tracestate": "v=1"})
        assert status == 200, payload
    status, _, _ = post(conn, GOOD, {"traceparent": VALID_TRACEPARENT})
    assert status == 200
    servers = [s for s in span_exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(servers) == 4
    continued = [s for s in servers if s.parent is not None]
    assert [s.context.trace_id for s in continued] == [int(VALID_TRACEPARENT.split("-")[1], 16)]


def test_unknown_models_do_not_become_span_names(
    conn: http.client.HTTPConnection, span_exporter: InMemorySpanExporter
) -> None:
    names = ["identity", "no-such-model-1", "no-such-model-2"]
    for model in names:
        post(conn, GOOD, path=f"/v2/models/{model}/infer")
    servers = [s for s in span_exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert sorted((s.name, s.attributes["infergw.model"]) for s in servers) == [
        ("infer", "no-such-model-1"),
        ("infer", "no-such-model-2"),
        ("infer identity", "identity"),
    ]


@pytest.mark.parametrize("value", [b"\xed\xb8\xbb", b"something-else"], ids=["not-utf8", "unknown"])
def test_an_unsupported_expect_header_is_a_417_in_oip_shape(
    gateway: GatewayThread, value: bytes
) -> None:
    """aiohttp's own answer echoed the value, and a non-UTF-8 one made it a 500."""
    request = (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + b"Expect: "
        + value
        + f"\r\nContent-Length: {len(GOOD)}\r\n\r\n".encode()
        + GOOD
    )
    head, _, body = _raw(gateway, request).partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0].endswith(b"417 Expectation Failed"), head
    assert json.loads(body) == {
        "error": "unsupported Expect header: only 100-continue is supported"
    }

"""The sidecar's REST half against an upstream that misbehaves on purpose, on both planes.

``test_sidecar.py`` proves the REST half equal to direct in front of the real Triton
(tritonclient http, binary and JSON). Here a small HTTP/1.1 upstream in a thread of this
process (raw sockets, so that it can break off exactly where a real server does) checks
what the sidecar itself must get right: headers minus hop-by-hop ones, chunked bodies both
ways, a chunked body over the limit, an upstream dropping the connection before or in the
middle of its answer or not listening at all, a client going away (the upstream sees it),
drain on stop, and the trace continued. Every check runs on the Python proxy and on the
native plane (``-k python`` / ``-k native``).
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.test_sidecar import PLANES, free_port, sidecar_thread

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.integration.conftest import ServiceThread

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024
CHUNKS = (b"first,", b"second,", b"third")
BIG = bytes(range(256)) * (8 << 10)  # 2 MiB: over the length read whole (1 MiB)
SLOW_CAP_S = 10.0  # the longest the fake upstream holds a request


class FakeRest:
    """An HTTP/1.1 upstream on 127.0.0.1 (keep-alive, one thread per connection):

    - ``/echo``: the request's headers and body length as JSON;
    - ``/empty``: 204, no body and no length;
    - ``/big``: ``BIG``, with its length;
    - ``/chunked``: a chunked answer of ``CHUNKS``;
    - ``/cut-headers``: closes the connection without answering;
    - ``/cut-body``: declares 100 bytes, sends 10, closes;
    - any path, HEAD: 200 with ``BIG``'s length and no body;
    - ``/slow``: answers after ``?s=`` seconds, or notes in ``gone`` that its client
      closed the connection first.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.gone = threading.Event()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def close(self) -> None:
        self.stopping.set()
        # close() alone does not wake a thread blocked in accept(); shutdown() does.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for thread in [self.accepting, *self.threads]:
            thread.join(timeout=SLOW_CAP_S + 1)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while not self.stopping.is_set():
                request = _read_request(reader)
                if request is None or not self._answer(conn, *request):
                    return

    def _answer(self, conn: socket.socket, method: str, target: str,
                headers: list[tuple[str, str]], body: bytes) -> bool:  # fmt: skip
        """Answers one request; False: the connection is to be closed."""
        path, _, query = target.partition("?")
        if method == "HEAD":  # the length the GET's answer would have, and no body
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(BIG)}\r\n\r\n".encode())
        elif path == "/echo":
            seen = {"headers": [[k.lower(), v] for k, v in headers], "body": len(body)}
            _send(conn, 200, json.dumps(seen).encode(), "application/json")
        elif path == "/empty":
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif path == "/big":
            _send(conn, 200, BIG, "application/octet-stream")
        elif path == "/chunked":
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in CHUNKS)
            conn.sendall(head + chunks + b"0\r\n\r\n")
        elif path == "/cut-headers":
            return False
        elif path == "/cut-body":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            return False
        elif path == "/slow":
            wait_s = min(float(query.removeprefix("s=") or SLOW_CAP_S), SLOW_CAP_S)
            until = time.monotonic() + wait_s
            while time.monotonic() < until:
                readable, _, _ = select.select([conn], [], [], 0.02)
                if readable and not conn.recv(1, socket.MSG_PEEK):
                    self.gone.set()  # the client (the sidecar) closed the connection
                    return False
            _send(conn, 200, b"slept", "text/plain")
        else:
            _send(conn, 404, b"{}", "application/json")
        return True


def _read_request(reader: Any) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    line = reader.readline(65536)
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = []
    while (raw := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    fields = {k.lower(): v for k, v in headers}
    if "chunked" in fields.get("transfer-encoding", ""):
        body = b""
        while (size := reader.readline().split(b";")[0].strip()) not in (b"0", b""):
            body += reader.read(int(size, 16))
            reader.readline()
        if not size:
            return None  # abandoned mid-body (a body over the sidecar's limit)
        reader.readline()
    else:
        body = reader.read(int(fields.get("content-length", "0")))
    return method, target, headers, body


def _send(conn: socket.socket, status: int, body: bytes, content_type: str) -> None:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
    conn.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)


@pytest.fixture(scope="module", params=PLANES)
def plane(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeRest]:
    fake = FakeRest()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture(scope="module")
def side(upstream: FakeRest, plane: str) -> Iterator[ServiceThread]:
    # The gRPC half points at a port nobody listens on: only REST is exercised here.
    dead = f"127.0.0.1:{free_port()}"
    sidecar = sidecar_thread(
        dead, http_upstream=upstream.address, max_message_bytes=LIMIT, data_plane=plane
    )
    try:
        yield sidecar
    finally:
        sidecar.close()


def _request(address: str, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None, chunked: bool = False
             ) -> tuple[http.client.HTTPResponse, bytes]:  # fmt: skip
    conn = http.client.HTTPConnection(address, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        reply = conn.getresponse()
        return reply, reply.read()
    finally:
        conn.close()


def _timing(reply: http.client.HTTPResponse) -> list[str]:
    """The Server-Timing entries' names with their desc, the sidecar's (the last header)."""
    value = reply.headers.get_all("Server-Timing")[-1]
    return [
        ";".join(p.strip() for p in e.split(";") if not p.strip().startswith("dur="))
        for e in value.split(",")
    ]


def test_headers_pass_minus_hop_by_hop(side: ServiceThread, upstream: FakeRest) -> None:
    sent = {
        "X-Custom": "value",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "TE": "trailers",
        "Content-Type": "application/octet-stream",
    }
    reply, body = _request(side.http, "POST", "/echo", b"12345", sent)
    assert reply.status == 200
    seen = dict(json.loads(body)["headers"])
    assert seen["x-custom"] == "value" and seen["content-type"] == "application/octet-stream"
    assert seen["host"] == upstream.address and seen["content-length"] == "5"
    for name in ("keep-alive", "proxy-authorization", "te"):
        assert name not in seen
    assert json.loads(body)["body"] == 5
    assert _timing(reply) == ["backend", "total"]


def test_chunked_bodies_both_ways(side: ServiceThread) -> None:
    reply, body = _request(side.http, "POST", "/echo", iter(CHUNKS), chunked=True)
    assert reply.status == 200 and json.loads(body)["body"] == sum(map(len, CHUNKS))
    reply, body = _request(side.http, "GET", "/chunked")
    assert (reply.status, body) == (200, b"".join(CHUNKS))
    # Streamed (no length): the sidecar's entries end at the upstream's headers.
    assert _timing(reply) == ["backend;desc=headers", "total;desc=headers"]
    reply, body = _request(side.http, "GET", "/big")  # streamed too: over 1 MiB
    assert (reply.status, body) == (200, BIG) and reply.headers["Content-Length"] == str(len(BIG))
    assert _timing(reply) == ["backend;desc=headers", "total;desc=headers"]


def test_an_answer_without_a_body_is_answered_and_counted(side: ServiceThread) -> None:
    reply, body = _request(side.http, "DELETE", "/empty")
    assert (reply.status, body) == (204, b"") and _timing(reply) == ["backend", "total"]
    text = urllib.request.urlopen(f"http://{side.metrics}/metrics", timeout=5).read().decode()
    calls = [line for line in text.splitlines() if 'method="HTTP DELETE"' in line]
    assert calls == ['infergw_sidecar_rpcs_total{method="HTTP DELETE",status="OK"} 1.0']


@pytest.mark.parametrize("chunked", [False, True])
def test_a_client_still_sending_a_refused_body_reads_its_413(
    side: ServiceThread, chunked: bool
) -> None:
    """8 MiB, far more than the socket buffers hold: the sidecar must read the rest of the
    body before it closes, or the client, still sending, gets a reset instead of 413."""
    big = b"x" * (8 << 20)
    body: Any = (
        iter([big[i : i + (1 << 20)] for i in range(0, len(big), 1 << 20)]) if chunked else big
    )
    reply, answer = _request(side.http, "POST", "/echo", body, chunked=chunked)
    assert reply.status == 413 and f"limit of {LIMIT} bytes" in json.loads(answer)["error"]


def test_head_keeps_the_upstreams_length(side: ServiceThread) -> None:
    reply, body = _request(side.http, "HEAD", "/big")
    assert (reply.status, body, reply.headers["Content-Length"]) == (200, b"", str(len(BIG)))
    assert _timing(reply) == ["backend", "total"]


def test_a_chunked_body_over_the_limit_is_413(side: ServiceThread) -> None:
    chunks = iter([b"x" * (LIMIT // 2)] * 3)
    reply, body = _request(side.http, "POST", "/echo", chunks, chunked=True)
    assert reply.status == 413 and f"limit of {LIMIT} bytes" in json.loads(body)["error"]
    reply, _ = _request(side.http, "POST", "/echo", b"ok")  # and the sidecar still serves
    assert reply.status == 200


@pytest.mark.parametrize("path", ["/cut-headers", "/cut-body"])
def test_an_upstream_breaking_off_is_502(
    side: ServiceThread, upstream: FakeRest, path: str
) -> None:
    reply, body = _request(side.http, "GET", path)
    assert reply.status == 502
    message = json.loads(body)["error"]  # (the HTTP client's own text stays out)
    assert message == f"infergw sidecar: upstream {upstream.address} closed the connection"
    assert _timing(reply) == ["total"]
    reply, _ = _request(side.http, "GET", "/echo")
    assert reply.status == 200


def test_an_upstream_not_listening_is_503(plane: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    sidecar = sidecar_thread(dead, http_upstream=dead, data_plane=plane)
    try:
        reply, body = _request(sidecar.http, "POST", "/v2/models/m/infer", body=b"{}")
    finally:
        sidecar.close()
    assert reply.status == 503
    assert json.loads(body)["error"] == f"infergw sidecar: upstream {dead} is unreachable"
    assert _timing(reply) == ["total"]


def test_a_client_gone_is_seen_upstream_and_counted(
    side: ServiceThread, upstream: FakeRest
) -> None:
    from tests.integration.conftest import wait_until

    upstream.gone.clear()
    host, port = side.http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as client:
        client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)  # the request is at the upstream
    assert upstream.gone.wait(5), "the upstream did not see the client go"
    metrics_url = f"http://{side.metrics}/metrics"

    def counted() -> bool:
        text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
        return 'infergw_sidecar_rpcs_total{method="HTTP GET",status="CANCELLED"}' in text

    wait_until(counted, "the call counted CANCELLED", 5)


def test_stop_drains_a_request_in_flight(upstream: FakeRest, plane: str) -> None:
    import concurrent.futures

    dead = f"127.0.0.1:{free_port()}"
    sidecar = sidecar_thread(
        dead, http_upstream=upstream.address, drain_grace_s=10, data_plane=plane
    )
    address = sidecar.http
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(_request, address, "GET", "/slow?s=1.0")
        time.sleep(0.3)  # the request is at the upstream
        t0 = time.monotonic()
        stopped = pool.submit(sidecar.close)
        reply, body = slow.result(timeout=15)
        stopped.result(timeout=15)
    assert (reply.status, body) == (200, b"slept") and time.monotonic() - t0 < 5
    with pytest.raises(OSError):
        _request(address, "GET", "/echo")


def test_the_trace_continues_through_the_rest_half(
    side: ServiceThread, span_exporter: InMemorySpanExporter
) -> None:
    """The SDK is installed for this test only (``span_exporter``, tests/conftest.py)."""
    from tests.integration.conftest import wait_for_native_tracing, wait_until

    trace_id, parent = "e" * 32, "f" * 16
    rest = side.service._native_rest  # type: ignore[attr-defined]
    wait_for_native_tracing(rest.plane.stats if rest is not None else None)
    headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
    _, body = _request(side.http, "GET", "/echo", headers=headers)
    upstream_tp = dict(json.loads(body)["headers"])["traceparent"]

    def spans() -> dict[str, Any]:
        finished = span_exporter.get_finished_spans()
        return {s.kind.name: s for s in finished if s.context.trace_id == int(trace_id, 16)}

    wait_until(lambda: {"SERVER", "CLIENT"} <= set(spans()), "the sidecar's two spans", 5)
    server, client = spans()["SERVER"], spans()["CLIENT"]
    assert server.name == "GET /echo" and server.parent.span_id == int(parent, 16)
    assert server.attributes["url.path"] == "/echo"
    assert client.parent.span_id == server.context.span_id
    assert upstream_tp == f"00-{trace_id}-{client.context.span_id:016x}-01"

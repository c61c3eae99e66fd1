"""Bounded fuzzing of the REST frontend: OIP JSON bodies, headers, binary-extension bodies.

Thousands of generated inputs (a seeded generator: the same inputs every run)
against a real gateway on 127.0.0.1 over one keep-alive connection, as a pooling client
would use it. For client input the gateway must answer every request within
``CALL_TIMEOUT_S``, never with a 5xx (or a 429: nothing is overloaded here), every
error in the OIP shape ``{"error": "..."}``, and never drop a keep-alive connection
without ``Connection: close``. After each run a well-formed request still succeeds.
"""

from __future__ import annotations

import gzip
import http.client
import json
import math
import random
import struct
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import ServiceThread
from tests.integration.fuzz_gateway import CALL_TIMEOUT_S, Findings, gateway_fixture

pytestmark = pytest.mark.integration

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
DATATYPES += ["FP16", "FP32", "FP64", "BF16", "BYTES"]
EDGE_INTS = [0, -1, 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1]
EDGE_INTS += [10**30, -(10**30)]
PARAMETER_KEYS = ["timeout", "priority", "sequence_id", "sequence_start", "binary_data"]
PARAMETER_KEYS += ["binary_data_output", "binary_data_size", "shared_memory_region", "x"]
GOOD_BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]}]}
).encode()
SEED = 9  # the generator is seeded: the same inputs on every run and machine


@pytest.fixture(scope="module")
def gateway() -> Iterator[ServiceThread]:
    yield from gateway_fixture()


# -- the generator --------------------------------------------------------------------------
class Gen(random.Random):
    """A seeded source of hostile values: edge integers, lone surrogates, NaN, odd nesting."""

    def text(self, max_size: int = 12) -> str:
        pick = self.randrange(10)
        if pick == 0:
            return chr(self.randrange(0xD800, 0xE000)) * self.randint(1, 2)  # lone surrogates
        if pick == 1:
            return self.choice(["input", "output", "", "\0", "é", "💩", "a" * 300])
        alphabet = 'abc_-./:é 💩\t"' if pick < 8 else ""
        size = self.randint(0, max_size)
        if alphabet:
            return "".join(self.choice(alphabet) for _ in range(size))
        return "".join(chr(self.randrange(0x110000)) for _ in range(size))

    def integer(self) -> int:
        pick = self.randrange(3)
        if pick == 0:
            return self.randint(-5, 5)
        if pick == 1:
            return self.choice(EDGE_INTS)
        return self.randint(-(2**80), 2**80)

    def scalar(self) -> Any:
        pick = self.randrange(6)
        if pick == 0:
            return self.choice([None, True, False])
        if pick in (1, 2):
            return self.integer()
        if pick == 3:
            return self.choice([0.5, -0.0, 1e308, -1e-320, math.inf, -math.inf, math.nan])
        return self.text()

    def value(self, depth: int = 2) -> Any:
        """Any JSON value (and NaN/Infinity, which Python's json writes)."""
        pick = self.randrange(8) if depth else 0
        if pick == 6:
            return [self.value(depth - 1) for _ in range(self.randint(0, 4))]
        if pick == 7:
            return {self.text(): self.value(depth - 1) for _ in range(self.randint(0, 4))}
        return self.scalar()

    def parameters(self) -> Any:
        if self.randrange(6) == 0:
            return self.value()
        keys = [self.choice(PARAMETER_KEYS) if self.randrange(3) else self.text() for _ in "xyz"]
        values = [self.integer, self.scalar, self.value]
        return {k: self.choice(values)() for k in keys[: self.randint(0, 3)]}

    def maybe(self, good: Any, bad: Callable[[], Any], odds: int = 4) -> Any:
        """``good`` with probability 1 - 1/odds, else ``bad()``."""
        return bad() if self.randrange(odds) == 0 else good


VALID_DATA: dict[str, Callable[[Gen], Any]] = {
    "FP32": lambda gen: gen.choice([gen.random(), gen.randint(-3, 3), -0.0, 1e30]),
    "INT64": lambda gen: gen.choice([gen.randint(-3, 3), 2**63 - 1, -(2**63)]),
    "UINT8": lambda gen: gen.randint(0, 255),
    "BOOL": lambda gen: gen.random() < 0.5,
    "BYTES": lambda gen: gen.text(),
}


def fuzzed_tensor(gen: Gen, fault: bool) -> Any:
    """A well-formed tensor (hostile values where they are allowed), or one with a fault."""
    datatype = gen.choice(["FP32"] * 4 + sorted(VALID_DATA))
    shape = [gen.randint(0, 4) for _ in range(gen.randint(1, 3))]
    data: Any = [VALID_DATA[datatype](gen) for _ in range(math.prod(shape))]
    tensor: dict[str, Any] = {"name": "input", "datatype": datatype, "shape": shape, "data": data}
    if gen.randrange(2):
        tensor["parameters"] = gen.parameters()
    if not fault:
        return tensor
    pick = gen.randrange(8)
    if pick == 0:
        return gen.value()
    if pick == 1:
        tensor["datatype"] = gen.choice([gen.text(), gen.choice(DATATYPES)])
    elif pick == 2:
        tensor["shape"] = gen.choice([[gen.integer()], [gen.integer(), 1], gen.value()])
    elif pick == 3:
        tensor["data"] = gen.choice([[data], gen.value(), data[:-1], [*data, 1], [gen.scalar()]])
    elif pick == 4:
        del tensor[gen.choice(list(tensor))]
    elif pick == 5:
        tensor["name"] = gen.text()
    elif pick == 6:
        tensor["parameters"] = gen.value()
    else:
        tensor[gen.text()] = gen.value()
    return tensor


def fuzzed_document(gen: Gen) -> Any:
    fault = gen.randrange(2) == 0
    if fault and gen.randrange(10) == 0:
        return gen.value()
    inputs = [fuzzed_tensor(gen, fault and gen.randrange(2) == 0)]
    if gen.randrange(10) == 0:
        inputs.append(fuzzed_tensor(gen, fault))
    doc: dict[str, Any] = {"inputs": inputs}
    if gen.randrange(2):
        doc["parameters"] = gen.parameters()
    if gen.randrange(4) == 0:
        doc["id"] = gen.maybe(gen.text(), gen.value, odds=2 if fault else 1000)
    if gen.randrange(4) == 0:
        name = gen.maybe("output", gen.text, odds=3 if fault else 1000)
        outputs: Any = [{"name": name, "parameters": gen.parameters()}]
        doc["outputs"] = gen.maybe(outputs, gen.value, odds=3 if fault else 1000)
    if fault and gen.randrange(8) == 0:
        doc[gen.text()] = gen.value()
    return doc


def encode(doc: Any, ensure_ascii: bool) -> bytes:
    # Without ensure_ascii a lone surrogate becomes invalid UTF-8: that is a body too.
    return json.dumps(doc, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


def mangled(gen: Gen, body: bytes) -> bytes:
    """``body``, or a byte-level mutation of it (cut, flipped, spliced)."""
    how = gen.randrange(20)
    if how >= 3 or not body:
        return body
    at = gen.randrange(len(body))
    if how == 0:
        return body[:at]
    if how == 1:
        return body[:at] + bytes([body[at] ^ (1 << gen.randrange(8))]) + body[at + 1 :]
    return body[:at] + gen.randbytes(gen.randint(1, 8)) + body[at:]


def infer_path(gen: Gen) -> str:
    model = gen.choice(["identity"] * 14 + ["echo"] * 3 + ["nope", "", "%00", "%F0%9F%92%A9"])
    if gen.randrange(10) == 0:
        version = urllib.parse.quote(gen.text().encode("utf-8", "surrogatepass"), safe="")
        return f"/v2/models/{model}/versions/{version}/infer"
    return f"/v2/models/{model}/infer"


def header_text(text: str) -> bytes:
    """``text`` as a header value http.client will send (no CR/LF/NUL: those split headers)."""
    raw = text.encode("utf-8", "surrogatepass")
    return raw.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")


VALID_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADER_VALUES: dict[str, list[str]] = {
    "Content-Type": [
        *("application/json", "application/octet-stream", "text/plain", ""),
        *("application/json; ", "application/json; charset=latin-1", "multipart/form-data; b=x"),
    ],
    "Content-Encoding": ["gzip", "deflate", "br", "identity", "gzip, gzip", "x"],
    "traceparent": [VALID_TRACEPARENT, "00-zz", "x" * 8000, "00-é-ü-01"],
    "tracestate": ["a=b", "", "=" * 600],
    "x-infergw-backend": ["echo", "proto", "nope", ""],
    "Inference-Header-Content-Length": ["0", "-1", "14", "99999999999999999999", "x", " 5"],
    "Accept-Encoding": ["gzip", "deflate", "br", "*", "gzip;q=0"],
    "Accept": ["application/json", "*/*", "text/html"],
    "Connection": ["keep-alive", "upgrade"],
    "Expect": ["100-continue", "x"],
    "Transfer-Encoding": ["identity", "x"],
}
TCHAR = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def malformed_http(headers: list[tuple[str, bytes]]) -> bool:
    """Headers that break HTTP/1.1 itself (RFC 9110/9112), rejected before any route runs:
    a name that is not a token, a control character in a value, Transfer-Encoding next to
    Content-Length, an Expect other than 100-continue. Those get the HTTP server's own
    plain 4xx, not an OIP error."""
    for name, value in headers:
        if not set(name.encode()) <= TCHAR or any((b < 32 and b != 9) or b == 127 for b in value):
            return True
        if name.lower() == "transfer-encoding":
            return True
        if name.lower() == "expect" and value.lower() != b"100-continue":
            return True
    return False


def header_set(gen: Gen) -> list[tuple[str, bytes]]:
    headers = []
    for _ in range(gen.randint(0, 4)):
        name = gen.choice(sorted(HEADER_VALUES))
        value = gen.maybe(gen.choice(HEADER_VALUES[name]), lambda: gen.text(60), odds=3)
        headers.append((name, header_text(value)))
    if gen.randrange(10) == 0:  # a header nobody knows, maybe not even a valid name
        name = "".join(chr(gen.randrange(0x21, 0x7F)) for _ in range(gen.randint(1, 8)))
        headers.append((name.replace(":", ""), header_text(gen.text(20))))
    return [(n, v) for n, v in headers if n]


BINARY_TYPES = {"FP32": 4, "INT64": 8, "FP16": 2, "UINT8": 1, "BOOL": 1, "INT32": 4, "BYTES": 0}


def binary_request(gen: Gen) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A binary-extension body whose JSON header, blob sizes and header length may lie."""
    inputs, blobs = [], []
    for _ in range(gen.randint(1, 2)):
        datatype = gen.choice(sorted(BINARY_TYPES))
        shape = [gen.randint(0, 4) for _ in range(gen.randint(1, 3))]
        count = math.prod(shape)
        if datatype == "BYTES":
            items = [gen.randbytes(gen.randint(0, 6)) for _ in range(count)]
            blob = b"".join(struct.pack("<I", len(b)) + b for b in items)
        else:
            blob = gen.randbytes(count * BINARY_TYPES[datatype])
        blob = gen.maybe(blob, lambda: gen.randbytes(gen.randint(0, 40)))
        lies = [0, -1, len(blob) + 1, 2**64, gen.integer()]
        size: Any = gen.choice(lies) if gen.randrange(4) == 0 else len(blob)
        tensor: dict[str, Any] = {"name": gen.maybe("input", gen.text), "datatype": datatype}
        tensor["shape"] = gen.maybe(shape, lambda: [gen.integer() for _ in range(2)], odds=6)
        tensor["parameters"] = gen.maybe({"binary_data_size": size}, gen.parameters, odds=6)
        inputs.append(tensor)
        blobs.append(blob)
    doc: dict[str, Any] = {"inputs": inputs}
    if gen.randrange(2):
        doc["outputs"] = [{"name": "output", "parameters": {"binary_data": gen.random() < 0.5}}]
    header = encode(doc, gen.random() < 0.5)
    body = header + b"".join(blobs)
    lies = [0, len(header) - 1, len(header) + 1, len(body), len(body) + 1, -1, gen.integer()]
    length: Any = gen.maybe(len(header), lambda: gen.choice(lies), odds=3)
    headers = [("Inference-Header-Content-Length", str(length).encode())]
    if gen.randrange(5) == 0:
        headers.append(("Content-Type", b"application/octet-stream"))
    return mangled(gen, body), headers


# -- the client -----------------------------------------------------------------------------
class Client:
    """One keep-alive connection, reopened only when the server says it is closing it."""

    def __init__(self, address: str, findings: Findings) -> None:
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.findings = findings
        self.conn: http.client.HTTPConnection | None = None
        self.previous: tuple[Any, bool] | None = None  # the last request, and if it broke HTTP

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def send(self, path: str, body: bytes, headers: list[tuple[str, bytes]], what: Any) -> None:
        self.findings.sent += 1
        broken_http = malformed_http(headers)
        previous, self.previous = self.previous, (what, broken_http)
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=CALL_TIMEOUT_S)
            previous = None
        try:
            self.conn.putrequest("POST", path, skip_accept_encoding=True)
            for name, value in headers:
                self.conn.putheader(name, value)
            self.conn.putheader("Content-Length", str(len(body)))
            self.conn.endheaders(body)
            response = self.conn.getresponse()
            payload = response.read()
        except TimeoutError:
            self.findings.add(f"no answer within {CALL_TIMEOUT_S} s", what)
            self.close()
            return
        except (http.client.RemoteDisconnected, ConnectionError) as exc:
            self.close()
            if broken_http:  # the server may hang up on broken HTTP at once
                return
            if previous is None:
                self.findings.add(f"connection dropped ({type(exc).__name__})", what)
            elif not previous[1]:  # the connection the last answer left open was not usable
                kind = f"kept-alive connection dropped after this request ({type(exc).__name__})"
                self.findings.add(kind, previous[0])
            return
        check_answer(response.status, payload, self.findings, what, oip_errors=not broken_http)
        if response.will_close:
            self.close()


def is_oip_error(payload: bytes) -> bool:
    """``{"error": "<non-empty message>"}``, the OIP error body."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("error"), str) and bool(doc["error"])


def check_answer(
    status: int, payload: bytes, findings: Findings, what: Any, oip_errors: bool = True
) -> None:
    """Record what is wrong with an answer; ``oip_errors``: 4xx must be OIP-shaped."""
    findings.answers[str(status)] += 1
    if status >= 500 or status == 429 or status < 200 or 300 <= status < 400:
        findings.add(f"HTTP {status}", (what, payload[:200]))
    elif status >= 400 and oip_errors and not is_oip_error(payload):
        findings.add(f"HTTP {status} not in the OIP error shape", (what, payload[:200]))


def assert_still_serving(gateway: ServiceThread) -> None:
    host, port = gateway.http.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=CALL_TIMEOUT_S)
    try:
        for model in ("identity", "echo"):
            conn.request("POST", f"/v2/models/{model}/infer", GOOD_BODY)
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == 200, body
            assert body["outputs"][0]["data"] == [1.5, 2.5]
    finally:
        conn.close()


Case = tuple[str, bytes, list[tuple[str, bytes]]]


def json_case(gen: Gen) -> Case:
    body = encode(fuzzed_document(gen), ensure_ascii=gen.random() < 0.5)
    return infer_path(gen), mangled(gen, body), [("Content-Type", b"application/json")]


def header_case(gen: Gen) -> Case:
    headers = header_set(gen)
    body = GOOD_BODY
    if b"gzip" in dict(headers).get("Content-Encoding", b"") and gen.randrange(2):
        body = gzip.compress(body)  # sometimes the header tells the truth
    return infer_path(gen), body, headers


def binary_case(gen: Gen) -> Case:
    body, headers = binary_request(gen)
    return infer_path(gen), body, headers


def run(gateway: ServiceThread, make: Callable[[Gen], Case], count: int, seed: int) -> Findings:
    findings = Findings()
    client = Client(gateway.http, findings)
    gen = Gen(seed)
    try:
        for _ in range(count):
            path, body, headers = make(gen)
            client.send(path, body, headers, (path, body[:300], headers))
    finally:
        client.close()
    return findings


@pytest.mark.parametrize(
    ("make", "count"),
    [(json_case, 3000), (header_case, 1500), (binary_case, 1500)],
    ids=["json-bodies", "headers", "binary-extension"],
)
def test_fuzzed_requests_get_client_errors_and_the_server_keeps_serving(
    gateway: ServiceThread, make: Callable[[Gen], Case], count: int
) -> None:
    findings = run(gateway, make, count, seed=SEED)
    assert findings.sent == count, findings.report()
    assert not findings.kinds, findings.report()
    assert_still_serving(gateway)


def test_the_verdicts_can_fail() -> None:
    """What the fuzzers count as failures: a 5xx, a 429, a 4xx not in the OIP shape."""
    findings = Findings()
    check_answer(200, b"{}", findings, "ok")
    check_answer(400, b'{"error": "bad shape"}', findings, "oip error")
    assert not findings.kinds
    check_answer(500, b'{"error": "internal error (id 1)"}', findings, "server error")
    check_answer(429, b'{"error": "busy"}', findings, "throttled")
    check_answer(400, b"Bad Request", findings, "plain text")
    check_answer(400, b'{"error": ""}', findings, "empty message")
    expected = {"HTTP 500": 1, "HTTP 429": 1, "HTTP 400 not in the OIP error shape": 2}
    assert findings.kinds == expected

"""Triton's spans -> per-request splits: parsing, the join, the ring and its endpoints.

The exports are built in the shape Triton 2.51 sends (seen on this machine): per request
``InferRequest`` (child of the caller's span) -> ``{model}`` (``QUEUE_START``) ->
``compute`` (the four ``COMPUTE_*`` events), ids in hex, times as strings of unix ns.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from infergw.gateway.core import tracing
from infergw.gateway.core.config import TritonReceiverConfig
from infergw.gateway.core.metrics import GatewayMetrics
from infergw.gateway.triton_traces import (
    BadExport,
    SpanJoin,
    SpanRecord,
    TritonSplits,
    receiver_app,
    spans_from_json,
    spans_from_protobuf,
    splits_handler,
)

T0 = 1_796_122_005_555_000_000


@dataclass(frozen=True)
class Traced:
    """One request as Triton traces it: the caller's ids and its durations in µs."""

    trace_id: str
    caller: str
    queue_us: int = 100
    input_us: int = 20
    infer_us: int = 15_000
    output_us: int = 200
    model: str = "minilm"
    n: int = 1  # distinguishes Triton's own span ids

    def spans(self) -> dict[str, dict[str, Any]]:
        request_id, model_id, compute_id = (f"{self.n:04x}{k:012x}" for k in (1, 2, 3))
        queue = T0 + self.n * 10**8
        start = queue + self.queue_us * 1000
        input_end = start + self.input_us * 1000
        output_start = input_end + self.infer_us * 1000
        end = output_start + self.output_us * 1000

        def span(name: str, span_id: str, parent: str, events: dict[str, int]) -> dict[str, Any]:
            return {
                "traceId": self.trace_id,
                "spanId": span_id,
                "parentSpanId": parent,
                "name": name,
                "kind": 2,
                "startTimeUnixNano": str(min(events.values())),
                "endTimeUnixNano": str(max(events.values())),
                "events": [{"name": k, "timeUnixNano": str(v)} for k, v in events.items()],
            }

        model = span(self.model, model_id, request_id, {"QUEUE_START": queue, "REQUEST_END": end})
        model["attributes"] = [
            {"key": "triton.model_name", "value": {"stringValue": self.model}},
            {"key": "triton.model_version", "value": {"intValue": "1"}},
        ]
        return {
            "compute": span(
                "compute",
                compute_id,
                model_id,
                {
                    "COMPUTE_START": start,
                    "COMPUTE_INPUT_END": input_end,
                    "COMPUTE_OUTPUT_START": output_start,
                    "COMPUTE_END": end,
                },
            ),
            "model": model,
            "request": span(
                "InferRequest", request_id, self.caller, {"GRPC_WAITREAD_END": queue - 1000}
            ),
        }


def export(*spans: dict[str, Any]) -> bytes:
    return json.dumps(
        {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "triton-server"}, "spans": spans}]}]}
    ).encode()


def records(*spans: dict[str, Any]) -> list[SpanRecord]:
    return list(spans_from_json(export(*spans)))


A = Traced("0" * 31 + "a", "00000000000000a1")
B = Traced("0" * 31 + "b", "00000000000000b1", queue_us=2_000, n=2)
A_AGAIN = Traced(A.trace_id, "00000000000000a2", infer_us=30_000, n=3)  # a retry: same trace


# -- the join -----------------------------------------------------------------------

ORDERS = {
    "one export, child first (as Triton sends)": [["compute", "model", "request"]],
    "root first": [["request", "model", "compute"]],
    "three exports": [["compute"], ["request"], ["model"]],
    "request last, alone": [["compute", "model"], ["request"]],
}


@pytest.mark.parametrize("batches", ORDERS.values(), ids=ORDERS.keys())
def test_a_request_is_joined_whatever_the_export_order(batches: list[list[str]]) -> None:
    join = SpanJoin()
    spans = A.spans()
    joined = [t for batch in batches for t in join.add(records(*(spans[k] for k in batch)))]
    (times,) = joined
    assert (times.trace_id, times.parent_id, times.model) == (A.trace_id, A.caller, "minilm")
    assert times.compute_start - times.queue_start == 100_000
    assert times.compute_end - times.compute_start == 15_220_000
    assert join.partial == 0  # nothing left behind


def test_requests_sharing_a_trace_id_stay_apart() -> None:
    join = SpanJoin()
    first, again = A.spans(), A_AGAIN.spans()
    joined = join.add(records(first["compute"], again["compute"], again["model"]))
    joined += join.add(records(first["model"], again["request"], first["request"]))
    by_caller = {t.parent_id: t for t in joined}
    assert set(by_caller) == {A.caller, A_AGAIN.caller}
    assert by_caller[A_AGAIN.caller].compute_output_start - by_caller[
        A_AGAIN.caller
    ].compute_input_end == (30_000_000)


def test_an_incomplete_request_is_not_joined_and_is_evicted_by_newer_ones() -> None:
    join = SpanJoin(max_partial=2)
    spans = A.spans()
    del spans["compute"]["events"][-1]  # no COMPUTE_END
    assert join.add(records(*spans.values())) == []
    for n in range(3, 6):
        join.add(records(Traced(f"{n:032x}", f"{n:016x}", n=n).spans()["request"]))
    assert join.partial <= 2 * 3


BAD_BODIES = {
    "not JSON": b"{",
    "a list": b"[]",
    "spans not a list of objects": export("x"),  # type: ignore[arg-type]
    "event without a time": export(
        {"traceId": "1" * 32, "spanId": "2" * 16, "events": [{"name": "QUEUE_START"}]}
    ),
    "time not a number": export(
        {"events": [{"name": "QUEUE_START", "timeUnixNano": "soon"}], "traceId": "1" * 32}
    ),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_body_that_is_no_export_is_a_clear_error(body: bytes) -> None:
    with pytest.raises(BadExport, match="not an OTLP JSON trace export"):
        list(spans_from_json(body))


def test_the_protobuf_encoding_reads_the_same() -> None:
    from google.protobuf.json_format import Parse
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    document = json.loads(export(*A.spans().values()))
    for span in document["resourceSpans"][0]["scopeSpans"][0]["spans"]:  # protobuf's JSON: b64
        for key in ("traceId", "spanId", "parentSpanId"):
            span[key] = _b64(span[key])
    message = Parse(json.dumps(document), ExportTraceServiceRequest())
    assert list(spans_from_protobuf(message.SerializeToString())) == records(*A.spans().values())
    with pytest.raises(BadExport):
        list(spans_from_protobuf(b"\xff\xff"))


def _b64(hex_id: str) -> str:
    import base64

    return base64.b64encode(bytes.fromhex(hex_id)).decode()


# -- the gateway's side ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def splits(clock: Clock) -> TritonSplits:
    config = TritonReceiverConfig(port=0, ring_size=4, pending_timeout_s=30.0)
    return TritonSplits(config, GatewayMetrics(), model_label=lambda m: m, clock=clock)


def expect_as(splits: TritonSplits, traced: Traced, status: str = "OK") -> None:
    """The attempt that sent ``traced``'s ids (as Attempt's SDK span would have)."""
    headers = {"traceparent": f"00-{traced.trace_id}-{traced.caller}-01"}
    expected = splits.expect(headers, traced.model, "triton", "grpc")
    expected.status = status
    # Without an SDK the attempt gets a span id of its own: re-key to the one Triton saw.
    key = next(k for k, v in splits._expected.items() if v is expected)
    splits._expected[(traced.trace_id, traced.caller)] = splits._expected.pop(key)


def test_an_attempt_without_a_traceparent_gets_one_and_a_client_trace_is_continued(
    splits: TritonSplits,
) -> None:
    fresh: dict[str, str] = {}
    splits.expect(fresh, "minilm", "triton", "grpc")
    version, trace_id, span_id, flags = fresh["traceparent"].split("-")
    assert (version, flags, len(trace_id), len(span_id)) == ("00", "01", 32, 16)
    client = {"traceparent": f"00-{'c' * 32}-{'d' * 16}-01"}
    splits.expect(client, "minilm", "triton", "grpc")
    _, trace_id, span_id, _ = client["traceparent"].split("-")
    assert trace_id == "c" * 32 and span_id != "d" * 16  # each attempt is told apart
    assert {t for t, _ in splits._expected} == {fresh["traceparent"][3:35], "c" * 32}


def test_a_joined_attempt_is_in_the_ring_and_the_histograms(splits: TritonSplits) -> None:
    expect_as(splits, A)
    expect_as(splits, B)
    assert splits.lookup([A.trace_id])["pending"] == [A.trace_id]
    assert splits.receive(records(*A.spans().values(), *B.spans().values())) == 2
    doc = splits.lookup([A.trace_id, B.trace_id, "f" * 32])
    assert doc["pending"] == []
    (a,) = doc["splits"][A.trace_id]  # type: ignore[index]
    assert a == {
        "span_id": A.caller,
        "model": "minilm",
        "backend": "triton",
        "backend_queue_ms": 0.1,
        "compute_ms": pytest.approx(15.22),
        "compute_input_ms": 0.02,
        "compute_infer_ms": 15.0,
        "compute_output_ms": 0.2,
    }
    assert "f" * 32 not in doc["splits"]  # type: ignore[operator]
    text = splits.metrics.render().decode()
    assert (
        'infergw_phase_duration_seconds_count{backend="triton",model="minilm",'
        'phase="backend_queue",protocol="grpc",status="OK"} 2.0'
    ) in text
    assert 'infergw_triton_splits_total{outcome="joined"} 2.0' in text


def test_spans_nobody_expected_are_counted_and_dropped(splits: TritonSplits) -> None:
    assert splits.receive(records(*A.spans().values())) == 0
    assert splits.stats.unmatched == 1 and splits.lookup_prefix("0" * 8)["splits"] == {}


def test_an_attempt_whose_spans_never_come_is_unknown_not_zero(
    splits: TritonSplits, clock: Clock
) -> None:
    expect_as(splits, A)
    clock.now += 31.0
    doc = splits.lookup([A.trace_id])
    (entry,) = doc["splits"][A.trace_id]  # type: ignore[index]
    assert entry["compute_ms"] is None and entry["backend_queue_ms"] is None
    assert splits.stats.unknown == 1 and doc["pending"] == []
    assert splits.receive(records(*A.spans().values())) == 0  # too late: not counted twice


def test_the_ring_keeps_the_most_recent(splits: TritonSplits) -> None:
    traced = [Traced(f"{n:032x}", f"{n:016x}", n=n) for n in range(1, 7)]
    for t in traced:
        expect_as(splits, t)
        splits.receive(records(*t.spans().values()))
    doc = splits.lookup_prefix("0" * 8)
    assert sorted(doc["splits"]) == [t.trace_id for t in traced[-4:]]  # type: ignore[arg-type]


def test_retries_of_one_request_are_listed_per_attempt(splits: TritonSplits) -> None:
    expect_as(splits, A, status="UNAVAILABLE")
    expect_as(splits, A_AGAIN)
    splits.receive(records(*A.spans().values(), *A_AGAIN.spans().values()))
    attempts = splits.lookup([A.trace_id])["splits"][A.trace_id]  # type: ignore[index]
    assert [a["span_id"] for a in attempts] == [A.caller, A_AGAIN.caller]


@pytest.fixture
def sdk(span_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    assert tracing.enabled()
    yield span_exporter


def test_with_an_sdk_the_attempt_span_gets_queue_and_compute_children(
    splits: TritonSplits, sdk: InMemorySpanExporter
) -> None:
    headers: dict[str, str] = {}
    with tracing.backend_span("triton", "minilm", 1, headers) as attempt:
        splits.expect(headers, "minilm", "triton", "grpc")
    context = attempt.get_span_context()
    assert headers["traceparent"][36:52] == f"{context.span_id:016x}"  # reused, not replaced
    traced = Traced(f"{context.trace_id:032x}", f"{context.span_id:016x}")
    splits.receive(records(*traced.spans().values()))
    children = {s.name: s for s in sdk.get_finished_spans() if s.parent is not None}
    assert set(children) == {"backend_queue", "compute"}
    for child in children.values():
        assert child.parent is not None and child.parent.span_id == context.span_id
        assert child.context is not None and child.context.trace_id == context.trace_id
    compute = children["compute"]
    assert compute.end_time is not None and compute.start_time is not None
    assert compute.end_time - compute.start_time == 15_220_000
    assert trace.get_tracer_provider() is not None


# -- HTTP ---------------------------------------------------------------------------


@pytest.fixture
async def client(splits: TritonSplits) -> AsyncIterator[TestClient[Any, Any]]:
    app = receiver_app(splits)
    app.router.add_get("/v1/splits", splits_handler(splits))
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as c:
        yield c


async def test_the_receiver_takes_triton_exports(
    client: TestClient[Any, Any], splits: TritonSplits
) -> None:
    expect_as(splits, A)
    reply = await client.post(
        "/v1/traces", data=export(*A.spans().values()), headers={"content-type": "application/json"}
    )
    assert reply.status == 200 and await reply.json() == {}
    reply = await client.get(f"/v1/splits?ids={A.trace_id.upper()}")
    assert reply.status == 200
    assert (await reply.json())["splits"][A.trace_id][0]["compute_infer_ms"] == 15.0


RECEIVER_ERRORS = {
    "not JSON": ("application/json", b"{nope", 400, "not an OTLP JSON trace export"),
    "other content type": ("text/plain", b"hi", 415, "content type must be one of"),
    "bad protobuf": ("application/x-protobuf", b"\xff\xff", 400, "not an OTLP protobuf"),
}


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    RECEIVER_ERRORS.values(),
    ids=RECEIVER_ERRORS.keys(),
)
async def test_a_bad_export_is_answered_in_kind(
    client: TestClient[Any, Any], content_type: str, body: bytes, status: int, message: str
) -> None:
    reply = await client.post("/v1/traces", data=body, headers={"content-type": content_type})
    assert reply.status == status
    assert message in (await reply.json())["error"]


QUERY_ERRORS = {
    "neither": ("", "exactly one of"),
    "both": (f"ids={'a' * 32}&prefix=aaaaaaaa", "exactly one of"),
    "short prefix": ("prefix=abc", "prefix must be 8 to 32 hex digits"),
    "prefix not hex": ("prefix=zzzzzzzzzz", "prefix must be"),
    "empty ids": ("ids=,", "ids must list 1 to 200"),
    "too many ids": ("ids=" + ",".join(["a" * 32] * 201), "ids must list 1 to 200"),
    "not a trace id": ("ids=1234", "32 hex digits"),
}


@pytest.mark.parametrize(("query", "message"), QUERY_ERRORS.values(), ids=QUERY_ERRORS.keys())
async def test_a_bad_splits_query_is_a_400_naming_the_rule(
    client: TestClient[Any, Any], query: str, message: str
) -> None:
    reply = await client.get(f"/v1/splits?{query}")
    assert reply.status == 400
    assert message in (await reply.json())["error"]

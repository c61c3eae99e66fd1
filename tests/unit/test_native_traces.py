"""The native plane's span records made SDK spans with the plane's ids and times, and
announced to Triton's splits (the plane itself is exercised in the integration tests)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from infergw.gateway import native_traces
from infergw.gateway.native_traces import NativeTraces

TRACE = "0af7651916cd43dd8448eb211c80319c"


def record(ids: tuple[Any, ...], model: str, times: tuple[Any, ...], code: int,
           method: str = "") -> tuple[Any, ...]:  # fmt: skip
    """The plane's shape: (ids, names, times, code)."""
    return ids, (method, model, "triton" if not method else "upstream"), times, code


IDS = (TRACE, "b7ad6b7169203331", "00000000000000aa", "00000000000000bb", 1)
RECORD = record(IDS, "identity", (1_000, 1_200, 1_800, 2_000), 0)


class Plane:
    def __init__(self, *records: tuple[Any, ...], dropped: int = 0) -> None:
        self.records = list(records)
        self.dropped = dropped
        self.trace_all: bool | None = None

    def take_spans(self) -> tuple[list[tuple[Any, ...]], int]:
        records, self.records = self.records, []
        return records, self.dropped

    def set_trace_all(self, all: bool) -> None:
        self.trace_all = all


class Splits:
    def __init__(self) -> None:
        self.expected: list[tuple[Any, ...]] = []

    def expect_attempt(self, *args: Any, **kwargs: Any) -> None:
        self.expected.append((*args, *kwargs.values()))


def test_records_become_server_and_client_spans_with_the_planes_ids(
    span_exporter: InMemorySpanExporter,
) -> None:
    other = TRACE.replace("0a", "0b")
    failed = record((other, None, "cc".zfill(16), "dd".zfill(16), 1), "identity",
                    (3_000, None, None, 3_500), 3)  # fmt: skip
    sidecar = record((other, None, "ee".zfill(16), "ff".zfill(16), 1), "",
                     (4_000, 4_100, 4_200, 4_300), 0,
                     "/inference.GRPCInferenceService/ServerReady")  # fmt: skip
    traces = NativeTraces(Plane(RECORD, failed, sidecar), None, traced_backends=lambda _: True)
    assert traces.drain() == 3
    spans = {s.name + str(s.context.span_id): s for s in span_exporter.get_finished_spans()}
    server = spans["infer identity" + str(0xAA)]
    client = spans["backend triton" + str(0xBB)]
    assert server.kind == SpanKind.SERVER and client.kind == SpanKind.CLIENT
    assert server.context.trace_id == client.context.trace_id == int(TRACE, 16)
    assert server.parent is not None and server.parent.span_id == 0xB7AD6B7169203331
    assert client.parent is not None and client.parent.span_id == 0xAA
    assert (server.start_time, server.end_time) == (1_000, 2_000)
    assert (client.start_time, client.end_time) == (1_200, 1_800)
    assert client.attributes is not None and client.attributes["infergw.attempt"] == 1
    root = spans["infer identity" + str(0xCC)]  # no client span: it never reached the backend
    assert root.parent is None and f"{root.context.trace_id:032x}" == other
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes is not None and root.attributes["error.type"] == "INVALID_ARGUMENT"
    side = spans["inference.GRPCInferenceService/ServerReady" + str(0xEE)]
    assert side.attributes is not None and side.attributes["rpc.method"] == "ServerReady"
    assert "infergw.model" not in side.attributes  # no model read: no label
    assert spans["backend upstream" + str(0xFF)].parent.span_id == 0xEE  # type: ignore[union-attr]
    assert len(spans) == 5


def test_without_an_sdk_only_the_splits_hear_of_attempts_that_reached_triton() -> None:
    splits = Splits()
    unreached = record(IDS, "identity", (1_000, None, None, 2_000), 14)
    plane = Plane(RECORD, unreached, dropped=3)
    traces = NativeTraces(plane, splits, traced_backends={"triton"}.__contains__)
    assert traces.drain() == 2 and traces.dropped == 3
    assert splits.expected == [
        (TRACE, "00000000000000bb", "identity", "triton", "grpc", "OK", False)
    ]
    assert traces.trace_all()  # splits are wanted: the plane traces every request
    assert not NativeTraces(Plane(), None, traced_backends=bool).trace_all()


def test_a_span_that_fails_midway_leaves_no_id_for_the_gateways_own_spans() -> None:
    class Failing:
        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("exporter broke")

    class Ids:
        def generate_span_id(self) -> int:
            return 7

        def generate_trace_id(self) -> int:
            return 8

    ids = native_traces._ReplayIds(Ids())
    with pytest.raises(RuntimeError):
        native_traces._export(Failing(), ids, native_traces.SpanRecord.of(RECORD), "grpc")  # type: ignore[arg-type]
    assert (ids.generate_span_id(), ids.generate_trace_id()) == (7, 8)  # nothing left queued

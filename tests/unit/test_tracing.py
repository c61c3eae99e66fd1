"""W3C trace context handling and span names (issue 9 item 12): pure, no sockets."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from infergw.gateway.core import tracing
from infergw.gateway.core.config import RouteConfig
from infergw.gateway.core.router import Router
from infergw.gateway.core.service import InferenceService
from tests.fakes import EchoBackend

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("traceparent", "kept"),
    [
        (VALID, True),
        ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later-field", True),  # future
        ("a" * 8000, False),
        (VALID + "-" + "a" * 8000, False),  # too long, even for a later version
        ("00-zz", False),
        ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", False),  # upper case
        (VALID + "-x", False),  # version 00 has exactly four fields
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", False),
        ("00-" + "0" * 32 + "-b7ad6b7169203331-01", False),
        ("00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01", False),
        ("00-é-ü-01", False),
        ("", False),
    ],
    ids=[
        "valid",
        "later-version",
        "8000-chars",
        "too-long",
        "malformed",
        "upper-case",
        "extra-field",
        "version-ff",
        "zero-trace-id",
        "zero-parent-id",
        "non-ascii",
        "empty",
    ],
)
def test_an_invalid_traceparent_is_ignored_with_its_tracestate(
    traceparent: str, kept: bool
) -> None:
    headers = {"traceparent": traceparent, "tracestate": "vendor=1"}
    expected = headers if kept else {}
    assert tracing.trace_context(headers) == expected
    ctx = _service().new_context("rest", headers)
    assert ctx.headers == expected  # what reaches a backend


@pytest.mark.parametrize("state", ["x" * 513, "a=é", "a=1\n"], ids=["long", "non-ascii", "control"])
def test_an_invalid_tracestate_is_dropped_alone(state: str) -> None:
    assert tracing.trace_context({"traceparent": VALID, "tracestate": state}) == {
        "traceparent": VALID
    }


def test_span_names_are_bounded_the_model_is_an_attribute(
    span_exporter: InMemorySpanExporter,
) -> None:
    for model, routed in (("identity", True), ("no-such-model-" + "x" * 100, False)):
        with tracing.server_span(model, "rest", {}, routed):
            pass
        span = tracing.server_span("", "grpc", {})
        with span as opened:
            tracing.set_model(opened, model, routed)
    names = [(s.name, s.attributes["infergw.model"]) for s in span_exporter.get_finished_spans()]
    unknown = "no-such-model-" + "x" * 100
    assert names == [
        ("infer identity", "identity"),
        ("infer identity", "identity"),
        ("infer", unknown),
        ("infer", unknown),
    ]


def _service() -> InferenceService:
    router = Router({"echo": EchoBackend()}, [RouteConfig(model="identity", backend="echo")])
    return InferenceService(router)

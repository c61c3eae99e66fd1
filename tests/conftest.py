"""Fixtures shared by unit and integration tests.

``span_exporter`` installs an OpenTelemetry SDK for one test only. The API's global
tracer provider can be set once per process, so the fixture resets the globals
afterwards, as opentelemetry-python's own tests do (``reset_trace_globals`` in
opentelemetry-test-utils): every other test runs with no SDK, as the gateway does by
default, and sees the no-op fast path.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


def reset_trace_globals() -> None:
    """Forget the installed tracer provider: the API is back to its no-SDK state."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture
def span_exporter() -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider exporting to memory, installed for this test only."""
    reset_trace_globals()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        reset_trace_globals()

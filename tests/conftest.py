"""Fixtures shared by unit and integration tests.

``span_exporter`` installs an OpenTelemetry SDK for one test only. The API's global
tracer provider can be set once per process, so the fixture resets the globals
afterwards, as opentelemetry-python's own tests do (``reset_trace_globals`` in
opentelemetry-test-utils): every other test runs with no SDK, as the gateway does by
default, and sees the no-op fast path.

A SIGTERM to the test run (a CI timeout, say) is handled as Ctrl-C: pytest then runs the
fixtures' teardown, which stops the servers they started. By default it would die at
once and leave them running, as Triton and moto lead process groups of their own.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _interrupt)


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

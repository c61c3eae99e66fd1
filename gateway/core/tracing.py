"""OpenTelemetry spans for the request phases, using only the OpenTelemetry API.

Core code never configures an SDK: without one, every call here is a cheap no-op
(and ``enabled()`` is False so hot paths can skip work). The CLI installs the SDK
(see ``infergw.gateway.telemetry``); tests install an in-memory exporter.

Span layout per request::

    infer {model}                 SERVER  (frontend; continues the client's traceparent)
    ├── decode                    INTERNAL
    ├── queue                     INTERNAL
    ├── backend {name}            CLIENT  (its context is injected into the backend call)
    └── encode                    INTERNAL
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind, Status, StatusCode

_TRACER_NAME = "infergw"


def tracer() -> trace.Tracer:
    return trace.get_tracer(_TRACER_NAME)


def enabled() -> bool:
    """True once an SDK tracer provider has been installed."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


@contextmanager
def server_span(model: str, protocol: str, carrier: Mapping[str, str]) -> Iterator[Span]:
    """The per-request SERVER span, continuing any W3C context in ``carrier``."""
    if not enabled():
        if "traceparent" not in carrier:
            yield _NOOP
            return
        # No SDK: still make the client's context current so it reaches the backend.
        token = otel_context.attach(propagate.extract(carrier))
        try:
            yield _NOOP
        finally:
            otel_context.detach(token)
        return
    parent = propagate.extract(carrier)
    with tracer().start_as_current_span(
        f"infer {model}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"infergw.model": model, "rpc.system": protocol},
    ) as span:
        yield span


@contextmanager
def phase_span(name: str, **attributes: Any) -> Iterator[Span]:
    if not enabled():
        yield _NOOP
        return
    with tracer().start_as_current_span(name, attributes=attributes) as span:
        yield span


@contextmanager
def backend_span(
    backend: str, model: str, attempt: int, headers: MutableMapping[str, str]
) -> Iterator[Span]:
    """A CLIENT span per backend attempt; injects ``traceparent`` into ``headers``."""
    if not enabled():
        propagate.inject(headers)  # forwards a client's context, if one is current
        yield _NOOP
        return
    with tracer().start_as_current_span(
        f"backend {backend}",
        kind=SpanKind.CLIENT,
        attributes={"infergw.backend": backend, "infergw.model": model, "infergw.attempt": attempt},
    ) as span:
        propagate.inject(headers)
        yield span


def record_error(span: Span, exc: BaseException) -> None:
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.set_attribute("error.type", type(exc).__name__)


_NOOP: Span = NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)

"""OpenTelemetry spans for the request phases, using only the OpenTelemetry API.

Core code never configures an SDK. Without one, every function here returns a
shared no-op context manager (``enabled()`` is False), so the hot path pays almost
nothing, and a client's ``traceparent`` still reaches the backend because the
service copies it into ``ctx.headers``. The CLI installs the SDK
(``infergw.gateway.telemetry``); tests install an in-memory exporter for one test
(``span_exporter`` in tests/conftest.py).

Span layout per request::

    infer [{routed model}]        SERVER  (frontend; continues a valid client traceparent)
    ├── decode / encode           INTERNAL (REST frontend)
    └── backend {name}            CLIENT  one per attempt; its context is injected into
                                          the backend call, so the backend's spans join

Every other call (metadata, readiness, statistics, the stream as a whole...) gets a
SERVER span of its own from the frontend's error boundary (``call_span``). A failure
is marked with ``record_error``: status ERROR and the exception's type, never its text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TypeVar

from opentelemetry import propagate, trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind, Status, StatusCode

_TRACER_NAME = "infergw"
# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; a later version may
# append fields ("-..."), version 00 may not; "ff" and all-zero ids are invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-[ -~]*)?")
_MAX_TRACEPARENT = 256  # bounded: nothing longer is forwarded
_MAX_TRACESTATE = 512  # W3C: propagate at least 512 characters; we forward at most that
_SELF_TRACED = "_infergw_traces_itself"
H = TypeVar("H", bound=Callable[..., object])
_NOOP_SPAN: Span = NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
_NOOP: AbstractContextManager[Span] = nullcontext(_NOOP_SPAN)


def enabled() -> bool:
    """True once an SDK tracer provider has been installed.

    Called on every request, so it reads the API's global directly:
    ``trace.get_tracer_provider()`` consults the environment on each call while no
    provider is set, which cost more than all the rest of tracing.
    """
    provider = getattr(trace, "_TRACER_PROVIDER", None)
    return provider is not None and not isinstance(provider, trace.NoOpTracerProvider)


def trace_context(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C ``traceparent`` (and ``tracestate``) worth continuing; ``{}`` if invalid.

    W3C says an invalid ``traceparent`` is ignored (the request starts a new trace) and
    ``tracestate`` goes with it, so neither is forwarded to a backend: an 8,000-character
    or non-ASCII value must not reach a gRPC backend's metadata.
    """
    parent = headers.get("traceparent")
    if not parent or not valid_traceparent(parent):
        return {}
    context = {"traceparent": parent}
    state = headers.get("tracestate")
    if state and len(state) <= _MAX_TRACESTATE and state.isascii() and state.isprintable():
        context["tracestate"] = state
    return context


def valid_traceparent(value: str) -> bool:
    if len(value) > _MAX_TRACEPARENT or not value.isascii():
        return False
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return False
    version, trace_id, parent_id, rest = match.groups()
    return (
        version != "ff"
        and not (version == "00" and rest)
        and trace_id != "0" * 32
        and parent_id != "0" * 16
    )


def server_span(
    model: str, protocol: str, carrier: Mapping[str, str], routed: bool = False
) -> AbstractContextManager[Span]:
    """The per-request SERVER span, continuing any W3C context in ``carrier``.

    Named ``infer {model}`` only for a ``routed`` model (one with a route), else plain
    ``infer``: names must stay few, and a client can send any model name. The model is
    always the ``infergw.model`` attribute. ``model`` may be "" until the request is
    decoded (then ``set_model``). An exception leaving the span sets its status; its
    text is not recorded (it may hold secrets).
    """
    if not enabled():
        return _NOOP
    return trace.get_tracer(_TRACER_NAME).start_as_current_span(
        f"infer {model}" if model and routed else "infer",
        context=propagate.extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"infergw.model": model, "rpc.system": protocol},
        record_exception=False,
    )


def set_model(span: Span, model: str, routed: bool = False) -> None:
    """Name a server span once the request is decoded (it is opened before, to cover decoding).

    As in ``server_span``, only a ``routed`` model names the span.
    """
    if span.is_recording():
        if routed:
            span.update_name(f"infer {model}")
        span.set_attribute("infergw.model", model)


def call_span(name: str, protocol: str, carrier: Mapping[str, str]) -> AbstractContextManager[Span]:
    """The SERVER span of one call other than an inference, e.g. ``ModelMetadata``.

    Not made current: such calls start no child spans, and a stream's span stays open
    across the yields of an async generator, where attaching a context is unsafe.
    An exception leaving the block marks the span.
    """
    if not enabled():
        return _NOOP
    return _call_span(name, protocol, carrier)


@contextmanager
def _call_span(name: str, protocol: str, carrier: Mapping[str, str]) -> Iterator[Span]:
    span = trace.get_tracer(_TRACER_NAME).start_span(
        name,
        context=propagate.extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": protocol, "rpc.method": name},
    )
    try:
        yield span
    except BaseException as exc:
        record_error(span, exc)
        raise
    finally:
        span.end()


def phase_span(name: str, **attributes: str) -> AbstractContextManager[Span]:
    """An INTERNAL child span for one phase (decode, encode...)."""
    if not enabled():
        return _NOOP
    return trace.get_tracer(_TRACER_NAME).start_as_current_span(name, attributes=attributes)


def backend_span(
    backend: str, model: str, attempt: int, headers: MutableMapping[str, str]
) -> AbstractContextManager[Span]:
    """A CLIENT span per backend attempt; injects its ``traceparent`` into ``headers``."""
    if not enabled():
        return _NOOP
    return _backend_span(backend, model, attempt, headers)


@contextmanager
def _backend_span(
    backend: str, model: str, attempt: int, headers: MutableMapping[str, str]
) -> Iterator[Span]:
    with trace.get_tracer(_TRACER_NAME).start_as_current_span(
        f"backend {backend}",
        kind=SpanKind.CLIENT,
        attributes={"infergw.backend": backend, "infergw.model": model, "infergw.attempt": attempt},
    ) as span:
        propagate.inject(headers)
        yield span


def traces_itself(handler: H) -> H:
    """Mark a request handler that opens, marks and counts its own SERVER span (infer,
    TF Serving's predict), so that the frontend's error boundary does not open another."""
    setattr(handler, _SELF_TRACED, True)
    return handler


def is_self_traced(handler: object) -> bool:
    return bool(getattr(handler, _SELF_TRACED, False))


def record_error(span: Span, exc: BaseException) -> None:
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.set_attribute("error.type", type(exc).__name__)

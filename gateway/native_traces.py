"""The native plane's traced requests, made spans of the gateway's trace (issue 13).

The plane continues the client's ``traceparent`` itself, gives each traced request the
ids of a SERVER span (``infer {model}``) and of a CLIENT span (``backend {name}``), sends
the backend a ``traceparent`` naming the CLIENT span, and queues a record with the real
times (``native/src/trace.rs``). ``NativeTraces.drain`` takes the records and

- exports both spans through the installed OpenTelemetry SDK, with the plane's ids and
  times (the SDK makes no span with given ids, so its public extension point, the
  provider's ``IdGenerator``, is wrapped to hand out the plane's ids while these spans
  are made), named and attributed as ``gateway/core/tracing.py`` names the Python
  plane's;
- tells Triton's per-request split (``triton_traces.TritonSplits``) which attempts to
  expect, so ``backend_queue``/``compute`` join native requests as they join the others.

It runs every ``interval_s`` on the gateway's loop, and before the splits read Triton's
exports or answer ``/v1/splits`` (a record is queued when its response ends, before
Triton exports its spans). ``set_trace_all`` keeps the plane tracing every request while
an SDK is installed or splits are wanted; otherwise the plane traces nothing and a
client's ``traceparent`` reaches the backend unchanged, as on the Python plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from infergw.gateway.core import tracing
from infergw.gateway.native_plane import status_name

log = logging.getLogger(__name__)
TRACER_NAME = "infergw.native"
NATIVE_TRACES_INTERVAL_S = 0.1  # how often the plane's span records are drained


class SpanRecord(NamedTuple):
    """One traced native request (``Plane.take_spans``): ids in hex, unix ns; ``method``
    is the gRPC method a sidecar forwarded, ``VERB /path`` for its REST half ("" for the
    gateway's inference)."""

    trace_id: str
    parent_id: str | None
    server_id: str
    client_id: str
    flags: int
    model: str
    backend: str
    start_ns: int
    backend_start_ns: int | None
    backend_end_ns: int | None
    end_ns: int
    code: int
    method: str = ""

    @classmethod
    def of(cls, raw: tuple[Any, ...]) -> SpanRecord:
        """From the plane's ``(ids, names, times, code)`` tuple."""
        (trace_id, parent, server, client, flags), (method, model, backend), times, code = raw
        start, backend_start, backend_end, end = times
        return cls(trace_id, parent, server, client, flags, model, backend, start,
                   backend_start, backend_end, end, code, method)  # fmt: skip

    @property
    def status(self) -> str:
        return status_name(self.code)


class SpanSource(Protocol):
    def take_spans(self) -> tuple[Sequence[tuple[object, ...]], int]: ...

    def set_trace_all(self, all: bool) -> None: ...


class Expectations(Protocol):
    """Where attempts sent to Triton are announced (``TritonSplits.expect_attempt``)."""

    def expect_attempt(
        self,
        trace_id: str,
        span_id: str,
        model: str,
        backend: str,
        protocol: str,
        status: str,
        recorded: bool,
    ) -> None: ...


class IdGenerator(Protocol):
    """The SDK's ``opentelemetry.sdk.trace.id_generator.IdGenerator`` (the SDK is an
    optional extra: nothing of it is imported here)."""

    def generate_span_id(self) -> int: ...

    def generate_trace_id(self) -> int: ...


class _ReplayIds:
    """The provider's id generator, except while the plane's spans are made: then the
    ids queued for this thread, in order."""

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner
        self._queued = threading.local()

    def replay(self, *ids: int) -> None:
        self._queued.ids = list(ids)

    def _next(self) -> int | None:
        ids: list[int] | None = getattr(self._queued, "ids", None)
        return ids.pop(0) if ids else None

    def generate_span_id(self) -> int:
        queued = self._next()
        return self.inner.generate_span_id() if queued is None else queued

    def generate_trace_id(self) -> int:
        queued = self._next()
        return self.inner.generate_trace_id() if queued is None else queued

    def is_trace_id_random(self) -> bool:
        """W3C's random flag: the plane's trace ids are random too (SipHash, random keys)."""
        return True


class NativeTraces:
    """Drains the plane's span records into the SDK and the Triton splits, and on the same
    tick the plane's other queues (``also``: the serverless answers for the warm-state
    estimator, ``NativeFront.feed_warmth``)."""

    def __init__(
        self,
        plane: SpanSource,
        splits: Expectations | None,
        traced_backends: Callable[[str], bool],
        protocol: str = "grpc",
        also: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.plane = plane
        self.splits = splits
        self.traced_backends = traced_backends  # backends whose spans the splits join
        self.protocol = protocol
        self.also = tuple(also)
        self.dropped = 0
        self._tracer: tuple[object, trace.Tracer, _ReplayIds] | None = None

    def drain(self) -> int:
        """Export and announce every record so far; how many there were."""
        records, dropped = self.plane.take_spans()
        if dropped > self.dropped:
            log.warning(
                "native plane: %d span records dropped so far (not drained in time)", dropped
            )
            self.dropped = dropped
        sdk = self._sdk_tracer()
        for raw in records:
            record = SpanRecord.of(raw)
            called = record.backend_start_ns is not None  # the backend saw the traceparent
            if self.splits is not None and called and self.traced_backends(record.backend):
                self.splits.expect_attempt(
                    record.trace_id,
                    record.client_id,
                    record.model,
                    record.backend,
                    self.protocol,
                    record.status,
                    recorded=sdk is not None,
                )
            if sdk is not None:
                _export(sdk[0], sdk[1], record, self.protocol)
        return len(records)

    def _sdk_tracer(self) -> tuple[trace.Tracer, _ReplayIds] | None:
        if not tracing.enabled():
            return None
        provider = trace.get_tracer_provider()
        if self._tracer is None or self._tracer[0] is not provider:
            ids = getattr(provider, "id_generator", None)  # the SDK's TracerProvider has one
            if ids is None:
                return None
            if not isinstance(ids, _ReplayIds):
                ids = _ReplayIds(ids)
                provider.id_generator = ids  # type: ignore[attr-defined]
            self._tracer = (provider, provider.get_tracer(TRACER_NAME), ids)
        return self._tracer[1], self._tracer[2]

    def trace_all(self) -> bool:
        return self.splits is not None or tracing.enabled()

    def start(self, interval_s: float) -> asyncio.Task[None]:
        """The plane in the right mode now, and the draining task (``stop`` ends it)."""
        self.plane.set_trace_all(self.trace_all())
        return asyncio.create_task(self.run(interval_s))

    async def run(self, interval_s: float) -> None:
        """Drain every ``interval_s`` until cancelled, keeping the plane's mode current."""
        while True:
            try:
                self.plane.set_trace_all(self.trace_all())
                self.drain()
            except Exception:  # a bad record must not end the draining
                log.exception("native plane: draining span records failed")
            self._drain_also()
            await asyncio.sleep(interval_s)

    async def stop(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.drain()
        self._drain_also()

    def _drain_also(self) -> None:
        for drain in self.also:
            try:
                drain()
            except Exception:
                log.exception("native plane: draining %s failed", getattr(drain, "__name__", drain))


def _export(tracer: trace.Tracer, ids: _ReplayIds, record: SpanRecord, protocol: str) -> None:
    """The SERVER and CLIENT spans of one record, with its ids and times. No id is left
    queued, whatever happens: the gateway's own spans on this thread take the SDK's."""
    try:
        _spans(tracer, ids, record, protocol)
    finally:
        ids.replay()


def _spans(tracer: trace.Tracer, ids: _ReplayIds, record: SpanRecord, protocol: str) -> None:
    trace_id = int(record.trace_id, 16)
    flags = trace.TraceFlags(record.flags & 0xFF)
    if record.parent_id is not None:
        parent = SpanContext(trace_id, int(record.parent_id, 16), is_remote=True, trace_flags=flags)
        context = trace.set_span_in_context(NonRecordingSpan(parent))
        ids.replay(int(record.server_id, 16))
    else:
        context = Context()  # a root: not whatever span is current where we drain
        ids.replay(trace_id, int(record.server_id, 16))
    failed = record.code != 0
    name, attributes = _server_span(record, protocol)
    server = tracer.start_span(
        name, context=context, kind=SpanKind.SERVER, attributes=attributes,
        start_time=record.start_ns,
    )  # fmt: skip
    if record.backend_start_ns is not None and record.backend_end_ns is not None:
        ids.replay(int(record.client_id, 16))
        client = tracer.start_span(
            f"backend {record.backend}",
            context=trace.set_span_in_context(server),
            kind=SpanKind.CLIENT,
            attributes={
                "infergw.backend": record.backend,
                "infergw.model": record.model,
                "infergw.attempt": 1,
            },
            start_time=record.backend_start_ns,
        )
        if failed:
            _mark(client, record.status)
        client.end(end_time=record.backend_end_ns)
    if failed:
        _mark(server, record.status)
    server.end(end_time=record.end_ns)


def _server_span(record: SpanRecord, protocol: str) -> tuple[str, dict[str, str]]:
    """The SERVER span's name and attributes, as the Python plane gives them: the gateway's
    ``infer {model}`` (``core/tracing.server_span``), the sidecar's method name with its
    ``rpc.*`` attributes (``sidecar/grpc_proxy.py``), or for its REST half (a record's
    ``method`` is ``VERB /path``) ``VERB infer`` or ``VERB /path`` (``http_proxy.py``)."""
    if not record.method:
        return f"infer {record.model}", {"infergw.model": record.model, "rpc.system": protocol}
    if not record.method.startswith("/"):
        verb, _, path = record.method.partition(" ")
        attributes = {"http.request.method": verb, "url.path": path}
        if record.model:
            attributes["infergw.model"] = record.model
        return f"{verb} {'infer' if record.model else path}", attributes
    name = record.method.lstrip("/")
    service, _, method = name.partition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    if record.model:
        attributes["infergw.model"] = record.model
    return name, attributes


def _mark(span: trace.Span, status: str) -> None:
    span.set_status(Status(StatusCode.ERROR, status))
    span.set_attribute("error.type", status)

"""Per-request ``backend_queue`` and ``compute`` for Triton, from Triton's own spans.

Triton puts no timing in its responses, but with OpenTelemetry tracing (``rate=0``: only
requests that carry a ``traceparent``) it exports, per request, the spans
``InferRequest`` -> ``{model}`` (event ``QUEUE_START``) -> ``compute`` (events
``COMPUTE_START``, ``COMPUTE_INPUT_END``, ``COMPUTE_OUTPUT_START``, ``COMPUTE_END``),
the first one a child of the span context the caller sent. So:

1. ``TraceAttempts`` (a policy, innermost, under ``Attempt``) gives every call to a
   Triton backend a ``traceparent`` of its own: the attempt's CLIENT span when an SDK is
   installed, else a fresh span id in the client's trace (or a new trace), and expects
   Triton's spans for that ``(trace id, span id)``.
2. ``receiver_app`` takes Triton's OTLP/HTTP export (JSON, as Triton sends it; protobuf
   too when ``opentelemetry-proto`` is installed) on a port of its own; ``SpanJoin``
   pieces each request's three spans together, whatever export batch each came in.
3. A joined request becomes a ``Split``: its durations go into the gateway's phase
   histograms, into the gateway's trace as ``backend_queue``/``compute`` child spans of
   the attempt's span (when an SDK is installed), and into a bounded ring of recent
   splits keyed by trace id, which ``GET /v1/splits`` on the metrics port serves to load
   generators: they arrive after the response, so nothing else could carry them.

The durations are Triton's own statistics' definitions: queue = ``COMPUTE_START -
QUEUE_START``, compute input/infer/output between the compute events. An attempt with
no spans after ``pending_timeout_s`` is recorded as unknown, never as zero: Triton 2.51
ignores the propagated context of a few percent of requests, at random (with ``rate=1``
it starts a new root trace for them, with ``rate=0`` it traces them not at all; the same
traceparent sent again is traced), more of them under load.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import orjson
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from infergw.gateway.core import tracing
from infergw.gateway.core.backend import Backend
from infergw.gateway.core.config import GatewayConfig, TritonReceiverConfig
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.metrics import GatewayMetrics
from infergw.gateway.core.policies import Attempt, Policy
from infergw.gateway.core.router import Router
from infergw.gateway.sites import AppSite
from infergw.vocab.errors import InferGWError
from infergw.vocab.timing import TimingEntry
from infergw.vocab.types import InferRequest, InferResponse

log = logging.getLogger(__name__)

TRACED_KINDS = frozenset({"triton"})  # backend kinds whose exported spans SpanJoin reads
TRACES_PATH = "/v1/traces"
SPLITS_PATH = "/v1/splits"
MAX_IDS = 200  # trace ids in one /v1/splits?ids= query (33 bytes each: the URL fits 8 KB)
MIN_PREFIX = 8  # hex digits of a /v1/splits?prefix= query
MAX_EXPORT_BYTES = 64 * 1024 * 1024
_HEX = frozenset("0123456789abcdef")
_EVENTS = ("COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END")
V = TypeVar("V")


# --- Triton's spans ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """The part of one exported span the join needs (ids as lower-case hex)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    events: Mapping[str, int]  # event name -> unix ns (the first of each name)
    model: str = ""  # triton.model_name, on the model span


@dataclass(frozen=True, slots=True)
class TritonTimes:
    """One request as Triton timed it, in unix nanoseconds, joined to its caller's span."""

    trace_id: str
    parent_id: str  # the caller's span id: what it sent in ``traceparent``
    model: str
    queue_start: int
    compute_start: int
    compute_input_end: int
    compute_output_start: int
    compute_end: int


class BadExport(ValueError):
    """An OTLP body that cannot be read (answered 400)."""


def spans_from_json(body: bytes) -> Iterator[SpanRecord]:
    """The spans of an OTLP/HTTP JSON ``ExportTraceServiceRequest`` (ids in hex, as OTLP
    JSON encodes them)."""
    try:
        document = orjson.loads(body)
        for resource in document.get("resourceSpans") or ():
            for scope in resource.get("scopeSpans") or ():
                for span in scope.get("spans") or ():
                    events: dict[str, int] = {}
                    for event in span.get("events") or ():
                        events.setdefault(str(event["name"]), int(event["timeUnixNano"]))
                    yield SpanRecord(
                        trace_id=str(span.get("traceId", "")).lower(),
                        span_id=str(span.get("spanId", "")).lower(),
                        parent_id=str(span.get("parentSpanId", "")).lower(),
                        name=str(span.get("name", "")),
                        events=events,
                        model=_json_model(span.get("attributes") or ()),
                    )
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise BadExport(f"not an OTLP JSON trace export: {type(exc).__name__}") from exc


def _json_model(attributes: Iterable[Mapping[str, object]]) -> str:
    for attribute in attributes:
        if attribute.get("key") == "triton.model_name":
            value = attribute.get("value")
            return str(value.get("stringValue", "")) if isinstance(value, Mapping) else ""
    return ""


def spans_from_protobuf(body: bytes) -> Iterator[SpanRecord]:
    """The same from the protobuf encoding (needs ``opentelemetry-proto``: infergw[otel])."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    try:
        request = ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise BadExport("not an OTLP protobuf trace export") from exc
    for resource in request.resource_spans:
        for scope in resource.scope_spans:
            for span in scope.spans:
                events: dict[str, int] = {}
                for event in span.events:
                    events.setdefault(event.name, event.time_unix_nano)
                model = next(
                    (a.value.string_value for a in span.attributes if a.key == "triton.model_name"),
                    "",
                )
                yield SpanRecord(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex(),
                    name=span.name,
                    events=events,
                    model=model,
                )


class SpanJoin:
    """Joins ``InferRequest`` -> model span -> ``compute`` into ``TritonTimes``.

    Spans end, and so are exported, child first, and one request's spans may arrive in
    different exports: each kind waits in a bounded, oldest-first table until its
    relatives come (a request that never completes, e.g. a failed one, is evicted by
    newer ones). Keys are (trace id, span id), never the trace id alone: a client may send
    one trace id with many requests, and retries share theirs.
    """

    def __init__(self, max_partial: int = 65536) -> None:
        self.max_partial = max_partial
        self._requests: OrderedDict[tuple[str, str], str] = OrderedDict()  # R -> caller
        self._models: OrderedDict[tuple[str, str], SpanRecord] = OrderedDict()  # M
        self._model_of_request: dict[tuple[str, str], str] = {}  # R -> M
        self._computes: OrderedDict[tuple[str, str], SpanRecord] = OrderedDict()  # M -> compute

    def add(self, spans: Iterable[SpanRecord]) -> list[TritonTimes]:
        joined: list[TritonTimes] = []
        for span in spans:
            trace_id = span.trace_id
            if span.name == "compute" and "COMPUTE_START" in span.events:
                self._put(self._computes, (trace_id, span.parent_id), span)
                found = self._complete(trace_id, span.parent_id)
            elif "QUEUE_START" in span.events:  # the model span
                self._put(self._models, (trace_id, span.span_id), span)
                self._model_of_request[(trace_id, span.parent_id)] = span.span_id
                found = self._complete(trace_id, span.span_id)
            elif span.name == "InferRequest":
                self._put(self._requests, (trace_id, span.span_id), span.parent_id)
                model_id = self._model_of_request.get((trace_id, span.span_id))
                found = self._complete(trace_id, model_id) if model_id else None
            else:
                continue
            if found is not None:
                joined.append(found)
        return joined

    @property
    def partial(self) -> int:
        return len(self._requests) + len(self._models) + len(self._computes)

    def _put(self, table: OrderedDict[tuple[str, str], V], key: tuple[str, str], value: V) -> None:
        table[key] = value
        while len(table) > self.max_partial:
            old_key, old = table.popitem(last=False)
            if isinstance(old, SpanRecord) and table is self._models:
                self._model_of_request.pop((old_key[0], old.parent_id), None)

    def _complete(self, trace_id: str, model_id: str) -> TritonTimes | None:
        key = (trace_id, model_id)
        model, compute = self._models.get(key), self._computes.get(key)
        if model is None or compute is None:
            return None
        request_key = (trace_id, model.parent_id)
        caller = self._requests.get(request_key)
        if caller is None:
            return None
        del self._models[key], self._computes[key], self._requests[request_key]
        self._model_of_request.pop(request_key, None)
        events = compute.events
        if any(name not in events for name in _EVENTS):
            return None
        return TritonTimes(
            trace_id=trace_id,
            parent_id=caller,
            model=model.model or model.name,
            queue_start=model.events["QUEUE_START"],
            compute_start=events["COMPUTE_START"],
            compute_input_end=events["COMPUTE_INPUT_END"],
            compute_output_start=events["COMPUTE_OUTPUT_START"],
            compute_end=events["COMPUTE_END"],
        )


# --- the gateway's side: expected attempts, splits, the ring -------------------------


@dataclass(slots=True)
class Expected:
    """An attempt sent to Triton with our ``traceparent``, awaiting Triton's spans."""

    model: str
    backend: str
    protocol: str
    since: float  # time.monotonic()
    recorded: bool  # the attempt has an SDK span: child spans can be added under it
    status: str = "OK"  # the attempt's outcome (a gRPC code name), set when it ends


@dataclass(frozen=True, slots=True)
class Split:
    """One attempt's time inside Triton, in ms; ``None`` everywhere when unknown."""

    trace_id: str
    span_id: str  # the attempt's: the parent of Triton's InferRequest span
    model: str
    backend: str
    backend_queue_ms: float | None = None
    compute_input_ms: float | None = None
    compute_infer_ms: float | None = None
    compute_output_ms: float | None = None

    @property
    def compute_ms(self) -> float | None:
        parts = (self.compute_input_ms, self.compute_infer_ms, self.compute_output_ms)
        return None if None in parts else sum(p for p in parts if p is not None)

    def as_dict(self) -> dict[str, object]:
        return {
            "span_id": self.span_id,
            "model": self.model,
            "backend": self.backend,
            "backend_queue_ms": self.backend_queue_ms,
            "compute_ms": self.compute_ms,
            "compute_input_ms": self.compute_input_ms,
            "compute_infer_ms": self.compute_infer_ms,
            "compute_output_ms": self.compute_output_ms,
        }


def _ms(start_ns: int, end_ns: int) -> float:
    return max(end_ns - start_ns, 0) / 1e6


@dataclass(eq=False)  # hashable: a registry keys its collectors
class SplitStats(Collector):
    """``infergw_triton_splits_total`` by outcome, on the gateway's metrics registry."""

    joined: int = 0
    unknown: int = 0  # expected, no spans in time (or pushed out of the table)
    unmatched: int = 0  # Triton spans no attempt of ours expected (other callers, new roots)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "infergw_triton_splits",
            "Triton attempts by per-request split outcome (joined, unknown), and unmatched spans",
            labels=("outcome",),
        )
        for outcome in ("joined", "unknown", "unmatched"):
            family.add_metric([outcome], getattr(self, outcome))
        yield family


class TritonSplits:
    """The expected attempts, the join, and the ring of recent splits of one gateway."""

    def __init__(
        self,
        config: TritonReceiverConfig,
        metrics: GatewayMetrics,
        model_label: Callable[[str], str] = str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.model_label = model_label
        self.clock = clock
        self.join = SpanJoin(config.ring_size)
        self.stats = SplitStats()
        metrics.registry.register(self.stats)
        self._expected: OrderedDict[tuple[str, str], Expected] = OrderedDict()
        self._ring: OrderedDict[str, list[Split]] = OrderedDict()
        # Called before Triton's spans are joined or the ring is read: attempts announced
        # elsewhere (the native plane's, ``native_traces.NativeTraces.drain``) come first.
        self.feeds: list[Callable[[], object]] = []

    # -- the request path ---------------------------------------------------------------

    def expect(self, headers: dict[str, str], model: str, backend: str, protocol: str) -> Expected:
        """Make sure ``headers`` carry a ``traceparent`` of this attempt's own; expect it.

        With an SDK the attempt's CLIENT span was injected just before (``Attempt``): its
        ids are used, so Triton's spans continue the gateway's trace. Without one, the
        client's trace id (if any) gets a fresh span id: each attempt stays distinct.
        """
        parent = headers.get("traceparent")
        recorded = parent is not None and tracing.enabled()
        if recorded and parent is not None:
            trace_id, span_id = parent[3:35], parent[36:52]
        else:
            trace_id = parent[3:35] if parent else f"{random.getrandbits(128) or 1:032x}"
            span_id = f"{random.getrandbits(64) or 1:016x}"
            headers["traceparent"] = f"00-{trace_id}-{span_id}-01"
        expected = Expected(model, backend, protocol, self.clock(), recorded)
        self._expect(trace_id, span_id, expected)
        return expected

    def expect_attempt(
        self,
        trace_id: str,
        span_id: str,
        model: str,
        backend: str,
        protocol: str,
        status: str,
        recorded: bool,
    ) -> None:
        """An attempt made elsewhere with a ``traceparent`` of its own (``span_id``): the
        native plane's CLIENT span, announced once its call ended."""
        self._expect(
            trace_id, span_id, Expected(model, backend, protocol, self.clock(), recorded, status)
        )

    def _expect(self, trace_id: str, span_id: str, expected: Expected) -> None:
        self._expected[(trace_id, span_id)] = expected
        if len(self._expected) > self.config.ring_size:
            (old_trace, old_span), old = self._expected.popitem(last=False)
            self._unknown(old_trace, old_span, old)

    def _feed(self) -> None:
        for feed in self.feeds:
            feed()

    # -- Triton's exports ---------------------------------------------------------------

    def receive(self, spans: Iterable[SpanRecord]) -> int:
        """Join an export's spans; returns how many attempts got their split."""
        self._feed()
        done = 0
        for times in self.join.add(spans):
            expected = self._expected.pop((times.trace_id, times.parent_id), None)
            if expected is None:
                self.stats.unmatched += 1
                continue
            self._record(times, expected)
            done += 1
        self.expire()
        return done

    def expire(self) -> None:
        """Attempts whose spans did not come within ``pending_timeout_s`` become unknown."""
        deadline = self.clock() - self.config.pending_timeout_s
        expected = self._expected
        while expected:
            key, oldest = next(iter(expected.items()))
            if oldest.since > deadline:
                break
            del expected[key]
            self._unknown(key[0], key[1], oldest)

    def _record(self, times: TritonTimes, expected: Expected) -> None:
        split = Split(
            trace_id=times.trace_id,
            span_id=times.parent_id,
            model=expected.model,
            backend=expected.backend,
            backend_queue_ms=_ms(times.queue_start, times.compute_start),
            compute_input_ms=_ms(times.compute_start, times.compute_input_end),
            compute_infer_ms=_ms(times.compute_input_end, times.compute_output_start),
            compute_output_ms=_ms(times.compute_output_start, times.compute_end),
        )
        self.stats.joined += 1
        self._keep(split)
        detail = f"backend={expected.backend}"
        entries = (
            TimingEntry("backend_queue", split.backend_queue_ms or 0.0, detail),
            TimingEntry("compute", split.compute_ms or 0.0, detail),
        )
        self.metrics.observe_phases(
            self.model_label(expected.model),
            expected.backend,
            expected.protocol,
            expected.status,
            entries,
        )
        if expected.recorded and tracing.enabled():
            _child_spans(times, expected)

    def _unknown(self, trace_id: str, span_id: str, expected: Expected) -> None:
        self.stats.unknown += 1
        self._keep(Split(trace_id, span_id, expected.model, expected.backend))

    def _keep(self, split: Split) -> None:
        ring = self._ring
        entries = ring.get(split.trace_id)
        if entries is None:
            ring[split.trace_id] = [split]
            if len(ring) > self.config.ring_size:
                ring.popitem(last=False)
        else:
            entries.append(split)

    # -- reading the ring ---------------------------------------------------------------

    def lookup(self, trace_ids: Iterable[str]) -> dict[str, object]:
        """``/v1/splits``' document for these trace ids."""
        self._feed()
        self.expire()
        wanted = set(trace_ids)
        pending = {t for t, _ in self._expected if t in wanted}
        return self._document({t: self._ring[t] for t in wanted if t in self._ring}, pending)

    def lookup_prefix(self, prefix: str) -> dict[str, object]:
        self._feed()
        self.expire()
        pending = {t for t, _ in self._expected if t.startswith(prefix)}
        found = {t: s for t, s in self._ring.items() if t.startswith(prefix)}
        return self._document(found, pending)

    def _document(self, found: Mapping[str, list[Split]], pending: set[str]) -> dict[str, object]:
        return {
            "splits": {t: [s.as_dict() for s in splits] for t, splits in found.items()},
            "pending": sorted(pending),
        }


def _child_spans(times: TritonTimes, expected: Expected) -> None:
    """``backend_queue`` and ``compute`` spans under the attempt's CLIENT span, with
    Triton's timestamps (both clocks are the host's unix time)."""
    parent = SpanContext(
        int(times.trace_id, 16),
        int(times.parent_id, 16),
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    tracer = trace.get_tracer("infergw")
    attributes = {"infergw.backend": expected.backend, "infergw.model": expected.model}
    for name, start, end in (
        ("backend_queue", times.queue_start, times.compute_start),
        ("compute", times.compute_start, times.compute_end),
    ):
        span = tracer.start_span(name, context=context, start_time=start, attributes=attributes)
        span.end(end_time=end)


# --- the policy --------------------------------------------------------------------


class TraceAttempts(Policy):
    """Innermost: every call to the backend carries a traceparent whose spans we expect."""

    def __init__(self, inner: Backend, splits: TritonSplits) -> None:
        super().__init__(inner)
        self.splits = splits

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        expected = self.splits.expect(ctx.headers, request.model, self.name, ctx.protocol)
        try:
            return await self.inner.infer(request, ctx)
        except InferGWError as exc:
            expected.status = exc.grpc_code
            raise
        except Exception:
            expected.status = "INTERNAL"
            raise


def trace_attempts(router: Router, config: GatewayConfig, splits: TritonSplits) -> None:
    """Put ``TraceAttempts`` innermost in each Triton backend's stack: right under its
    ``Attempt``, whose CLIENT span it reuses (the rest of the stack is the router's)."""
    for cfg in config.backends:
        if cfg.kind not in TRACED_KINDS:
            continue
        policy = router.backends[cfg.name]
        while isinstance(policy, Policy) and not isinstance(policy, Attempt):
            policy = policy.inner
        if isinstance(policy, Attempt):
            policy.inner = TraceAttempts(policy.inner, splits)


# --- HTTP: the receiver and /v1/splits -----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Decoder:
    content_type: str
    decode: Callable[[bytes], Iterator[SpanRecord]]
    ok_body: bytes


DECODERS = (
    _Decoder("application/json", spans_from_json, b"{}"),
    _Decoder("application/x-protobuf", spans_from_protobuf, b""),
)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def receiver_app(splits: TritonSplits) -> web.Application:
    """``POST /v1/traces``: OTLP/HTTP, JSON or protobuf, as an OTLP collector takes it."""

    async def export(request: web.Request) -> web.Response:
        decoder = next((d for d in DECODERS if d.content_type == request.content_type), None)
        if decoder is None:
            kinds = ", ".join(d.content_type for d in DECODERS)
            return _error(415, f"content type must be one of {kinds}")
        body = await request.read()
        try:
            splits.receive(list(decoder.decode(body)))
        except BadExport as exc:
            log.warning("Triton trace export rejected (%d bytes): %s", len(body), exc)
            return _error(400, str(exc))
        except ImportError:
            return _error(415, "protobuf exports need opentelemetry-proto (infergw[otel])")
        return web.Response(body=decoder.ok_body, content_type=decoder.content_type)

    app = web.Application(client_max_size=MAX_EXPORT_BYTES)
    app.router.add_post(TRACES_PATH, export)
    return app


def splits_handler(splits: TritonSplits) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /v1/splits?ids=T1,T2`` or ``?prefix=HEX``: recent splits by trace id.

    The answer: ``{"splits": {trace_id: [split, ...]}, "pending": [trace_id, ...]}``;
    one split per attempt, its values ``null`` when unknown; a pending id's spans have
    not arrived yet; an id in neither was not sent to a traced backend (or has left the
    ring).
    """

    async def handle(request: web.Request) -> web.Response:
        ids, prefix = request.query.get("ids"), request.query.get("prefix")
        if (ids is None) == (prefix is None):
            return _error(400, "give exactly one of ids=TRACE_ID,... or prefix=HEX")
        if prefix is not None:
            prefix = prefix.lower()
            if len(prefix) < MIN_PREFIX or len(prefix) > 32 or not set(prefix) <= _HEX:
                return _error(400, f"prefix must be {MIN_PREFIX} to 32 hex digits")
            return web.json_response(splits.lookup_prefix(prefix), dumps=_dumps)
        wanted = [t.strip().lower() for t in (ids or "").split(",") if t.strip()]
        if not wanted or len(wanted) > MAX_IDS:
            return _error(400, f"ids must list 1 to {MAX_IDS} trace ids")
        if any(len(t) != 32 or not set(t) <= _HEX for t in wanted):
            return _error(400, "each id must be a trace id: 32 hex digits")
        return web.json_response(splits.lookup(wanted), dumps=_dumps)

    return handle


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def receiver_site(splits: TritonSplits) -> AppSite:
    """The receiver on its own port: plaintext (Triton's exporter takes an ``http://`` URL),
    so ``config.host`` should be one only Triton reaches."""
    return AppSite(receiver_app(splits), splits.config.host, splits.config.port)

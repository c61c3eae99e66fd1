"""Spans for one proxied call: SERVER (continuing the client's trace) + CLIENT (upstream).

Built on ``infergw.gateway.core.tracing``: without an SDK installed it costs one check
and the client's ``traceparent`` travels upstream untouched (it is ordinary metadata).
With one, the upstream receives the CLIENT span's context instead, so Triton's own
spans join the trace under the sidecar's.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from infergw.gateway.core import tracing

TRACE_KEYS = frozenset({"traceparent", "tracestate"})
_NOOP: AbstractContextManager[object] = nullcontext()


def proxy_spans(
    name: str,
    carrier: Mapping[str, str],
    attributes: Mapping[str, str],
    model: str | None,
    injected: dict[str, str],
) -> AbstractContextManager[object]:
    """Enter both spans; fills ``injected`` with the headers to send upstream (if tracing)."""
    if not tracing.enabled():
        return _NOOP
    stack = ExitStack()
    attrs = dict(attributes)
    if model:
        attrs["infergw.model"] = model
    stack.enter_context(
        trace.get_tracer("infergw.sidecar").start_as_current_span(
            name, context=propagate.extract(carrier), kind=SpanKind.SERVER, attributes=attrs
        )
    )
    stack.enter_context(tracing.backend_span("upstream", model or "", 1, injected))
    return stack

"""OpenTelemetry SDK set-up. Only entry points (the CLI) call this; core uses the API.

Export is off unless an OTLP/HTTP traces endpoint is configured (config
``tracing.otlp_endpoint`` or the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``).
"""

from __future__ import annotations

import os

from infergw.gateway.core.config import TracingConfig


def configure_tracing(config: TracingConfig) -> bool:
    """Install an SDK tracer provider exporting OTLP/HTTP; returns whether it did."""
    endpoint = config.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise SystemExit("tracing export needs the SDK: pip install 'infergw[otel]'") from exc
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    return True


def shutdown_tracing() -> None:
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()

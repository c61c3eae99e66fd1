"""Prometheus histograms per phase, labelled by model, backend, protocol and status.

One ``GatewayMetrics`` per gateway, on its own registry (so tests and several
gateways in one process do not collide). Label children are cached because
label lookup dominates the cost of an observation.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from infergw.gateway.core.timing import TimingEntry

# Sub-millisecond to a minute: gateway overheads and serverless cold starts alike.
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
LABELS = ("model", "backend", "protocol", "status")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.phase = Histogram(
            "infergw_phase_duration_seconds",
            "Time per request phase (Server-Timing vocabulary)",
            ("phase", *LABELS),
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "infergw_requests", "Inference requests", LABELS, registry=self.registry
        )
        self._children: dict[tuple[str, ...], object] = {}

    def observe(
        self, model: str, backend: str, protocol: str, status: str, entries: tuple[TimingEntry, ...]
    ) -> None:
        labels = (model, backend, protocol, status)
        self.requests.labels(*labels).inc()
        for entry in entries:
            key = (entry.name, *labels)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.phase.labels(*key)
            child.observe(entry.duration_ms / 1000.0)  # type: ignore[attr-defined]

    def render(self) -> bytes:
        return generate_latest(self.registry)

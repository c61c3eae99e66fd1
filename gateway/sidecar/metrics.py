"""Sidecar metrics: the gateway's per-phase histograms plus a counter of every RPC.

Inference calls (ModelInfer, Predict, ..., and OIP REST ``/infer``) go into
``GatewayMetrics`` labelled by model, backend ``upstream``, protocol and status, as
the gateway's own do. Model names come from clients, so a name becomes a label only
once the upstream has answered OK for it (it exists); until then it is ``_other``,
which bounds the label set however many bad names clients send. Every forwarded
call, inference or not, also counts in ``infergw_sidecar_rpcs{method, status}``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from infergw.gateway.core.metrics import GatewayMetrics
from infergw.vocab.timing import TimingEntry

BACKEND_LABEL = "upstream"
OTHER_MODEL = "_other"
MAX_MODEL_LABELS = 1000


class _RpcCounter(Collector):
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "infergw_sidecar_rpcs", "Calls forwarded by the sidecar", labels=("method", "status")
        )
        for labels, count in list(self.counts.items()):
            family.add_metric(list(labels), count)
        yield family


class SidecarMetrics:
    def __init__(self) -> None:
        self.gateway = GatewayMetrics()
        self._rpcs = _RpcCounter()
        self.gateway.registry.register(self._rpcs)
        self._models: set[str] = set()

    def observe_call(self, method: str, status: str) -> None:
        key = (method, status)
        self._rpcs.counts[key] = self._rpcs.counts.get(key, 0) + 1

    def observe_inference(
        self, model: str | None, protocol: str, status: str, entries: tuple[TimingEntry, ...]
    ) -> None:
        label = self._model_label(model, status)
        self.gateway.observe(label, BACKEND_LABEL, protocol, status, entries)

    def _model_label(self, model: str | None, status: str) -> str:
        if not model:
            return OTHER_MODEL
        if model in self._models:
            return model
        if status == "OK" and len(self._models) < MAX_MODEL_LABELS:
            self._models.add(model)
            return model
        return OTHER_MODEL

    def render(self) -> bytes:
        return self.gateway.render()

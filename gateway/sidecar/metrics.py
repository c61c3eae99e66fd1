"""Sidecar metrics: the gateway's per-phase histograms plus a counter of every RPC.

Inference calls (ModelInfer, Predict, ..., and OIP REST ``/infer``) go into
``GatewayMetrics`` labelled by model, backend ``upstream``, protocol and status, as
the gateway's own do. Model names come from clients, so a name becomes a label only
once the upstream has answered OK for it (it exists); until then it is ``_other``,
which bounds the label set however many bad names clients send. Every forwarded
call, inference or not, also counts in ``infergw_sidecar_rpcs{method, status}``.

With the native data plane (``native.py``) the gRPC calls are counted by the plane;
``attach`` gives the collectors its counters, read at scrape time and shown under the
same names and labels (the REST half stays Python's, its labels disjoint: protocol
``rest``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from infergw.gateway.core.metrics import BUCKETS, GatewayMetrics, cumulative_buckets
from infergw.vocab.timing import TimingEntry

# The plane's counters (``NativeGrpc.stats``), read at scrape time.
PlaneStats = Callable[[], Mapping[str, Any]]
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

BACKEND_LABEL = "upstream"
OTHER_MODEL = "_other"
MAX_MODEL_LABELS = 1000


def status_name(code: int) -> str:
    return STATUS_NAMES.get(code, str(code))


class _RpcCounter(Collector):
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.plane: PlaneStats | None = None

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "infergw_sidecar_rpcs", "Calls forwarded by the sidecar", labels=("method", "status")
        )
        counts = dict(self.counts)
        if self.plane is not None:
            for method, by_code in (self.plane().get("methods") or {}).items():
                for code, n in by_code.items():
                    key = (method, status_name(code))
                    counts[key] = counts.get(key, 0) + n
        for labels, count in counts.items():
            family.add_metric(list(labels), count)
        yield family


class _GatewayMetrics(GatewayMetrics):
    """The gateway's families, plus the plane's inference calls when one is attached."""

    plane: PlaneStats | None = None

    def collect(self) -> Iterator[Metric]:
        rows = list((self.plane() if self.plane is not None else {}).get("inference") or ())
        for family in super().collect():
            if rows and isinstance(family, HistogramMetricFamily):
                for row in rows:
                    for phase, histogram in row["phases"].items():
                        buckets = cumulative_buckets(BUCKETS, histogram["counts"])
                        family.add_metric([phase, *_labels(row)], buckets, histogram["sum_s"])
            elif (
                rows
                and isinstance(family, CounterMetricFamily)
                and family.name == "infergw_requests"
            ):
                for row in rows:
                    family.add_metric(_labels(row), row["requests"])
            yield family


def _labels(row: Mapping[str, Any]) -> list[str]:
    return [row["model"], BACKEND_LABEL, row["protocol"], status_name(row["status"])]


class SidecarMetrics:
    def __init__(self) -> None:
        self.gateway = _GatewayMetrics()
        self._rpcs = _RpcCounter()
        self.gateway.registry.register(self._rpcs)
        self._models: set[str] = set()

    def attach(self, plane: PlaneStats) -> None:
        """Count the native plane's calls too (read from ``plane()`` at scrape time)."""
        self._rpcs.plane = plane
        self.gateway.plane = plane

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

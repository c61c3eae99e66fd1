"""Sidecar metrics: the gateway's per-phase histograms plus a counter of every RPC.

Inference calls (ModelInfer, Predict, ..., and OIP REST ``/infer``) go into
``GatewayMetrics`` labelled by model, backend ``upstream``, protocol and status, as
the gateway's own do. Model names come from clients, so a name becomes a label only
once the upstream has answered OK for it (it exists); until then it is ``_other``,
which bounds the label set however many bad names clients send. Every forwarded
call, inference or not, also counts in ``infergw_sidecar_rpcs{method, status}``.

With the native data plane (``native.py``) the calls are counted by the plane, one per
half: ``attach`` gives the collectors a half's counters, read at scrape time and shown
under the same names and labels. The gRPC half counts by gRPC code, the REST half by
HTTP status; ``status_name`` and ``http_status_label`` turn them into the labels the
Python proxies give.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from infergw.gateway.core.metrics import BUCKETS, GatewayMetrics, cumulative_buckets
from infergw.vocab.errors import Unavailable
from infergw.vocab.timing import TimingEntry
from infergw.wire.status import ERROR_FOR_HTTP

# A plane's counters (``NativeGrpc.stats``, ``NativeRest.stats``), read at scrape time.
PlaneStats = Callable[[], Mapping[str, Any]]
# A plane's status (gRPC code or HTTP status) as the label the Python proxy gives it.
StatusLabel = Callable[[int], str]
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

BACKEND_LABEL = "upstream"
OTHER_MODEL = "_other"
MAX_MODEL_LABELS = 1000
BAD_GATEWAY = 502  # the REST half's own answer when the upstream dropped the connection
CLIENT_CLOSED = 499  # the plane's REST status of a client gone before its answer


def status_name(code: int) -> str:
    return STATUS_NAMES.get(code, str(code))


def http_status_label(status: int) -> str:
    """The gRPC code name the gateway's metrics use as ``status``, by the one table."""
    if status < 400:
        return "OK"
    if status == BAD_GATEWAY:
        return Unavailable.grpc_code
    if status == CLIENT_CLOSED:
        return "CANCELLED"
    cls = ERROR_FOR_HTTP.get(status)
    if cls is not None:
        return cls.grpc_code
    return "INTERNAL" if status >= 500 else f"HTTP_{status}"


class _Planes:
    """The attached planes' counters, read at scrape time."""

    def __init__(self) -> None:
        self.attached: list[tuple[PlaneStats, StatusLabel]] = []

    def read(self) -> list[tuple[Mapping[str, Any], StatusLabel]]:
        return [(stats(), label) for stats, label in self.attached]


class _RpcCounter(Collector):
    def __init__(self, planes: _Planes) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.planes = planes

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "infergw_sidecar_rpcs", "Calls forwarded by the sidecar", labels=("method", "status")
        )
        counts = dict(self.counts)
        for stats, label in self.planes.read():
            for method, by_status in (stats.get("methods") or {}).items():
                for status, n in by_status.items():
                    key = (method, label(status))
                    counts[key] = counts.get(key, 0) + n
        for labels, count in counts.items():
            family.add_metric(list(labels), count)
        yield family


class _GatewayMetrics(GatewayMetrics):
    """The gateway's families, plus the attached planes' inference calls."""

    planes: _Planes | None = None

    def collect(self) -> Iterator[Metric]:
        rows = [
            (_labels(row, label), row)
            for stats, label in (self.planes.read() if self.planes is not None else ())
            for row in stats.get("inference") or ()
        ]
        for family in super().collect():
            if rows and isinstance(family, HistogramMetricFamily):
                for labels, row in rows:
                    for phase, histogram in row["phases"].items():
                        buckets = cumulative_buckets(BUCKETS, histogram["counts"])
                        family.add_metric([phase, *labels], buckets, histogram["sum_s"])
            elif (
                rows
                and isinstance(family, CounterMetricFamily)
                and family.name == "infergw_requests"
            ):
                for labels, row in rows:
                    family.add_metric(labels, row["requests"])
            yield family


def _labels(row: Mapping[str, Any], label: StatusLabel) -> list[str]:
    return [row["model"], BACKEND_LABEL, row["protocol"], label(row["status"])]


class SidecarMetrics:
    def __init__(self) -> None:
        self.gateway = _GatewayMetrics()
        self._planes = _Planes()
        self.gateway.planes = self._planes
        self._rpcs = _RpcCounter(self._planes)
        self.gateway.registry.register(self._rpcs)
        self._models: set[str] = set()

    def attach(self, plane: PlaneStats, label: StatusLabel = status_name) -> None:
        """Count a native plane's calls too (read from ``plane()`` at scrape time; its
        statuses named by ``label``: gRPC codes by default)."""
        self._planes.attached.append((plane, label))

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

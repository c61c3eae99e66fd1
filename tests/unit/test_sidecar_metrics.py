"""The sidecar's model label is bounded: client-chosen names become labels only once real."""

from __future__ import annotations

import pytest

from infergw.gateway.sidecar import metrics as sidecar_metrics
from infergw.gateway.sidecar.metrics import OTHER_MODEL, SidecarMetrics
from infergw.vocab.timing import TimingEntry

ENTRIES = (TimingEntry("total", 1.0),)


def _models(m: SidecarMetrics) -> set[str]:
    text = m.render().decode()
    return {
        line.split('model="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("infergw_requests_total{")
    }


def test_a_name_the_upstream_never_accepted_is_other() -> None:
    m = SidecarMetrics()
    m.observe_inference("no-such-model", "grpc", "NOT_FOUND", ENTRIES)
    m.observe_inference("", "grpc", "INVALID_ARGUMENT", ENTRIES)
    assert _models(m) == {OTHER_MODEL}


def test_a_name_becomes_a_label_once_it_answered_ok_and_stays_one() -> None:
    m = SidecarMetrics()
    m.observe_inference("identity", "grpc", "OK", ENTRIES)
    m.observe_inference("identity", "grpc", "DEADLINE_EXCEEDED", ENTRIES)
    assert _models(m) == {"identity"}


def test_labels_stop_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sidecar_metrics, "MAX_MODEL_LABELS", 2)
    m = SidecarMetrics()
    for name in ("a", "b", "c", "d"):
        m.observe_inference(name, "grpc", "OK", ENTRIES)
    assert _models(m) == {"a", "b", OTHER_MODEL}

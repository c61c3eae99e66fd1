"""Per-request backend splits in the load generator: never folded into protocol.

A request through a backend that reported nothing of its own time (Triton behind the
gateway) gets its protocol only with its split; without one it is unknown, or shown as
window means from the server's statistics, in the table and the plot alike.
"""

from __future__ import annotations

from typing import Any

import pytest

from infergw.loadgen import plots, report
from infergw.loadgen.recorder import Recorder
from infergw.loadgen.splits import TraceIds, parse

TRITON = 'queue;dur=1, backend;dur=40;desc="backend=triton;attempt=1", total;dur=42'
LAMBDA = "queue;dur=1, backend;dur=40, compute;dur=30, total;dur=42"
STATS = {"queue_ms_mean": 10.0, "compute_ms_mean": 25.0, "count": 3}


def recorder(*outcomes: tuple[Any, ...]) -> Recorder:
    """Measured requests, each taking 50 ms of service time."""
    rec = Recorder(start=0.0)
    for i, outcome in enumerate(outcomes):
        rec.record(1.0 + i, 1.0 + i, 1.05 + i, outcome)  # type: ignore[arg-type]
    return rec


def test_trace_ids_name_the_request_and_read_back() -> None:
    ids = TraceIds("0123456789abcdef")
    header = ids.traceparent(7)
    assert header == "00-0123456789abcdef0000000000000007-0000000000000008-01"
    assert ids.seq(header[3:35]) == 7
    assert ids.seq("f" * 32) is None and ids.seq("0123") is None


def test_splits_sum_attempts_and_drop_unknown_ones() -> None:
    ids = TraceIds("0123456789abcdef")
    known = {"backend_queue_ms": 1.0, "compute_ms": 2.0}
    document = {
        "splits": {
            ids.traceparent(1)[3:35]: [known, known],  # a retry: both attempts count
            ids.traceparent(2)[3:35]: [{"backend_queue_ms": None, "compute_ms": None}],
            "f" * 32: [known],  # someone else's
        },
        "pending": [],
    }
    assert parse(document, ids) == {1: (2.0, 4.0)}


def test_a_triton_request_waits_for_its_split_and_then_has_protocol() -> None:
    rec = recorder((None, TRITON, 10, 1), (None, TRITON, 10, 2), (None, LAMBDA, 10, 3))
    assert rec.phases["protocol"].count == 1  # only the Lambda one so far
    rec.apply_splits({1: (5.0, 30.0), 2: (7.0, 30.0)})
    run = rec.run_dict("warm", "closed", {}, offered=False)
    assert run["split_unknown"] == 0 and run["split_window_ms"] is None
    assert rec.phases["protocol"].count == 3
    # 50 ms service - 1 ms gateway queue - backend_queue - compute
    assert rec.phases["protocol"].max_ms == pytest.approx(19.0, abs=0.1)  # the Lambda one
    assert rec.phases["protocol"].min_ms == pytest.approx(12.0, abs=0.1)
    assert set(run["split_ms"]) >= {"protocol", "backend_queue", "compute", "queue"}


def test_without_splits_the_backend_share_is_unknown_not_protocol() -> None:
    rec = recorder((None, TRITON, 10, 1), (None, TRITON, 10, 2))
    run = rec.run_dict("warm", "closed", {}, offered=False)
    assert run["split_unknown"] == 2 and "protocol" not in run["split_ms"]
    result = {"runs": [run]}
    table = report.format_table(result)
    row = table.splitlines()[3]
    # protocol, queue, backend_queue, coldstart, compute (then the cost column)
    assert row.split()[-6:-1] == ["unknown", "1.00", "unknown", "-", "unknown"]
    assert "2 of 2 requests have no per-request backend split" in table
    assert plots._split_unknown(run)


def test_with_server_statistics_the_unknown_get_window_means() -> None:
    rec = recorder((None, TRITON, 10, 1), (None, TRITON, 10), (None, None, 10))
    rec.apply_splits({})
    run = rec.run_dict("warm", "closed", {}, offered=False, server_stats=STATS)
    assert run["split_unknown"] == 3  # also the one without Server-Timing (direct)
    window = run["split_window_ms"]
    # mean of (50 - 1, 50 - 1, 50 - 0) minus the window's queue and compute means
    assert window["protocol"] == pytest.approx((49 + 49 + 50) / 3 - 35.0, abs=0.05)
    assert window["compute"] == 25.0 and window["backend_queue"] == 10.0
    cells = report.format_table({"runs": [run]}).splitlines()[3].split()
    assert cells[-6] == "~" + report._ms(window["protocol"]) and cells[-2] == "~25.0"
    assert not plots._split_unknown(run)  # drawn, as window means
    assert "window means" in plots._split_label(run, "warm")
    _, rows = report.csv_rows({"runs": [run]})
    assert rows[0]["split_unknown"] == 3 and rows[0]["split_window_compute_ms"] == 25.0


def test_a_request_that_failed_is_not_waiting_for_a_split() -> None:
    rec = recorder(("UNAVAILABLE", None, 0, 1))
    assert rec.run_dict("warm", "closed", {}, offered=False)["split_unknown"] == 0


@pytest.mark.skipif(not plots.available(), reason="matplotlib not installed")
def test_the_split_plot_draws_an_unknown_run() -> None:
    rec = recorder((None, TRITON, 10, 1))
    run = rec.run_dict("triton", "closed", {}, offered=False)
    run["latency_ms"] = {"p50": 50.0}
    names = [p.name for p in plots.render_all({"runs": [run]})]
    assert "split" in names


READY = {
    "gateway": {"grpc": "127.0.0.1:1", "http": "127.0.0.1:2", "metrics": "127.0.0.1:3"},
    "backends": {},
    "splits": {"url": "http://127.0.0.1:3", "receiver": "http://127.0.0.1:4/v1/traces"},
}
SPLITS_FROM = {
    "the gateway's gRPC": (READY, "127.0.0.1:1", "http://127.0.0.1:3"),
    "the gateway's REST": (READY, "127.0.0.1:2", "http://127.0.0.1:3"),
    "Triton directly": (READY, "127.0.0.1:9", None),
    "a gateway without the receiver": (
        {k: v for k, v in READY.items() if k != "splits"},
        "127.0.0.1:1",
        None,
    ),
}


@pytest.mark.parametrize(
    ("info", "address", "expected"), SPLITS_FROM.values(), ids=SPLITS_FROM.keys()
)
def test_splits_come_from_the_ready_files_gateway_only_when_targeted(
    info: dict[str, Any], address: str, expected: str | None
) -> None:
    from infergw.loadgen.splits import url_from_ready_file

    assert url_from_ready_file(info, address) == expected


def test_an_explicit_splits_url_wins_and_no_splits_turns_them_off(tmp_path: Any) -> None:
    import json

    from infergw.loadgen.scenarios import splits_url_for
    from infergw.loadgen.settings import Settings

    ready = tmp_path / "ready.json"
    ready.write_text(json.dumps(READY))
    s = Settings(stack_ready_file=str(ready))
    assert splits_url_for(s, "127.0.0.1:1") == "http://127.0.0.1:3"
    assert splits_url_for(s.replace(splits_url="http://x:1"), "127.0.0.1:1") == "http://x:1"
    assert splits_url_for(s.replace(no_splits=True), "127.0.0.1:1") is None

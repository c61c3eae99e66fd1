"""The REPORT line of a Lambda log tail: AWS's format in, timings and cost fields out."""

from __future__ import annotations

import pytest

from infergw.backends.aws_lambda import LambdaReport, parse_report
from infergw.deploy.local.lambda_standin import report_line

# As CloudWatch / X-Amz-Log-Result show it (tab separated, trailing tab).
AWS_COLD = (
    "START RequestId: 6bd2f1a4-0c3e-4b8b-9d2e-1f0a6e2c9a11 Version: $LATEST\n"
    "some function output\n"
    "END RequestId: 6bd2f1a4-0c3e-4b8b-9d2e-1f0a6e2c9a11\n"
    "REPORT RequestId: 6bd2f1a4-0c3e-4b8b-9d2e-1f0a6e2c9a11\tDuration: 12.34 ms\t"
    "Billed Duration: 13 ms\tMemory Size: 1024 MB\tMax Memory Used: 80 MB\t"
    "Init Duration: 850.12 ms\t\n"
)


def test_cold_report_has_init_duration() -> None:
    assert parse_report(AWS_COLD) == LambdaReport(
        request_id="6bd2f1a4-0c3e-4b8b-9d2e-1f0a6e2c9a11",
        duration_ms=12.34,
        billed_ms=13.0,
        memory_mb=1024,
        max_memory_mb=80,
        init_ms=850.12,
    )


def test_warm_report_has_no_init_and_extra_fields_are_ignored() -> None:
    line = (
        "REPORT RequestId: abc\tDuration: 1.05 ms\tBilled Duration: 2 ms\t"
        "Memory Size: 3008 MB\tMax Memory Used: 212 MB\t\n"
        "XRAY TraceId: 1-5e1b4151-5ac6c58f5b5dbd6a7e0a2a9b\tSegmentId: 6b2c1a3e\tSampled: true\n"
    )
    report = parse_report(line)
    assert report is not None
    assert (report.duration_ms, report.billed_ms, report.memory_mb) == (1.05, 2.0, 3008)
    assert report.init_ms is None


def test_the_last_report_wins_and_tail_cut_mid_log_is_fine() -> None:
    tail = "ted output\n" + AWS_COLD.replace("12.34", "9.99") + AWS_COLD.split("\n", 3)[3]
    report = parse_report(tail)
    assert report is not None and report.duration_ms == 12.34


@pytest.mark.parametrize(
    "log",
    [
        "",
        "START RequestId: x Version: $LATEST\nEND RequestId: x\n",
        "REPORT RequestId: x\tDuration: soon\tBilled Duration: 1 ms\t",
        "REPORT RequestId: x\tDuration: 1 ms\t",  # truncated fields
    ],
)
def test_missing_or_malformed_report_is_none(log: str) -> None:
    assert parse_report(log) is None


@pytest.mark.parametrize("init", [None, 734.567])
def test_stand_in_format_round_trips(init: float | None) -> None:
    line = report_line("rid", 3.14159, 1024, 97, init)
    assert line.startswith("REPORT RequestId: rid\tDuration: 3.14 ms\t")
    assert line.endswith("\t")
    report = parse_report("END RequestId: rid\n" + line + "\n")
    assert report is not None
    assert report.duration_ms == 3.14 and report.max_memory_mb == 97
    assert report.init_ms == (None if init is None else 734.57)
    # billed: 1 ms granularity, rounded up; Init is billed too (since August 2025)
    assert report.billed_ms == (4 if init is None else 738)

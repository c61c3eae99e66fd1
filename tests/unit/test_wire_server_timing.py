"""The one Server-Timing join and filter (the syntax itself: tests/unit/test_timing.py)."""

from __future__ import annotations

import pytest

from infergw.vocab.timing import BACKEND_REPORTED, TimingEntry
from infergw.wire.server_timing import (
    TRAILER,
    answered_by,
    append_server_timing,
    format_server_timing,
    join_server_timing,
    parse_server_timing,
    select_entries,
    server_timing_from_metadata,
)

UPSTREAM = [TimingEntry("total", 4.0), TimingEntry("compute", 2.5, "backend=a;attempt=1")]
OURS = [TimingEntry("backend", 5.0), TimingEntry("total", 6.0)]


def test_join_is_the_rfc_9110_list_of_the_non_empty_values() -> None:
    assert join_server_timing(["a;dur=1", b"b;dur=2", None, "", "  ", "c"]) == (
        "a;dur=1, b;dur=2, c"
    )
    assert join_server_timing([]) is None
    assert join_server_timing(["", None]) is None


def test_joined_values_parse_to_all_entries_in_order() -> None:
    joined = join_server_timing([format_server_timing(UPSTREAM), format_server_timing(OURS)])
    assert joined is not None
    assert parse_server_timing(joined) == [*UPSTREAM, *OURS]


def test_from_metadata_joins_repeated_trailers_and_ignores_other_keys() -> None:
    metadata = (("server-timing", "a;dur=1"), ("x-other", "b;dur=2"), ("server-timing", "c"))
    assert server_timing_from_metadata(metadata) == "a;dur=1, c"
    assert server_timing_from_metadata((("x-other", "v"),)) is None
    assert server_timing_from_metadata(None) is None


def test_append_adds_ours_as_its_own_value_after_the_upstreams() -> None:
    upstream = (
        ("server-timing", format_server_timing(UPSTREAM)),
        ("x-why", "asked"),
        ("blob-bin", b"\x00"),
    )
    out = append_server_timing(iter(upstream), format_server_timing(OURS))  # any iterable
    assert out == (*upstream, (TRAILER, format_server_timing(OURS)))
    # whoever joins them sees the upstream's split first, then the hop's
    joined = server_timing_from_metadata(out)
    assert joined is not None and parse_server_timing(joined) == [*UPSTREAM, *OURS]


def test_append_to_nothing_is_just_ours() -> None:
    assert append_server_timing(None, "total;dur=1") == ((TRAILER, "total;dur=1"),)


def test_select_keeps_only_the_named_phases_with_their_detail() -> None:
    entries = parse_server_timing(
        'total;dur=9, compute;dur=2;desc="m=x", queue;dur=1, coldstart;dur=3, backend_queue;dur=4'
    )
    assert select_entries(entries, BACKEND_REPORTED) == [
        TimingEntry("compute", 2.0, "m=x"),
        TimingEntry("coldstart", 3.0),
        TimingEntry("backend_queue", 4.0),
    ]


def test_a_phase_reported_without_a_valid_duration_is_not_a_duration_of_zero() -> None:
    header = 'compute, coldstart;dur=abc, backend_queue;dur=-1, x;dur=inf, queue;desc="q"'
    assert [(e.name, e.duration_ms) for e in parse_server_timing(header)] == [
        ("compute", 0.0),  # W3C's reading: no duration is 0
        ("coldstart", 0.0),
        ("backend_queue", -1.0),
        ("x", float("inf")),
        ("queue", 0.0),
    ]
    assert parse_server_timing(header, timed_only=True) == []
    timed = parse_server_timing('compute;dur="2.5";desc=m, total;dur=3', timed_only=True)
    assert timed == [TimingEntry("compute", 2.5, "m"), TimingEntry("total", 3.0)]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'backend;dur=3;desc="backend=triton", total;dur=4;desc="backend=triton"',
            ("triton", "primary"),
        ),
        (
            'backend;dur=1;desc="backend=dead;attempt=1", '
            'backend;dur=3;desc="backend=triton;attempt=2;reason=fallback", '
            'total;dur=5;desc="backend=triton"',
            ("triton", "fallback"),
        ),
        (  # a hedge the second member won: the loser's entry stays, the winner is named
            'backend;dur=60;desc="backend=lambda;attempt=1", '
            'backend;dur=9;desc="backend=sagemaker;attempt=2;reason=hedge", '
            'total;dur=61;desc="backend=sagemaker"',
            ("sagemaker", "hedge"),
        ),
        (  # the member's own retry inside one attempt: its last entry's reason
            'backend;dur=2;desc="backend=lambda;attempt=1;reason=spill", '
            'backend;dur=2;desc="backend=lambda;attempt=2;reason=retry", '
            'total;dur=5;desc="backend=lambda"',
            ("lambda", "retry"),
        ),
        ('backend;dur=3;desc="backend=triton", total;dur=4', None),  # an error: no answer
        ("total;dur=4", None),  # not the gateway (or an older one)
    ],
)
def test_answered_by_names_the_backend_and_why(header: str, expected: tuple | None) -> None:
    assert answered_by(parse_server_timing(header)) == expected

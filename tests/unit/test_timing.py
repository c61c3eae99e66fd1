from infergw.vocab.timing import TimingEntry, Timings
from infergw.wire.server_timing import format_server_timing, parse_server_timing


def test_format_uses_w3c_syntax_with_quoted_desc() -> None:
    header = format_server_timing(
        [TimingEntry("total", 1.23456), TimingEntry("backend", 0.5, "backend=triton;attempt=1")]
    )
    assert header == 'total;dur=1.235, backend;dur=0.500;desc="backend=triton;attempt=1"'


def test_round_trip_keeps_attempts_separate() -> None:
    entries = [
        TimingEntry("queue", 0.1, "backend=a"),
        TimingEntry("backend", 2.0, "backend=a;attempt=1"),
        TimingEntry("backend", 3.0, "backend=b;attempt=2"),
        TimingEntry("total", 5.5),
    ]
    parsed = parse_server_timing(format_server_timing(entries))
    assert [(e.name, e.duration_ms, e.description) for e in parsed] == [
        (e.name, round(e.duration_ms, 3), e.description) for e in entries
    ]


def test_parse_is_lenient_about_whitespace_tokens_and_garbage() -> None:
    parsed = parse_server_timing(' a ; dur = 1.5 ; desc=x , b;desc="q\\"x, y";dur=2, ,@bad;dur=1')
    assert [(e.name, e.duration_ms, e.description) for e in parsed] == [
        ("a", 1.5, "x"),
        ("b", 2.0, 'q"x, y'),
    ]


def test_parse_bad_duration_is_zero_not_an_error() -> None:
    assert parse_server_timing("a;dur=abc")[0].duration_ms == 0.0


def test_timings_measure_and_sum() -> None:
    t = Timings()
    with t.measure("decode"):
        pass
    t.add("backend", 1.0)
    t.add("backend", 2.0)
    assert t.get("backend") == 3.0
    assert t.get("compute") is None
    assert t.get("decode") is not None and t.get("decode") >= 0.0
    assert [e.name for e in t.entries] == ["decode", "backend", "backend"]

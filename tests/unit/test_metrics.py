from prometheus_client.parser import text_string_to_metric_families

from infergw.gateway.core.metrics import BUCKETS, GatewayMetrics, Series
from infergw.vocab.timing import TimingEntry


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_histogram_buckets_are_cumulative_with_le_semantics() -> None:
    m = GatewayMetrics()
    entries = (TimingEntry("total", 1.0), TimingEntry("total", 3.0), TimingEntry("queue", 0.0))
    m.observe("identity", "triton", "grpc", "OK", entries)
    got = samples(m)
    base = (("backend", "triton"), ("model", "identity"), ("protocol", "grpc"), ("status", "OK"))

    def bucket(phase: str, le: str) -> float:
        labels = tuple(sorted((*base, ("phase", phase), ("le", le))))
        return got[("infergw_phase_duration_seconds_bucket", labels)]

    assert bucket("total", "0.001") == 1  # 1.0 ms lands in le=0.001 (inclusive)
    assert bucket("total", "0.0025") == 1
    assert bucket("total", "0.005") == 2
    assert bucket("total", "+Inf") == 2
    assert bucket("queue", "0.0001") == 1
    count = got[
        ("infergw_phase_duration_seconds_count", tuple(sorted((*base, ("phase", "total")))))
    ]
    total = got[("infergw_phase_duration_seconds_sum", tuple(sorted((*base, ("phase", "total")))))]
    assert count == 2 and abs(total - 0.004) < 1e-12
    assert got[("infergw_requests_total", base)] == 1


def test_separate_gateways_do_not_share_state() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.observe("m", "b", "rest", "OK", (TimingEntry("total", 1.0),))
    assert "infergw_requests_total" in a.render().decode()
    assert 'model="m"' not in b.render().decode()


def test_a_call_without_phases_is_counted_without_histograms() -> None:
    m = GatewayMetrics()
    m.observe("_other", "none", "grpc", "INTERNAL", ())
    m.observe("_other", "none", "grpc", "INTERNAL", ())
    got = samples(m)
    base = (("backend", "none"), ("model", "_other"), ("protocol", "grpc"), ("status", "INTERNAL"))
    assert got[("infergw_requests_total", base)] == 2
    assert not [key for key in got if key[0].startswith("infergw_phase_duration")]


class _Source:
    """Series counted elsewhere (as the native plane's are)."""

    def __init__(self, *series: Series) -> None:
        self._series = series

    def series(self) -> tuple[Series, ...]:
        return self._series


def test_sources_are_summed_into_the_same_series() -> None:
    m = GatewayMetrics()
    m.observe("identity", "triton", "grpc", "OK", (TimingEntry("total", 1.0),))
    one_in_0_0025 = [0] * (len(BUCKETS) + 1)
    one_in_0_0025[BUCKETS.index(0.0025)] = 1
    labels = ("identity", "triton", "grpc", "OK")
    refused = ("identity", "triton", "grpc", "INVALID_ARGUMENT")
    m.sources.append(
        _Source(
            Series(labels, 3, {"total": (one_in_0_0025, 0.002)}),
            Series(refused, 1, {"decode": (one_in_0_0025, 0.002)}),
        )
    )
    got = samples(m)
    base = tuple(sorted(zip(("model", "backend", "protocol", "status"), labels, strict=True)))
    assert got[("infergw_requests_total", base)] == 4  # 1 here + 3 there
    total = tuple(sorted((*base, ("phase", "total"))))
    assert got[("infergw_phase_duration_seconds_count", total)] == 2
    assert abs(got[("infergw_phase_duration_seconds_sum", total)] - 0.003) < 1e-12
    assert (
        got[("infergw_phase_duration_seconds_bucket", tuple(sorted((*total, ("le", "0.001")))))]
        == 1
    )
    assert (
        got[("infergw_phase_duration_seconds_bucket", tuple(sorted((*total, ("le", "0.0025")))))]
        == 2
    )
    other = tuple(sorted(zip(("model", "backend", "protocol", "status"), refused, strict=True)))
    assert got[("infergw_requests_total", other)] == 1
    assert (
        "infergw_phase_duration_seconds_count",
        tuple(sorted((*other, ("phase", "decode")))),
    ) in got

"""The report's figures, drawn with matplotlib (the optional ``bench`` extra).

Which figures appear depends on what the result holds, not on the scenario name, so a
custom run gets the plots its data supports. matplotlib is imported lazily with the
Agg backend: the gateway and the runner never pay for it, and no display is needed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PHASES = ("protocol", "queue", "backend_queue", "coldstart", "compute", "offload")
PHASE_COLORS = {
    "protocol": "#4e79a7",
    "queue": "#f28e2b",
    "backend_queue": "#edc948",
    "coldstart": "#e15759",
    "compute": "#59a14f",
    "offload": "#b07aa1",
}
PERCENTILES = (("p50", "#4e79a7"), ("p95", "#f28e2b"), ("p99", "#e15759"))
# The figure that answers each scenario's question, shown first.
LEAD_PLOT = {
    "scale": "timeseries",
    "cold": "cold",
    "protocol": "protocol",
    "concurrency": "concurrency",
    "hybrid": "cost_slo",
}
PAYLOAD_KEYS = ("payload_bytes", "payload_size", "size_bytes")


@dataclass(frozen=True)
class Plot:
    """One rendered figure: ``name`` is the file stem (``report-NAME.png``)."""

    name: str
    title: str
    png: bytes


def available() -> bool:
    """Whether matplotlib can be imported (the ``bench`` extra is installed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def render_all(result: dict[str, Any]) -> list[Plot]:
    """Every figure the result has data for, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.titleweight": "bold",
            "axes.axisbelow": True,
        }
    )
    makers: list[tuple[str, str, Callable[[dict[str, Any]], Figure | None]]] = [
        ("latency", "Latency percentiles per run", _latency),
        ("split", "Where the time goes (median per phase)", _split),
        ("timeseries", "Offered vs achieved rate and p95 over time", _timeseries),
        ("answered", "Who answered, and why, over time", _answered),
        ("cost_slo", "Cost against SLO violations, one point per configuration", _cost_slo),
        ("cold", "Cold start: initialisation vs inference", _cold),
        ("protocol", "Protocol sweep: latency and bytes vs payload size", _protocol),
        ("concurrency", "Concurrency: latency and throughput", _concurrency),
    ]
    lead = LEAD_PLOT.get(str(result.get("scenario")))
    makers.sort(key=lambda m: m[0] != lead)  # the scenario's own figure first
    plots = []
    for name, title, make in makers:
        fig = make(result)
        if fig is None:
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
        plt.close(fig)
        plots.append(Plot(name, title, buf.getvalue()))
    return plots


def _figure(rows: int = 1, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(8.5, height * rows), squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _runs(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in result.get("runs") or [] if isinstance(r, dict)]


def _labels(runs: list[dict[str, Any]]) -> list[str]:
    return [str(r.get("label", i)) for i, r in enumerate(runs)]


def _rotate_if_crowded(ax: Axes, labels: list[str]) -> None:
    if len(labels) * max((len(s) for s in labels), default=0) > 80:
        ax.tick_params(axis="x", labelrotation=30)
        for text in ax.get_xticklabels():
            text.set_horizontalalignment("right")


def _ms_label(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.3g} ms"


def _legend_above(ax: Axes) -> None:
    """Legends above the plot area: bar charts have no empty corner to put them in."""
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=min(len(handles), 7),
        frameon=False,
        fontsize=8,
    )


def _slo_line(ax: Axes, result: dict[str, Any]) -> None:
    slo = (result.get("settings") or {}).get("slo_ms")
    if slo:
        ax.axhline(float(slo), color="#e15759", linestyle="--", linewidth=1, label=f"SLO {slo} ms")


# --- figures ---------------------------------------------------------------------


def _latency(result: dict[str, Any]) -> Figure | None:
    runs = [r for r in _runs(result) if (r.get("latency_ms") or {}).get("p50") is not None]
    if not runs:
        return None
    if len(runs) == 1:
        return _latency_profile(result, runs[0])
    fig, (ax,) = _figure()
    labels = _labels(runs)
    width = 0.8 / len(PERCENTILES)
    for i, (key, color) in enumerate(PERCENTILES):
        values = [float((r["latency_ms"]).get(key) or 0.0) for r in runs]
        offset = (i - (len(PERCENTILES) - 1) / 2) * width
        xs = [j + offset for j in range(len(runs))]
        ax.bar(xs, values, width, label=key, color=color)
    ax.set_xticks(range(len(runs)), labels)
    _rotate_if_crowded(ax, labels)
    ax.set_ylabel("end-to-end latency (ms)")
    _slo_line(ax, result)
    _legend_above(ax)
    return fig


def _latency_profile(result: dict[str, Any], run: dict[str, Any]) -> Figure:
    """One run: its whole percentile ladder, which says more than three fat bars."""
    latency = run["latency_ms"]
    keys = [k for k in ("p50", "p90", "p95", "p99", "p999", "max") if latency.get(k) is not None]
    values = [float(latency[k]) for k in keys]
    fig, (ax,) = _figure(height=0.32 * len(keys) + 1.2)
    ys = list(range(len(keys)))[::-1]
    colors = ["#4e79a7", "#76b7b2", "#f28e2b", "#e15759", "#b07aa1", "#9c755f"][: len(keys)]
    bars = ax.barh(ys, values, 0.65, color=colors)
    ax.bar_label(bars, [_ms_label(v) for v in values], padding=3, fontsize=8)
    ax.set_yticks(ys, [k.replace("p999", "p99.9") for k in keys])
    ax.set_xlabel(f"end-to-end latency (ms), {run.get('label', '')}")
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.12)
    slo = (result.get("settings") or {}).get("slo_ms")
    if slo:
        ax.axvline(float(slo), color="#e15759", linestyle="--", linewidth=1, label=f"SLO {slo} ms")
        _legend_above(ax)
    return fig


BACKEND_SPLIT = ("protocol", "backend_queue", "compute")


def _phase_value(run: dict[str, Any], phase: str) -> float | None:
    """A phase's per-request median, else its window mean (server statistics), else None."""
    p50 = ((run.get("split_ms") or {}).get(phase) or {}).get("p50")
    if p50 is not None:
        return float(p50)
    window = (run.get("split_window_ms") or {}).get(phase)
    return None if window is None else float(window)


def _split_unknown(run: dict[str, Any]) -> bool:
    """The backend's share is neither per request nor a window mean: not drawn as protocol."""
    return bool(run.get("split_unknown")) and any(
        _phase_value(run, p) is None for p in BACKEND_SPLIT
    )


def _split_label(run: dict[str, Any], label: str) -> str:
    windowed = any(
        ((run.get("split_ms") or {}).get(p) or {}).get("p50") is None
        and (run.get("split_window_ms") or {}).get(p) is not None
        for p in BACKEND_SPLIT
    )
    return f"{label}\n(~ window means)" if windowed else label


def _split(result: dict[str, Any]) -> Figure | None:
    """Horizontal stacked bars: long run labels stay readable and one run is not a slab.

    A run whose backend share is unknown per request shows that share as "unknown", never
    as protocol; window means (the server's statistics) are marked in the run's label.
    """
    runs = [r for r in _runs(result) if r.get("split_ms") or r.get("split_unknown")]
    phases = [p for p in PHASES if any(_phase_value(r, p) is not None for r in runs)]
    if not runs:
        return None
    fig, (ax,) = _figure(height=max(1.6, 0.1 * 2 + 0.38 * len(runs) + 0.9))
    ys = list(range(len(runs)))[::-1]
    lefts = [0.0] * len(runs)
    for phase in phases:
        widths = [_phase_value(r, phase) or 0.0 for r in runs]
        ax.barh(ys, widths, 0.62, left=lefts, label=phase, color=PHASE_COLORS[phase])
        lefts = [a + w for a, w in zip(lefts, widths, strict=True)]
    e2e = [(r.get("latency_ms") or {}).get("p50") for r in runs]
    rest = [
        max(float(v) - a, 0.0) if v is not None else 0.0 for v, a in zip(e2e, lefts, strict=True)
    ]
    unknown = [_split_unknown(r) for r in runs]
    for is_unknown, color, label in (
        (False, "#d9dde3", "rest of e2e p50 (network, client)"),
        (True, "#9aa5b1", "unknown: backend share not measured per request"),
    ):
        part = [w if u == is_unknown else 0.0 for w, u in zip(rest, unknown, strict=True)]
        if any(part):
            ax.barh(
                ys, part, 0.62, left=lefts, color=color, hatch="///", edgecolor="white", label=label
            )
    for y, v in zip(ys, e2e, strict=True):
        if v is not None:
            ax.annotate(
                _ms_label(float(v)),
                (float(v), y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
    ax.set_yticks(ys, [_split_label(r, n) for r, n in zip(runs, _labels(runs), strict=True)])
    ax.set_xlabel("median per phase (ms); bar end = end-to-end p50")
    ax.margins(x=0.08)
    ax.grid(axis="y", visible=False)
    _legend_above(ax)
    return fig


def _timeseries(result: dict[str, Any]) -> Figure | None:
    runs = [r for r in _runs(result) if r.get("timeseries")]
    if not runs:
        return None
    fig, (rate_ax, lat_ax) = _figure(rows=2, height=3.0)
    single = len(runs) == 1
    for run in runs:
        points = run["timeseries"]
        t = [float(p.get("t", i)) for i, p in enumerate(points)]
        name = "" if single else f"{run.get('label')}: "
        offered = [p.get("offered") or 0 for p in points]
        if any(offered):  # a closed loop offers no rate of its own
            rate_ax.plot(t, offered, "--", label=f"{name}offered")
        rate_ax.plot(t, [p.get("achieved") or 0 for p in points], label=f"{name}achieved")
        errors = [p.get("errors") or 0 for p in points]
        if any(errors):
            rate_ax.plot(t, errors, ":", color="#e15759", label=f"{name}errors")
        p95 = [p.get("p95_ms") for p in points]
        lat_ax.plot(
            t, [float(v) if v is not None else float("nan") for v in p95], label=f"{name}p95"
        )
        steady = run.get("steady_state_s")
        if steady is not None:
            for ax in (rate_ax, lat_ax):
                ax.axvline(float(steady), color="#59a14f", linewidth=1)
            rate_ax.annotate(
                f"steady state at {float(steady):.1f} s",
                (float(steady), 0),
                xytext=(4, 4),
                textcoords="offset points",
                color="#59a14f",
            )
    rate_ax.set_ylabel("requests per second")
    lat_ax.set_ylabel("p95 latency (ms)")
    lat_ax.set_xlabel("time since start (s)")
    _slo_line(lat_ax, result)
    rate_ax.legend(frameon=False, ncol=3, fontsize=8)
    lat_ax.legend(frameon=False, fontsize=8)
    return fig


def _answered(result: dict[str, Any]) -> Figure | None:
    """Per run whose requests several backends (or reasons) answered: requests per second
    by ``backend/reason``, stacked (a route policy at work: spill, fallback, hedge); and
    the always-on slots over time where the pool was autoscaled (``bench hybrid``)."""
    runs = [r for r in _runs(result) if len(r.get("answered") or []) > 1 or r.get("capacity")]
    if not runs:
        return None
    fig, axes = _figure(rows=len(runs), height=2.6)
    for ax, run in zip(axes, runs, strict=False):
        points = run.get("timeseries") or []
        t = [float(p.get("t", i)) for i, p in enumerate(points)]
        keys = [f"{a['backend']}/{a['reason']}" for a in run["answered"]]
        series = [[(p.get("answered") or {}).get(k, 0) for p in points] for k in keys]
        ax.stackplot(t, series, labels=keys, alpha=0.85)
        ax.set_ylabel("answers per window")
        ax.set_title(str(run.get("label", "")), fontsize=9)
        ax.legend(frameon=False, ncol=4, fontsize=8, loc="upper right")
        capacity = run.get("capacity") or {}
        if capacity.get("samples"):
            slots = ax.twinx()
            at = [float(c[0]) for c in capacity["samples"]]
            slots.step(at, [c[1] for c in capacity["samples"]], where="post", color="black")
            slots.step(at, [c[1] + c[2] for c in capacity["samples"]], ":", where="post",
                       color="black")  # fmt: skip
            slots.set_ylabel("slots: ready, ordered (dotted)")
            slots.set_ylim(bottom=0)
    axes[-1].set_xlabel("time since start (s)")
    return fig


def _cost_slo(result: dict[str, Any]) -> Figure | None:
    """Each run that has both: SLO violations (%) against $ per 1M requests; with a
    ``comparison`` (``bench hybrid``), the published points placed relative to the
    always-on run, as the papers report them."""
    points: list[tuple[dict[str, Any], float, float]] = []
    for r in _runs(result):
        share = (r.get("slo") or {}).get("share")
        usd = (r.get("cost") or {}).get("usd_per_million")
        if share is not None and usd is not None:
            points.append((r, 100 * float(share), float(usd)))
    if len(points) < 2:
        return None
    fig, (ax,) = _figure()
    for run, percent, usd in points:
        ax.scatter(percent, usd, s=40)
        ax.annotate(
            str(run.get("label", "")),
            (percent, usd),
            xytext=(5, 3),
            textcoords="offset points",
            fontsize=8,
        )
    published = (result.get("comparison") or {}).get("published") or {}
    base = next((p for p in points if str(p[0].get("label", "")).startswith("always-on")), None)
    if base is not None:
        for name, (dv, dc) in published.items():
            x, y = base[1] * (1 + dv), base[2] * (1 + dc)
            ax.scatter(x, y, marker="x", color="#7f7f7f")
            ax.annotate(
                f"{name} vs {base[0].get('label')}",
                (x, y),
                xytext=(5, -10),
                textcoords="offset points",
                fontsize=7,
                color="#7f7f7f",
            )
    ax.set_xlabel("SLO violations (% of requests: slower than the SLO, or failed)")
    ax.set_ylabel("$ per 1M requests")
    return fig


def _cold(result: dict[str, Any]) -> Figure | None:
    runs = [r for r in _runs(result) if r.get("cold")]
    samples = [(str(r.get("label")), i, s) for r in runs for i, s in enumerate(r["cold"])]
    if not samples:
        return None
    fig, (ax,) = _figure()
    labels = [f"{label} #{i + 1}" if len(runs) > 1 else f"#{i + 1}" for label, i, _ in samples]
    init = [float(s.get("init_ms") or 0.0) for _, _, s in samples]
    infer = [float(s.get("inference_ms") or 0.0) for _, _, s in samples]
    first = [s.get("first_ms") for _, _, s in samples]
    xs = list(range(len(samples)))
    bars = ax.bar(xs, init, 0.6, label="initialisation", color=PHASE_COLORS["coldstart"])
    ax.bar_label(bars, [f"{v:,.0f}" for v in init], label_type="center", color="white", fontsize=8)
    ax.bar(xs, infer, 0.6, bottom=init, label="inference", color=PHASE_COLORS["compute"])
    if any(v is not None for v in first):
        ax.scatter(
            xs,
            [float(v) if v is not None else float("nan") for v in first],
            marker="_",
            s=600,
            color="black",
            zorder=3,
            label="time to first prediction",
        )
        for x, v, inf in zip(xs, first, infer, strict=True):
            if v is not None:
                ax.annotate(
                    f"{float(v):,.0f} (inference {inf:,.0f})",
                    (x, float(v)),
                    xytext=(0, 4),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                )
    ax.set_xticks(xs, labels)
    _rotate_if_crowded(ax, labels)
    ax.set_xlabel("cold start sample")
    ax.set_ylabel("ms")
    ax.margins(y=0.12)
    _legend_above(ax)
    return fig


def _payload(run: dict[str, Any]) -> float | None:
    params = run.get("params") or {}
    for key in PAYLOAD_KEYS:
        if params.get(key) is not None:
            return float(params[key])
    return None


def _all_floats(values: list[Any]) -> list[float] | None:
    """The values as floats, or None when any is missing (a line needs every point)."""
    if any(v is None for v in values):
        return None
    return [float(v) for v in values]


def _bytes_label(value: float, _pos: object = None) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:g} {unit}"
    return f"{value:g} B"


def _protocol(result: dict[str, Any]) -> Figure | None:
    from matplotlib.ticker import FuncFormatter

    runs = [r for r in _runs(result) if _payload(r) and (r.get("latency_ms") or {}).get("p50")]
    if len({_payload(r) for r in runs}) < 2:  # one size (e.g. a warm run's payload) is no sweep
        return None
    by_protocol: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        proto = str((run.get("params") or {}).get("protocol") or result.get("protocol"))
        by_protocol.setdefault(proto, []).append(run)
    fig, (lat_ax, wire_ax) = _figure(rows=2, height=3.2)
    compute_drawn = False
    for proto, group in sorted(by_protocol.items()):
        group.sort(key=lambda r: _payload(r) or 0.0)
        sizes = [_payload(r) or 0.0 for r in group]
        p50 = [float(r["latency_ms"]["p50"]) for r in group]
        (line,) = lat_ax.plot(sizes, p50, "o-", label=f"{proto} p50")
        p95 = _all_floats([(r["latency_ms"]).get("p95") for r in group])
        if p95:
            lat_ax.fill_between(sizes, p50, p95, color=line.get_color(), alpha=0.12)
        compute = _all_floats(
            [((r.get("split_ms") or {}).get("compute") or {}).get("p50") for r in group]
        )
        if compute and not compute_drawn:
            lat_ax.plot(sizes, compute, ":", color="#555", label="compute p50 (backend)")
            compute_drawn = True
        wire = [(r.get("bytes") or {}) for r in group]
        total = [
            float(b.get("sent_per_request") or 0) + float(b.get("received_per_request") or 0)
            for b in wire
        ]
        wire_ax.plot(sizes, total, "o-", color=line.get_color(), label=proto)
    for ax in (lat_ax, wire_ax):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_bytes_label))
    wire_ax.yaxis.set_major_formatter(FuncFormatter(_bytes_label))
    lat_ax.set_ylabel("end-to-end latency (ms, log)\nband: p50 to p95")
    wire_ax.set_ylabel("bytes on the wire\nper request (sent + received)")
    wire_ax.set_xlabel("payload size")
    lat_ax.legend(frameon=False, fontsize=8)
    wire_ax.legend(frameon=False, fontsize=8)
    return fig


def _concurrency(result: dict[str, Any]) -> Figure | None:
    runs = [
        r
        for r in _runs(result)
        if (r.get("params") or {}).get("concurrency") is not None
        and (r.get("latency_ms") or {}).get("p50") is not None
    ]
    if len({(r.get("params") or {})["concurrency"] for r in runs}) < 2:
        return None
    runs.sort(key=lambda r: float(r["params"]["concurrency"]))
    level = [float(r["params"]["concurrency"]) for r in runs]
    fig, (ax,) = _figure(height=4.0)
    for key, color in PERCENTILES:
        ax.plot(
            level,
            [float(r["latency_ms"].get(key) or 0.0) for r in runs],
            "o-",
            color=color,
            label=f"latency {key}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(level, [f"{v:g}" for v in level])
    ax.set_xlabel("requests in flight")
    ax.set_ylabel("latency (ms)")
    _slo_line(ax, result)
    twin = ax.twinx()
    twin.plot(
        level,
        [float(r.get("achieved_rps") or 0.0) for r in runs],
        "s--",
        color="#59a14f",
        label="throughput",
    )
    twin.set_ylabel("achieved req/s", color="#59a14f")
    twin.grid(False)
    handles, names = ax.get_legend_handles_labels()
    more, more_names = twin.get_legend_handles_labels()
    ax.legend(handles + more, names + more_names, frameon=False, fontsize=8, loc="upper left")
    return fig

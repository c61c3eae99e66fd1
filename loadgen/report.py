"""Turning a bench result (schema ``infergw.bench/1``) into things people read.

``format_table`` is the terminal summary; ``write_reports`` writes ``result.json``,
``result.csv`` (one flat row per run), a self-contained ``report.html`` (inline CSS,
plots embedded as base64 PNG, no external references) and the plots as
``report-*.png``. Every optional key of the schema may be missing: a phase that was
not measured shows as ``-`` rather than as a made-up zero. Where the backend's share
of a request is not known per request (``split_unknown``), backend_queue, compute and
protocol show window means from the server's statistics, marked ``~``, or ``unknown``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
from pathlib import Path
from typing import Any

from infergw.loadgen import plots
from infergw.loadgen.cost import (
    SERVERLESS_KINDS,
    CostError,
    cost_per_million,
    load_prices,
    mixed_cost_per_million,
)

log = logging.getLogger(__name__)

TABLE_PHASES = ("protocol", "queue", "backend_queue", "coldstart", "compute")
# Phases that are unknown for a request whose backend reported nothing of its own time.
BACKEND_SPLIT = ("protocol", "backend_queue", "compute")
WINDOW_MARK = "~"
LATENCY_KEYS = ("min", "mean", "p50", "p90", "p95", "p99", "p999", "max")
CSV_FIXED = [
    "label", "mode", "offered_rps", "achieved_rps", "requests", "ok", "errors_total",
    "late_sends", "dropped", "warmup_excluded",
    *(f"latency_{k}_ms" for k in LATENCY_KEYS),
    *(f"split_{p}_{q}_ms" for p in plots.PHASES for q in ("p50", "p95")),
    "server_count", "server_queue_ms_mean", "server_compute_ms_mean", "split_unknown",
    *(f"split_window_{p}_ms" for p in BACKEND_SPLIT),
    "bytes_sent_per_request", "bytes_received_per_request", "steady_state_s",
    "cold_samples", "cold_first_ms_mean", "cold_init_ms_mean", "cold_inference_ms_mean",
    "cost_kind", "cost_usd_per_million", "cost_basis",
]  # fmt: skip


# --- small formatters --------------------------------------------------------------


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    v = float(value)
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def _rate(value: Any) -> str:
    return "-" if value is None else f"{float(value):,.1f}"


def _usd(value: float) -> str:
    if value >= 100:
        return f"${value:,.0f}"
    if value >= 1:
        return f"${value:.2f}"
    return f"${value:.3f}" if value >= 0.01 else f"${value:.2g}"


def _errors_total(run: dict[str, Any]) -> int:
    return sum(int(v) for v in (run.get("errors") or {}).values())


def _split_p50(run: dict[str, Any], phase: str) -> Any:
    return ((run.get("split_ms") or {}).get(phase) or {}).get("p50")


def _phase_cell(run: dict[str, Any], phase: str) -> str:
    """The per-request median; else a window mean (``~``); else ``unknown`` where the
    phase exists but was not measured per request; else ``-`` (not part of this path)."""
    p50 = _split_p50(run, phase)
    if p50 is not None:
        return _ms(p50)
    if phase in BACKEND_SPLIT and run.get("split_unknown"):
        window = (run.get("split_window_ms") or {}).get(phase)
        return "unknown" if window is None else WINDOW_MARK + _ms(window)
    return "-"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --- cost --------------------------------------------------------------------------


def run_costs(result: dict[str, Any]) -> list[dict[str, Any] | None]:
    """Each run's cost: ``run["cost"]`` if the runner stored one, else computed from settings.

    Settings used: ``backend_kind`` (falls back to ``backend`` when that is a known kind),
    ``memory_mb`` and ``prices_file``. A run several backends answered (or any run the
    gateway says who answered, with no kind set) is priced by ``mixed_cost_per_million``
    (``backend_kinds``: name -> kind, default the name).
    ``None`` when nothing says what to price.
    """
    runs = result.get("runs") or []
    settings = result.get("settings") or {}
    kind = settings.get("backend_kind")
    if kind is None and str(result.get("backend") or "").lower() in SERVERLESS_KINDS:
        kind = result["backend"]
    answered = [bool(r.get("billed_ms_by_backend")) for r in runs]
    if all("cost" in r for r in runs) or (kind is None and not any(answered)):
        return [r.get("cost") for r in runs]
    try:
        prices = load_prices(Path(settings["prices_file"]) if settings.get("prices_file") else None)
    except CostError as exc:
        return [r.get("cost", {"kind": kind, "error": str(exc)}) for r in runs]
    costs: list[dict[str, Any] | None] = []
    for run in runs:
        if "cost" in run:
            costs.append(run["cost"])
            continue
        try:
            billed = run.get("billed_ms_by_backend") or {}
            if len(billed) > 1 or (kind is None and billed):  # priced by who answered
                costs.append(mixed_cost_per_million(run, prices, settings.get("backend_kinds")))
            elif kind is not None:
                costs.append(cost_per_million(run, str(kind), prices, settings.get("memory_mb")))
            else:
                costs.append(None)
        except CostError as exc:
            costs.append({"kind": kind or "mixed", "error": str(exc)})
    return costs


def _cost_cell(cost: dict[str, Any] | None) -> str:
    if not cost or cost.get("usd_per_million") is None:
        return "-"
    return _usd(float(cost["usd_per_million"]))


# --- terminal table ----------------------------------------------------------------


def _header_lines(result: dict[str, Any]) -> list[str]:
    parts = [
        f"{result.get('scenario', '?')} · {result.get('protocol', '?')} → {result.get('target')}",
        f"model {result.get('model', '?')}",
    ]
    if result.get("backend"):
        parts.append(f"backend {result['backend']}")
    if result.get("duration_s") is not None:
        parts.append(f"{float(result['duration_s']):.1f} s")
    replay = _replay_line(result)
    return ["  ".join(parts), *([replay] if replay else [])]


def _replay_line(result: dict[str, Any]) -> str | None:
    """How a trace was replayed, so no figure is read as the trace's own rate and time."""
    replayed = [p for r in result.get("runs") or [] if "speedup" in (p := r.get("params") or {})]
    if not replayed:
        return None
    params = replayed[0]
    start, duration = params.get("trace_start_s") or 0.0, params.get("trace_duration_s")
    span = f"{start:g} s to {start + duration:g} s" if duration else f"from {start:g} s"
    line = f"trace {params.get('trace')} ({span} of it): time compressed {params['speedup']:g}x"
    line += f", rate x{params.get('rate_scale', 1.0):g}, {params.get('arrivals', '?')} arrivals"
    return line


def _table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["run", "req/s ach/off", "ok", "err", "p50", "p95", "p99"]
    head += [f"{p} p50" for p in TABLE_PHASES] + ["$/1M req"]
    rows = []
    for run, cost in zip(result.get("runs") or [], run_costs(result), strict=True):
        lat = run.get("latency_ms") or {}
        rows.append(
            [
                str(run.get("label", "")),
                f"{_rate(run.get('achieved_rps'))}/{_rate(run.get('offered_rps'))}",
                str(run.get("ok", "-")),
                str(_errors_total(run)),
                _ms(lat.get("p50")),
                _ms(lat.get("p95")),
                _ms(lat.get("p99")),
                *(_phase_cell(run, p) for p in TABLE_PHASES),
                _cost_cell(cost),
            ]
        )
    return head, rows


def _footnotes(result: dict[str, Any]) -> list[str]:
    notes = []
    for run, cost in zip(result.get("runs") or [], run_costs(result), strict=True):
        label = run.get("label", "")
        errors = run.get("errors") or {}
        if errors:
            listed = ", ".join(f"{code}={n}" for code, n in sorted(errors.items()))
            notes.append(f"{label}: errors {listed}")
        slo = run.get("slo")
        if slo and slo.get("violations"):
            notes.append(
                f"{label}: SLO {slo['ms']:g} ms violated by {slo['violations']:,} requests "
                f"({100 * slo['share']:.1f}%): {slo['slow']:,} slower, {slo['failed']:,} failed"
            )
        steady = run.get("steady_state") or {}
        if steady.get("why"):
            reached = "no steady state" if steady.get("at_s") is None else "steady state late"
            when = steady.get("failed_at_s")
            at = f" (the span from {when:g} s)" if when is not None else ""
            notes.append(f"{label}: {reached}{at}: {steady['why']}")
        answered = run.get("answered") or []
        if len(answered) > 1 or any(a["reason"] != "primary" for a in answered):
            shares = ", ".join(
                f"{a['backend']} {100 * a['share']:.1f}% ({a['reason']})" for a in answered
            )
            notes.append(f"{label}: answered by {shares}")
        late, dropped = run.get("late_sends") or 0, run.get("dropped") or 0
        if late or dropped:
            worst = run.get("max_late_ms")
            latest = f" (the latest {worst:.1f} ms)" if late and worst is not None else ""
            notes.append(f"{label}: late sends {late}{latest}, dropped {dropped}")
        if cost and cost.get("error"):
            notes.append(f"{label}: no cost: {cost['error']}")
        unknown = int(run.get("split_unknown") or 0)
        if unknown:
            basis = (
                "window means (~) from the server's statistics"
                if run.get("split_window_ms")
                else "unknown"
            )
            notes.append(
                f"{label}: {unknown} of {run.get('ok')} requests have no per-request backend "
                f"split (queue and compute inside the backend): {basis}, not counted as protocol"
            )
    warmup = sum(int(r.get("warmup_excluded") or 0) for r in result.get("runs") or [])
    if warmup:
        notes.append(f"warm-up excluded: {warmup} requests in all")
    costs = [c for c in run_costs(result) if c and c.get("usd_per_million") is not None]
    if costs:
        c = costs[0]
        notes.append(f"cost: {c['kind']}, billed on {c['basis']}; prices read {c.get('read_on')}")
    notes += _comparison_notes(result.get("comparison") or {})
    return notes


def _comparison_notes(comparison: dict[str, Any]) -> list[str]:
    """``bench hybrid``: hybrid against each other configuration, then the papers'."""
    notes = []
    for label, change in comparison.items():
        if label == "published" or not isinstance(change, dict):
            continue
        violations, cost = change.get("violations"), change.get("cost")
        notes.append(
            f"hybrid vs {label}: SLO violations {_signed_percent(violations)}, "
            f"cost per 1M {_signed_percent(cost)}"
        )
    for name, (violations, cost) in (comparison.get("published") or {}).items():
        notes.append(
            f"published, {name}: SLO violations {_signed_percent(violations)}, "
            f"cost {_signed_percent(cost)} vs always-on"
        )
    return notes


def _signed_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.0f}%"


def format_table(result: dict[str, Any]) -> str:
    """The terminal summary: a header line, one row per run, then footnotes."""
    head, rows = _table_rows(result)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    out = [*_header_lines(result), line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    notes = _footnotes(result)
    if notes:
        out += ["", *notes]
    out.append(
        "latency in ms; phase columns are per-request medians (Server-Timing, and Triton's "
        f"spans via the gateway); {WINDOW_MARK}: window mean from the server's statistics"
    )
    return "\n".join(out)


# --- CSV ---------------------------------------------------------------------------


def csv_rows(result: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Flat rows, one per run: the fixed columns, then ``param_*`` and ``errors_*`` ones."""
    runs = result.get("runs") or []
    params = sorted({k for r in runs for k in (r.get("params") or {})})
    codes = sorted({str(k) for r in runs for k in (r.get("errors") or {})})
    columns = CSV_FIXED + [f"param_{k}" for k in params] + [f"errors_{c}" for c in codes]
    rows = []
    for run, cost in zip(runs, run_costs(result), strict=True):
        lat = run.get("latency_ms") or {}
        split = run.get("split_ms") or {}
        server = run.get("server_stats") or {}
        wire = run.get("bytes") or {}
        cold = run.get("cold") or []
        row: dict[str, Any] = {
            "label": run.get("label"),
            "mode": run.get("mode"),
            "offered_rps": run.get("offered_rps"),
            "achieved_rps": run.get("achieved_rps"),
            "requests": run.get("requests"),
            "ok": run.get("ok"),
            "errors_total": _errors_total(run),
            "late_sends": run.get("late_sends"),
            "dropped": run.get("dropped"),
            "warmup_excluded": run.get("warmup_excluded"),
            "server_count": server.get("count"),
            "server_queue_ms_mean": server.get("queue_ms_mean"),
            "server_compute_ms_mean": server.get("compute_ms_mean"),
            "split_unknown": run.get("split_unknown"),
            "bytes_sent_per_request": wire.get("sent_per_request"),
            "bytes_received_per_request": wire.get("received_per_request"),
            "steady_state_s": run.get("steady_state_s"),
            "cold_samples": len(cold) if cold else None,
            "cost_kind": (cost or {}).get("kind"),
            "cost_usd_per_million": (cost or {}).get("usd_per_million"),
            "cost_basis": (cost or {}).get("basis") or (cost or {}).get("error"),
        }
        row.update({f"latency_{k}_ms": lat.get(k) for k in LATENCY_KEYS})
        for phase in plots.PHASES:
            for q in ("p50", "p95"):
                row[f"split_{phase}_{q}_ms"] = (split.get(phase) or {}).get(q)
        window = run.get("split_window_ms") or {}
        for phase in BACKEND_SPLIT:
            row[f"split_window_{phase}_ms"] = window.get(phase)
        for key in ("first_ms", "init_ms", "inference_ms"):
            values = [float(s[key]) for s in cold if s.get(key) is not None]
            row[f"cold_{key.removesuffix('_ms')}_ms_mean"] = _mean(values)
        row.update({f"param_{k}": v for k, v in (run.get("params") or {}).items()})
        row.update({f"errors_{k}": v for k, v in (run.get("errors") or {}).items()})
        rows.append({c: ("" if row.get(c) is None else row[c]) for c in columns})
    return columns, rows


def _write_csv(result: dict[str, Any], path: Path) -> None:
    columns, rows = csv_rows(result)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# --- HTML --------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;
 margin:0;background:#f5f7fa}
main{max-width:1000px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #e4e7eb;padding-bottom:4px}
.sub{color:#616e7c;margin-bottom:16px}
.meta{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:8px 16px;
 margin:12px 0}
.meta div{background:#f5f7fa;border-radius:6px;padding:6px 10px}
.meta b{display:block;font-size:11px;text-transform:uppercase;color:#7b8794;font-weight:600}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid #e4e7eb;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
th{background:#f5f7fa;font-weight:600;color:#3e4c59}
tr:hover td{background:#fafbfc}
.err{color:#c62828;font-weight:600}
.kv td{text-align:left;white-space:normal}.kv td:first-child{color:#616e7c;width:30%}
figure{margin:16px 0}figure img{width:100%;border:1px solid #e4e7eb;border-radius:6px}
figcaption{font-weight:600;margin-bottom:6px}
.note{color:#616e7c;font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _plain_source(source: Any) -> str:
    """A source page as text: schemes dropped so the report holds no external reference."""
    return str(source or "").replace("https://", "").replace("http://", "")


def _headlines(result: dict[str, Any]) -> list[tuple[str, Any]]:
    """Scenario results worth a tile of their own: steady state, cold-start split."""
    items: list[tuple[str, Any]] = []
    for run in result.get("runs") or []:
        name = f" ({run.get('label')})" if len(result.get("runs") or []) > 1 else ""
        if "steady_state_s" in run:
            steady = run["steady_state_s"]
            items.append(
                (f"steady state{name}", "not reached" if steady is None else f"{steady} s")
            )
        cold = run.get("cold") or []
        init = _mean([float(c["init_ms"]) for c in cold if c.get("init_ms") is not None])
        infer = _mean([float(c["inference_ms"]) for c in cold if c.get("inference_ms") is not None])
        if init is not None and infer is not None:
            items.append(
                (f"cold start, mean{name}", f"init {_ms(init)} + inference {_ms(infer)} ms")
            )
    return items


def _html_meta(result: dict[str, Any]) -> str:
    settings = result.get("settings") or {}
    items = [
        ("scenario", result.get("scenario")),
        ("target", result.get("target")),
        ("HTTP target", result.get("http_target")),
        ("protocol", result.get("protocol")),
        ("model", result.get("model")),
        ("backend", result.get("backend")),
        ("started", result.get("started_at")),
        ("duration", f"{float(result['duration_s']):.1f} s" if result.get("duration_s") else None),
        ("runs", len(result.get("runs") or [])),
        ("SLO", f"{settings['slo_ms']} ms" if settings.get("slo_ms") else None),
        *_headlines(result),
    ]
    cells = "".join(f"<div><b>{_e(k)}</b>{_e(v)}</div>" for k, v in items if v is not None)
    return f'<div class="meta">{cells}</div>'


def _html_table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _html_settings(result: dict[str, Any]) -> str:
    settings = result.get("settings") or {}
    if not settings:
        return ""
    rows = [
        [k, json.dumps(v) if isinstance(v, dict | list) else str(v)] for k, v in settings.items()
    ]
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in sorted(rows))
    return f'<h2>Settings</h2><table class="kv"><tbody>{body}</tbody></table>'


def _html_cost(result: dict[str, Any]) -> str:
    rows, first = [], None
    for run, cost in zip(result.get("runs") or [], run_costs(result), strict=True):
        if not cost or cost.get("usd_per_million") is None:
            continue
        first = first or cost
        parts = ", ".join(f"{k} {_usd(v)}" for k, v in (cost.get("components") or {}).items())
        billed = cost.get("billed_ms")
        rows.append(
            [
                str(run.get("label")),
                _usd(float(cost["usd_per_million"])),
                parts,
                str(cost.get("basis", "")),
                "-" if billed is None else f"{_ms(billed)} ms",
            ]
        )
    if first is None:
        return ""
    note = (
        f"Priced as {_e(first.get('kind'))} with prices read {_e(first.get('read_on'))} from "
        f"{_e(_plain_source(first.get('source')))}. List prices, no free tier; see "
        "<code>prices.json</code> for what was and was not confirmed, and pass a prices file "
        "to use your own."
    )
    table = _html_table(["run", "USD / 1M req", "components", "billed on", "billed"], rows)
    return f'<h2>Cost per million requests</h2>{table}<p class="note">{note}</p>'


def _html_errors(result: dict[str, Any]) -> str:
    rows = []
    for run in result.get("runs") or []:
        for code, n in sorted((run.get("errors") or {}).items()):
            rows.append([str(run.get("label")), str(code), str(n)])
    if not rows:
        return ""
    return "<h2>Errors by code</h2>" + _html_table(["run", "code", "count"], rows)


def render_html(result: dict[str, Any], figures: list[plots.Plot]) -> str:
    """The whole report as one HTML string with nothing loaded from elsewhere."""
    head, rows = _table_rows(result)
    title = f"infergw bench: {result.get('scenario', '')} · {result.get('model', '')}"
    if figures:
        figs = "".join(
            f'<figure><figcaption>{_e(p.title)}</figcaption><img alt="{_e(p.title)}" '
            f'src="data:image/png;base64,{base64.b64encode(p.png).decode()}"></figure>'
            for p in figures
        )
    else:
        figs = '<p class="note">Plots need matplotlib: <code>pip install infergw[bench]</code>.</p>'
    notes = "".join(f"<li>{_e(n)}</li>" for n in _footnotes(result))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{_e(title)}</h1>
<div class="sub">{_e(_header_lines(result)[0])}</div>
{_html_meta(result)}
<h2>Summary</h2>
{_html_table(head, rows)}
<p class="note">Latency in ms, end to end, measured from the intended send time. Phase columns
are per-request medians (Server-Timing, and Triton's own spans via the gateway); ~ marks a
window mean from the server's statistics; unknown: not measured, and not counted as protocol.</p>
{f'<ul class="note">{notes}</ul>' if notes else ""}
<h2>Plots</h2>
{figs}
{_html_cost(result)}
{_html_errors(result)}
{_html_settings(result)}
<p class="note">schema {_e(result.get("schema"))} · generated by infergw bench</p>
</main></body></html>
"""


# --- entry point -------------------------------------------------------------------


def write_reports(result: dict[str, Any], out_dir: Path) -> None:
    """Write result.json, result.csv, report.html and report-*.png into ``out_dir``.

    Without matplotlib the JSON, CSV and HTML are still written (the HTML says how to
    get plots), so an interrupted or minimal install never loses measurements.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    _write_csv(result, out_dir / "result.csv")
    figures: list[plots.Plot] = []
    if plots.available():
        figures = plots.render_all(result)
        for fig in figures:
            (out_dir / f"report-{fig.name}.png").write_bytes(fig.png)
    else:
        log.warning(
            "matplotlib is not installed: report without plots (pip install infergw[bench])"
        )
    (out_dir / "report.html").write_text(render_html(result, figures))

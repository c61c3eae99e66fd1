"""Everything one run measures, in constant memory per second of run time.

``Recorder.record`` is the per-request hot path: one histogram update for the
end-to-end latency, a few counter increments, and, only when the server sent a
Server-Timing breakdown, one parse and a histogram update per phase.

A request that went through a backend which reported nothing of its own time (no
``backend_queue``, ``coldstart`` or ``compute``: Triton behind the gateway) has no
protocol time yet: its backend's share is not known. It is kept as three numbers (its
key, service time, the gateway phases to subtract) until ``apply_splits`` brings its
per-request split (``splits``); one that never gets one stays *unknown*, counted in
``split_unknown``, and is never folded into protocol. With the server's statistics for
the window (``server_stats``), those get window means instead, as perf_analyzer shows.
"""

from __future__ import annotations

import math
import re
from array import array
from collections import Counter
from typing import Any

from infergw.clients.timing import NOT_PROTOCOL
from infergw.loadgen.histogram import Histogram
from infergw.loadgen.timeseries import TimeSeries
from infergw.vocab.timing import BACKEND_REPORTED, TimingEntry
from infergw.wire.server_timing import answered_by, parse_server_timing

# What a sender returns: (error code or None when OK, raw Server-Timing or None, bytes
# received), plus the request's sequence number when it traces requests (``splits``).
PlainOutcome = tuple[str | None, str | None, int]
Outcome = PlainOutcome | tuple[str | None, str | None, int, int]
NO_KEY = -1  # a request without a sequence number: no split can be fetched for it
# seq -> (backend_queue_ms, compute_ms), as ``splits.fetch`` returns them.
Splits = dict[int, tuple[float, float]]

# ``protocol`` is derived; the others are the server's own. ``backend`` (the gateway's
# round trip) contains compute and the rest: it is recorded, not stacked with them.
SPLIT_PHASES = ("protocol", "queue", "backend_queue", "coldstart", "compute", "offload", "backend")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
LATE_S = 0.001  # a send dispatched more than this after its intended time is "late"


class Recorder:
    """Counters, HDR histograms and per-second windows of one run."""

    def __init__(
        self, start: float, warmup_s: float = 0.0, sent_bytes: int = 0, window_s: float = 1.0
    ) -> None:
        self.start = start
        self.measure_from = start + warmup_s
        self.warmup_s = warmup_s
        self.sent_bytes = sent_bytes
        self.latency = Histogram()
        self.phases: dict[str, Histogram] = {}
        self.errors: Counter[str] = Counter()
        self.timeseries = TimeSeries(start, window_s)
        self.ok = 0
        self.arrivals = 0  # measured arrivals (open loop), warm-up excluded
        self.late = 0
        self.max_late_ms = 0.0  # the latest send: a few ms on a busy machine, not a stall
        self.dropped = 0
        self.warmup_excluded = 0
        self.unfinished = 0
        self.received_bytes = 0
        self.last_done = start
        self.send_end: float | None = None  # when sending stopped (set by the runner)
        # Requests whose backend's share awaits a per-request split (see module docstring).
        self._unsplit_keys = array("q")
        self._unsplit_service = array("d")
        self._unsplit_gateway = array("d")  # their queue etc., to subtract as well
        self.split_unknown = 0
        self._resolved = False
        self.answered: Counter[tuple[str, str]] = Counter()  # (backend, reason) -> ok
        # backend -> [compute ms, coldstart ms] summed over the requests it answered:
        # what a serverless platform bills them (compute: the round trip when unreported).
        self._billed: dict[str, list[float]] = {}

    def arrival(self, intended: float) -> None:
        self.timeseries.at(intended).offered += 1
        if intended >= self.measure_from:
            self.arrivals += 1

    def drop(self, intended: float) -> None:
        self.timeseries.at(intended).dropped += 1
        if intended >= self.measure_from:
            self.dropped += 1

    def record(self, intended: float, sent: float, done: float, outcome: Outcome) -> None:
        """One completed request. Latency runs from the intended send time, or from the
        actual one when the scheduler sent up to half a millisecond early."""
        error, timing, received = outcome[0], outcome[1], outcome[2]
        latency_ms = (done - min(intended, sent)) * 1000.0
        window = self.timeseries.at(done)
        if error is None:
            window.ok += 1
            window.latency.record_ms(latency_ms)
        else:
            window.errors += 1
        if done > self.last_done:
            self.last_done = done
        if intended < self.measure_from:
            self.warmup_excluded += 1
            return
        if sent - intended > LATE_S:
            self.late += 1
            self.max_late_ms = max(self.max_late_ms, (sent - intended) * 1000.0)
        self.received_bytes += received
        if error is not None:
            self.errors[error] += 1
            return
        self.ok += 1
        self.latency.record_ms(latency_ms)
        key = outcome[3] if len(outcome) > 3 else NO_KEY
        if timing:
            server = phase_totals(timing)
            self._split((done - sent) * 1000.0, server, key)
            answer = answer_of(timing)
            if answer is not None:
                self.answered[answer] += 1
                window.answered["/".join(answer)] += 1
                billed = self._billed.setdefault(answer[0], [0.0, 0.0])
                billed[0] += server.get("compute", server.get("backend", 0.0))
                billed[1] += server.get("coldstart", 0.0)
        else:  # no Server-Timing (a server other than the gateway): nothing is split
            self._unsplit(key, (done - sent) * 1000.0, 0.0)

    def _split(self, service_ms: float, server: dict[str, float], key: int) -> None:
        """Server-Timing phases plus protocol = service time minus the non-protocol phases."""
        for phase in SPLIT_PHASES[1:]:
            if phase in server:
                self._phase(phase).record_ms(server[phase])
        gateway_ms = sum(server[p] for p in NOT_PROTOCOL if p in server)
        if "backend" in server and not any(p in server for p in BACKEND_REPORTED):
            self._unsplit(key, service_ms, gateway_ms)
            return
        # Negative only with parallel attempts (hedging); the histogram floors it at 0.
        self._phase("protocol").record_ms(service_ms - gateway_ms)

    def _unsplit(self, key: int, service_ms: float, gateway_ms: float) -> None:
        self._unsplit_keys.append(key)
        self._unsplit_service.append(service_ms)
        self._unsplit_gateway.append(gateway_ms)

    def apply_splits(self, splits: Splits | None) -> None:
        """Give the waiting requests their per-request ``backend_queue`` and ``compute`` (and
        so protocol); the rest are unknown. Once per run (``run_dict`` calls it, with none,
        if nobody did)."""
        if self._resolved:
            return
        self._resolved = True
        found = splits or {}
        for key, service_ms, gateway_ms in zip(
            self._unsplit_keys, self._unsplit_service, self._unsplit_gateway, strict=True
        ):
            split = found.get(key) if key != NO_KEY else None
            if split is None:
                self.split_unknown += 1
                continue
            queue_ms, compute_ms = split
            self._phase("backend_queue").record_ms(queue_ms)
            self._phase("compute").record_ms(compute_ms)
            self._phase("protocol").record_ms(service_ms - gateway_ms - queue_ms - compute_ms)

    def window_split(self, server_stats: dict[str, Any] | None) -> dict[str, float] | None:
        """Window means from the server's statistics, for when some requests have no split:
        its queue and compute means, and protocol = the mean (service - gateway phases) of
        every request that went through the backend, minus those (the statistics cover
        them all, not only the unknown)."""
        if not self.split_unknown or not server_stats:
            return None
        queue, compute = server_stats["queue_ms_mean"], server_stats["compute_ms_mean"]
        through = len(self._unsplit_service)
        residual = (sum(self._unsplit_service) - sum(self._unsplit_gateway)) / through
        return {"backend_queue": queue, "compute": compute, "protocol": residual - queue - compute}

    def slo(self, slo_ms: float) -> dict[str, float | int]:
        """SLO violations of the measured requests: answered slower than ``slo_ms``, or
        not answered at all (an error, or dropped by the outstanding bound)."""
        slow = self.latency.count_above(slo_ms)
        failed = sum(self.errors.values()) + self.dropped
        total = self.completed + self.dropped
        violations = slow + failed
        return {
            "ms": slo_ms,
            "slow": slow,
            "failed": failed,
            "violations": violations,
            "share": violations / total if total else 0.0,
        }

    def _billed_means(self) -> dict[str, dict[str, float]]:
        """Per answering backend: its requests, and their compute and coldstart means
        (over all of them: a warm request's cold start is 0)."""
        counts: Counter[str] = Counter()
        for (backend, _), n in self.answered.items():
            counts[backend] += n
        return {
            b: {"requests": counts[b], "compute": c / counts[b], "coldstart": cold / counts[b]}
            for b, (c, cold) in self._billed.items()
        }

    def _phase(self, name: str) -> Histogram:
        hist = self.phases.get(name)
        if hist is None:
            hist = self.phases[name] = Histogram()
        return hist

    @property
    def completed(self) -> int:
        return self.ok + sum(self.errors.values())

    def run_dict(
        self,
        label: str,
        mode: str,
        params: dict[str, Any],
        offered: bool,
        server_stats: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """This run in the result schema (``runs[i]``); ``offered``: open loop.

        ``split_unknown`` counts the requests whose backend share is not known per
        request; ``split_window_ms`` holds window means for them when ``server_stats``
        (the server's statistics over the window) has some.
        """
        self.apply_splits(None)
        send_end = self.send_end if self.send_end is not None else self.last_done
        window_s = max(send_end - self.measure_from, 1e-9)
        busy_s = max(window_s, self.last_done - self.measure_from)
        out: dict[str, Any] = {
            "label": label,
            "params": params,
            "mode": mode,
            "offered_rps": (self.arrivals / window_s) if offered else None,
            "achieved_rps": self.ok / busy_s if self.ok else 0.0,
            "requests": self.completed,
            "ok": self.ok,
            "errors": dict(self.errors),
            "answered": [
                {"backend": b, "reason": r, "requests": n, "share": n / self.ok}
                for (b, r), n in self.answered.most_common()
            ],
            "billed_ms_by_backend": self._billed_means(),
            "late_sends": self.late,
            "max_late_ms": self.max_late_ms,
            "dropped": self.dropped,
            "warmup_excluded": self.warmup_excluded,
            "unfinished": self.unfinished,
            "warmup_s": self.warmup_s,
            "measured_s": window_s,
            "latency_ms": self.latency.summary(),
            "split_ms": {
                phase: _p50_p95(self.phases[phase])
                for phase in SPLIT_PHASES
                if phase in self.phases
            },
            "split_unknown": self.split_unknown,
            "split_window_ms": self.window_split(server_stats),
            "server_stats": server_stats,
            "bytes": {
                "sent_per_request": float(self.sent_bytes),
                "received_per_request": self.received_bytes / self.completed
                if self.completed
                else 0.0,
            },
            "timeseries": [w.as_dict() for w in self.timeseries.windows()],
        }
        return out


def answer_of(header: str) -> tuple[str, str] | None:
    """(backend, reason) of the attempt that answered, when the gateway says: what
    ``server_timing.answered_by`` reads from the parsed header, from only its ``total``
    and ``backend`` items. A fast path as ``phase_totals`` is (~9 us against ~60 us for
    the full parse, per request): items split on commas, which is exact unless a quoted
    description holds a comma or an escape; such a header is parsed in full."""
    if "backend=" not in header:
        return None
    if "\\" in header or any("," in quoted for quoted in header.split('"')[1::2]):
        return answered_by(parse_server_timing(header))
    entries = []
    for item in header.split(","):
        name, _, params = item.partition(";")
        name = name.strip()
        if name == "total" or name == "backend":
            entries.append(TimingEntry(name, 0.0, _description(params)))
    return answered_by(entries)


def _description(params: str) -> str:
    """The ``desc`` of one item's parameters (quoted or not, no escapes), else ""."""
    start = params.find("desc=")
    if start < 0 or (start > 0 and params[start - 1] not in "; "):
        return ""
    value = params[start + 5 :].strip()
    if value.startswith('"'):
        return value[1 : value.find('"', 1)]
    return value.split(";", 1)[0].strip()


def phase_totals(header: str) -> dict[str, float]:
    """Phase -> ms summed over entries. A fast path for the plain ``name;dur=X`` items
    the gateway sends: 3-4x cheaper than ``core.timing.parse_server_timing``, whose
    results it matches (descriptions are not needed here)."""
    totals: dict[str, float] = {}
    if '"' in header:  # quoted descriptions may hide commas and semicolons: drop them
        header = _QUOTED.sub('""', header)
    for item in header.split(","):
        name, _, params = item.partition(";")
        start = params.find("dur=")
        if start < 0 or (start > 0 and params[start - 1] not in "; "):
            continue
        end = params.find(";", start)
        try:
            dur = float(params[start + 4 : end] if end >= 0 else params[start + 4 :])
        except ValueError:
            continue
        name = name.strip()
        totals[name] = totals.get(name, 0.0) + dur
    return totals


def _p50_p95(hist: Histogram) -> dict[str, float]:
    """A phase's p50 and p95, and its mean over the ``n`` requests that had the phase (a
    cost model bills means: a cold start's share of all requests is mean x n / ok)."""
    p50, p95 = hist.percentiles((50, 95))
    if math.isnan(p50):
        return {}
    return {"p50": p50, "p95": p95, "mean": hist.mean_ms, "n": hist.count}

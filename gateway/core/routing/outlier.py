"""Outlier ejection: a backend that keeps failing is taken out for a while, then back.

``consecutive_failures`` failures in a row (``Outcome.is_failure``: unavailable, per-try
timeouts, internal errors; never throttling, which means busy, not broken) eject the
backend for ``base_ejection_s`` x the times it was ejected, at most ``max_ejection_s``
(Envoy's rule). Each ``base_ejection_s`` spent back in service without an ejection takes
one off that count. A backend returning from ejection is on probation: its first failure
ejects it again at once, so an outage that lasts costs one failed request per ejection,
not ``consecutive_failures``; its first success clears the count.

A route skips its ejected backends, but ejects at most ``max_ejected_percent`` of them
(at least one, as Envoy): the rest still take traffic (``eligible``). A route of one
backend (``backend: NAME``) fails fast through ``OutlierGate``: UNAVAILABLE with a
Retry-After of the ejection's remaining time, instead of every client waiting for a
timeout during an outage (LiteLLM never cools down a group of one, litellm#40405).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

from infergw.gateway.core.backend import Backend
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.policies import Policy
from infergw.gateway.core.routing.clock import SYSTEM_CLOCK, Clock, remaining_s
from infergw.gateway.core.routing.config import OutlierConfig
from infergw.gateway.core.routing.outcomes import Outcome, outcome_of
from infergw.vocab.errors import InferGWError, Unavailable
from infergw.vocab.types import InferRequest, InferResponse


class OutlierDetector:
    """The ejection state of one backend (shared by every route that uses it)."""

    def __init__(self, name: str, config: OutlierConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.consecutive = 0
        self.times_ejected = 0
        self.ejected_at: float | None = None  # the current or last ejection's start
        self.ejected_until = -math.inf

    def ejected(self) -> bool:
        return self.clock.now() < self.ejected_until

    def ejection_left_s(self) -> float:
        """Seconds until the backend is back (0 when it is in service)."""
        return max(0.0, self.ejected_until - self.clock.now())

    def record(self, outcome: Outcome | None) -> None:
        """One attempt's result (None: a success)."""
        if outcome is None or outcome.shows_health:
            self.consecutive = 0
        elif outcome.is_failure:
            self.consecutive += 1
            if self.consecutive >= self.config.consecutive_failures and not self.ejected():
                self._eject()

    def _eject(self) -> None:
        now = self.clock.now()
        cfg = self.config
        if self.times_ejected and self.ejected_until < now:
            healthy_s = now - self.ejected_until  # back in service this long since the last
            self.times_ejected = max(0, self.times_ejected - int(healthy_s // cfg.base_ejection_s))
        self.times_ejected += 1
        self.ejected_at = now
        self.ejected_until = now + min(cfg.max_ejection_s, cfg.base_ejection_s * self.times_ejected)
        # On return it is on probation: one more failure ejects it again.
        self.consecutive = cfg.consecutive_failures - 1


def ejected_error(detector: OutlierDetector) -> Unavailable:
    """UNAVAILABLE for an ejected backend, with Retry-After: when it is back."""
    wait = max(1, math.ceil(detector.ejection_left_s()))
    return Unavailable(
        f"backend {detector.name!r} is ejected after repeated failures; retry after {wait} s",
        retry_after_s=wait,
    )


T = TypeVar("T")


def eligible(
    members: Sequence[T], detectors: Sequence[OutlierDetector | None]
) -> tuple[list[T], list[OutlierDetector]]:
    """The members a route may use now, in order, and the ejected ones it skips.

    At most ``max_ejected_percent`` of the route's members (the smallest setting among
    them; at least one) are skipped: the earliest ejected. Others, though ejected, are
    used: they take traffic and their outcome decides whether they stay out.
    """
    ejected = [(d.ejected_at or 0.0, i) for i, d in enumerate(detectors) if d and d.ejected()]
    if not ejected:
        return list(members), []
    percent = min(d.config.max_ejected_percent for d in detectors if d is not None)
    allowed = max(1, math.floor(len(members) * percent / 100.0))
    skipped = {i for _, i in sorted(ejected)[:allowed]}
    used = [m for i, m in enumerate(members) if i not in skipped]
    skipped_detectors = [d for i, d in enumerate(detectors) if i in skipped and d is not None]
    return used, skipped_detectors


class OutlierGate(Policy):
    """A backend that fails fast while ejected and reports each outcome to its detector.

    For a route of one backend. Route policies read the detector themselves (``eligible``)
    and record outcomes per attempt, so their members are the stacks without this gate.
    """

    def __init__(self, inner: Backend, detector: OutlierDetector) -> None:
        super().__init__(inner)
        self.detector = detector

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        detector = self.detector
        if detector.ejected():
            raise ejected_error(detector)
        deadline = ctx.deadline  # before the stack tightens it to a per-try timeout
        try:
            response = await self.inner.infer(request, ctx)
        except InferGWError as exc:
            detector.record(outcome_of(exc, remaining_s(deadline, detector.clock)))
            raise
        detector.record(None)
        return response

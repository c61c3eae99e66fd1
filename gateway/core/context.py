"""What travels with one request besides its data: deadline, timings, trace headers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from infergw.vocab.errors import DeadlineExceeded
from infergw.vocab.timing import Timings


@dataclass(slots=True)
class RequestContext:
    """Per-request state shared by frontend, router, policies and backend.

    ``deadline`` is a ``time.monotonic()`` instant (None: no deadline).
    ``headers`` are propagation headers (``traceparent``...) a backend must send on.
    ``pinned_backend`` is the backend the client asked for, if allowed by config.
    ``accepts_raw`` is the ``RawMessage.encoding`` the frontend can send on as is;
    a backend speaking it may return the response undecoded (the fast path).
    """

    protocol: str
    timings: Timings = field(default_factory=Timings)
    deadline: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    pinned_backend: str | None = None
    backend_name: str = ""
    accepts_raw: str | None = None
    attempts: int = 0  # backend round trips started so far (retries, hedges, fallbacks)

    def remaining(self) -> float | None:
        """Seconds until the deadline (None if unbounded); raises once it has passed."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("deadline exceeded before the request completed")
        return left

    def with_timeout(self, timeout_s: float | None) -> None:
        """Tighten the deadline to at most ``timeout_s`` from now."""
        if timeout_s is None:
            return
        candidate = time.monotonic() + timeout_s
        if self.deadline is None or candidate < self.deadline:
            self.deadline = candidate

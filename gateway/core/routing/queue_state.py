"""What spill-over reads from the primary's admission: the wait a new request would have.

``QueueState.expected_wait_s()`` is judged from the queue and recent service times, not
only from a full queue: with every slot busy and ``queued`` waiting, a new request starts
after ``queued + 1`` of the requests ahead finish, and ``max_concurrency`` slots finish
one every ``service_time / max_concurrency`` on average. So the estimate rises with the
first request that has to queue (within one service time of a burst) and is 0 again as
soon as a slot is free with no one waiting (the burst is over).

``policies.Admission`` can implement ``QueueState`` itself (it holds the counters and sees
each slot's hold time); until then ``AdmissionQueue`` reads its public counters.
"""

from __future__ import annotations

import math
from typing import Protocol

from infergw.gateway.core.routing.latency import LatencyWindow


class QueueState(Protocol):
    def expected_wait_s(self) -> float:
        """Seconds a request admitted now would wait for a slot (``inf``: cannot tell)."""
        ...


class AdmissionCounters(Protocol):
    """The public counters of ``policies.Admission``."""

    @property
    def in_flight(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def max_concurrency(self) -> int: ...


def expected_wait_s(
    in_flight: int, queued: int, max_concurrency: int, service_time_s: float | None
) -> float:
    """The wait of a request arriving now; ``inf`` when it must queue behind requests of
    unknown service time (no sample yet: assume the worst rather than promise a start)."""
    if in_flight < max_concurrency and queued == 0:
        return 0.0
    if service_time_s is None:
        return math.inf
    return (queued + 1) * service_time_s / max(1, max_concurrency)


class AdmissionQueue:
    """``QueueState`` of an admission policy, its service times in ``service_times``."""

    def __init__(self, admission: AdmissionCounters, service_times: LatencyWindow) -> None:
        self.admission = admission
        self.service_times = service_times

    def expected_wait_s(self) -> float:
        admission = self.admission
        return expected_wait_s(
            admission.in_flight,
            admission.queued,
            admission.max_concurrency,
            self.service_times.mean(),
        )

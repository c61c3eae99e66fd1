"""What a backend's error means for routing, decided once in a table.

``Outcome`` of an error (looked up along its class's MRO, so a new subclass inherits
its family's meaning):

    OUTAGE      UNAVAILABLE, DEADLINE_EXCEEDED of a per-try timeout: another backend may
                serve it, and it counts against the backend (outlier ejection)
    OVERLOAD    RESOURCE_EXHAUSTED (throttling, a full queue): another backend may serve
                it; not a failure of the backend (it is healthy, only busy)
    FAULT       INTERNAL (the model or backend failed it): counts against the backend,
                but is not moved on (the request itself may be what fails)
    CLIENT      the client's own mistake (INVALID_ARGUMENT, NOT_FOUND, a payload over a
                limit...): never moved on; the backend answered, so it is healthy
    OUT_OF_TIME DEADLINE_EXCEEDED of the client's own deadline: nothing to move on to
    CANCELLED   the client went away
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType

from infergw.vocab import errors
from infergw.vocab.errors import InferGWError


class Outcome(Enum):
    OUTAGE = "outage"
    OVERLOAD = "overload"
    FAULT = "fault"
    CLIENT = "client"
    OUT_OF_TIME = "out_of_time"
    CANCELLED = "cancelled"

    @property
    def moves_on(self) -> bool:
        """Whether the next backend may serve what this one did not."""
        return self in (Outcome.OUTAGE, Outcome.OVERLOAD)

    @property
    def is_failure(self) -> bool:
        """Whether it counts against the backend (consecutive failures)."""
        return self in (Outcome.OUTAGE, Outcome.FAULT)

    @property
    def shows_health(self) -> bool:
        """Whether it shows the backend answering (resets consecutive failures)."""
        return self is Outcome.CLIENT


_BY_ERROR: Mapping[type[InferGWError], Outcome] = MappingProxyType(
    {
        InferGWError: Outcome.FAULT,
        errors.BackendError: Outcome.FAULT,
        errors.InvalidArgument: Outcome.CLIENT,
        errors.FailedPrecondition: Outcome.CLIENT,
        errors.Unauthenticated: Outcome.CLIENT,
        errors.PermissionDenied: Outcome.CLIENT,
        errors.NotFound: Outcome.CLIENT,
        errors.Unimplemented: Outcome.CLIENT,
        errors.PayloadTooLarge: Outcome.CLIENT,
        errors.ResourceExhausted: Outcome.OVERLOAD,
        errors.Unavailable: Outcome.OUTAGE,
        errors.DeadlineExceeded: Outcome.OUTAGE,
        errors.Cancelled: Outcome.CANCELLED,
    }
)


def outcome_of(exc: InferGWError, deadline_left_s: float | None) -> Outcome:
    """The routing meaning of ``exc``, given the time the caller's deadline had left when
    it arrived: a deadline with none left is the client's, not a per-try timeout."""
    outcome = next(_BY_ERROR[c] for c in type(exc).__mro__ if c in _BY_ERROR)
    out_of_time = deadline_left_s is not None and deadline_left_s <= 0
    if out_of_time and isinstance(exc, errors.DeadlineExceeded):
        return Outcome.OUT_OF_TIME
    return outcome

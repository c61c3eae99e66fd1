"""What the SDK returns. Metadata and statistics reuse the core types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from infergw.clients.timing import TimingBreakdown
from infergw.vocab.types import EMPTY_PARAMS, Parameters

__all__ = ["InferResult", "ServerMetadata"]


@dataclass(frozen=True, slots=True)
class InferResult:
    """One inference: outputs as numpy arrays plus where the time went.

    Numeric outputs are read-only views on the received bytes (no copy); call
    ``.copy()`` to modify one. BYTES outputs are ``np.object_`` arrays of ``bytes``.
    """

    model: str
    outputs: Mapping[str, np.ndarray]
    timing: TimingBreakdown
    version: str = ""
    id: str = ""
    parameters: Parameters = field(default_factory=lambda: EMPTY_PARAMS)

    def as_numpy(self, name: str) -> np.ndarray:
        """tritonclient-style accessor; raises KeyError naming the available outputs."""
        try:
            return self.outputs[name]
        except KeyError:
            raise KeyError(f"no output {name!r}; got {sorted(self.outputs)}") from None


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...] = ()

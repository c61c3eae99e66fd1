"""The contract every example model implements, and input validation shared by all of them.

The same ``Model`` object runs inside Triton's python backend, the Lambda handler and the
SageMaker / Cloud Run containers, so it speaks numpy only and validates its own inputs:
each host turns ``ModelInputError`` into its protocol's "invalid argument" error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# OIP datatype -> numpy dtype. BYTES travels as np.object_ arrays of bytes.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}


class ModelInputError(ValueError):
    """The request's tensors do not fit the model (name, datatype, shape or content)."""


class UnknownModelError(LookupError):
    """No model is registered under the requested name."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the model declares it; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return NUMPY_DTYPES[self.datatype]

    def check(self, array: np.ndarray) -> None:
        """Raise ``ModelInputError`` unless ``array`` matches this spec."""
        if not _dtype_matches(self.datatype, array.dtype):
            raise ModelInputError(
                f"input {self.name!r}: expected datatype {self.datatype}, got numpy {array.dtype}"
            )
        if array.ndim != len(self.shape) or any(
            want not in (-1, got) for want, got in zip(self.shape, array.shape, strict=True)
        ):
            raise ModelInputError(
                f"input {self.name!r}: expected shape {list(self.shape)}, got {list(array.shape)}"
            )


def _dtype_matches(datatype: str, dtype: np.dtype) -> bool:
    if datatype == "BYTES":
        return dtype.kind in ("O", "S", "U")
    return dtype == NUMPY_DTYPES[datatype]


class Model(ABC):
    """A loaded model: declared I/O plus ``infer``; thread-compatible, stateless per call."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate ``inputs`` against the declared specs, then run the model."""
        expected = {spec.name for spec in self.inputs}
        unknown = sorted(set(inputs) - expected)
        if unknown:
            raise ModelInputError(
                f"model {self.name!r}: unexpected input(s) {unknown}; expects {sorted(expected)}"
            )
        for spec in self.inputs:
            if spec.name not in inputs:
                raise ModelInputError(f"model {self.name!r}: missing input {spec.name!r}")
            spec.check(np.asarray(inputs[spec.name]))
        return self._infer({name: np.asarray(value) for name, value in inputs.items()})

    @abstractmethod
    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on inputs that already passed validation."""

    def metadata(self) -> dict[str, object]:
        """OIP model metadata (``GET /v2/models/{name}``) for hosts that serve it themselves."""

        def specs(items: tuple[TensorSpec, ...]) -> list[dict[str, object]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in items]

        return {
            "name": self.name,
            "platform": "infergw_numpy",
            "inputs": specs(self.inputs),
            "outputs": specs(self.outputs),
        }

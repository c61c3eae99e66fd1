"""Identity models: echo the input, so every measured millisecond is overhead, not compute."""

from __future__ import annotations

import numpy as np

from infergw.models.base import Model, TensorSpec


class Identity(Model):
    """``input`` [-1, -1] of ``datatype`` echoed unchanged as ``output``."""

    def __init__(self, name: str = "identity", datatype: str = "FP32") -> None:
        self.name = name
        self.inputs = (TensorSpec("input", datatype, (-1, -1)),)
        self.outputs = (TensorSpec("output", datatype, (-1, -1)),)

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"output": inputs["input"]}

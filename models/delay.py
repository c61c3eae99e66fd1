"""A model that holds each request for a fixed service time without using the CPU.

It stands for an accelerator-bound model in experiments about capacity and routing
(``bench hybrid``): a GPU slot is busy for its service time whatever the host CPU does,
and on a 2-core machine a CPU model would measure the machine instead of the policy.
The input is echoed, so results stay checkable.
"""

from __future__ import annotations

import time

import numpy as np

from infergw.models.base import Model, TensorSpec

SERVICE_MS = 15.0  # bench hybrid's default --service-ms


class Delay(Model):
    """``input`` [-1, -1] FP32 echoed as ``output`` after ``service_ms`` of sleep."""

    def __init__(self, name: str = "delay", service_ms: float = SERVICE_MS) -> None:
        self.name = name
        self.service_s = service_ms / 1000.0
        self.inputs = (TensorSpec("input", "FP32", (-1, -1)),)
        self.outputs = (TensorSpec("output", "FP32", (-1, -1)),)

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.service_s)
        return {"output": inputs["input"]}

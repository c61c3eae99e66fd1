"""The decoupled ``repeat`` model: input[i] comes back as response i, then the final flag.

Triton-only: a decoupled model answers through a response sender, which only Triton's
python backend has (the ``infergw.models`` runtime behind the serverless backends
answers one response per request). Responses are sent from ``execute`` itself, one
request at a time per instance; a cancelled request (the client or the gateway ended the
stream) stops early, and every request ends with the final flag, which releases it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

CANCEL_POLL_S = 0.02  # how often a delay checks whether the request was cancelled


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self._repeat(request)

    def _repeat(self, request: Any) -> None:
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            values = pb_utils.get_input_tensor_by_name(request, "input").as_numpy()
            delay = pb_utils.get_input_tensor_by_name(request, "delay_ms")
            delay_s = 0.0 if delay is None else max(0, int(delay.as_numpy()[0])) / 1000.0
            for value in values:
                if not _wait(sender, delay_s):
                    break
                output = pb_utils.Tensor("output", np.array([value], dtype=np.int32))
                sender.send(pb_utils.InferenceResponse(output_tensors=[output]))
        except Exception as exc:  # report it as the request's last response; keep serving
            error = pb_utils.TritonError(f"repeat: {type(exc).__name__}: {exc}")
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=final)
            return
        sender.send(flags=final)


def _wait(sender: Any, seconds: float) -> bool:
    """Sleep ``seconds`` unless the request is cancelled meanwhile; False if it was."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sender.is_cancelled():
            return False
        time.sleep(min(left, CANCEL_POLL_S))
    return not sender.is_cancelled()

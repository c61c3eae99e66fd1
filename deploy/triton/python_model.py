"""The one ``TritonPythonModel`` behind every model in the bundled repository.

Triton's python backend imports each ``<model>/1/model.py``; those re-export this class, which
loads the runtime model named like the Triton model (or by the optional config parameter
``infergw_model``) and converts pb_utils tensors to numpy and back. Only the python-backend
stub imports this module: ``triton_python_backend_utils`` exists nowhere else.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from infergw.models import Model, ModelInputError, load_model


class TritonPythonModel:
    """Adapter: pb_utils requests -> ``Model.infer`` -> pb_utils responses, one per request."""

    model: Model

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameter = config.get("parameters", {}).get("infergw_model", {})
        name = parameter.get("string_value") or args["model_name"]
        self.model = load_model(name)

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._execute_one(request) for request in requests]

    def _execute_one(self, request: Any) -> Any:
        try:
            inputs = {}
            for spec in self.model.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
                if tensor is None:
                    raise ModelInputError(f"missing input {spec.name!r}")
                inputs[spec.name] = tensor.as_numpy()
            outputs = self.model.infer(inputs)
            return pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(array))
                    for name, array in outputs.items()
                ]
            )
        except ModelInputError as exc:
            return _error(str(exc), pb_utils.TritonError.INVALID_ARG)
        except Exception as exc:  # the model failed: report it, keep the instance serving
            pb_utils.Logger.log_error(f"{self.model.name}: {type(exc).__name__}: {exc}")
            return _error(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)


def _error(message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))

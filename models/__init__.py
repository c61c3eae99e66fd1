"""The one model runtime behind every backend: numpy in, numpy out.

Triton's python-backend models, the Lambda handler and the SageMaker / Cloud Run
containers all call ``load_model(name).infer({...})``, so a model behaves the same
on every backend and only the transport differs.
"""

from infergw.models.base import (
    NUMPY_DTYPES,
    Model,
    ModelInputError,
    TensorSpec,
    UnknownModelError,
)
from infergw.models.registry import MODELS, load_model

__all__ = [
    "MODELS",
    "NUMPY_DTYPES",
    "Model",
    "ModelInputError",
    "TensorSpec",
    "UnknownModelError",
    "load_model",
]

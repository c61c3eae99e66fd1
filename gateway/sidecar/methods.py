"""What the sidecar knows about the methods it forwards: cardinality and model-name path.

gRPC does not say on the wire whether a method streams, and a generic handler must
pick the cardinality before the first message arrives; so it comes from this table.
Every method of Triton's ``inference.GRPCInferenceService`` and of TF Serving's
``PredictionService``/``ModelService``/``SessionService`` is unary except those listed
in ``STREAMING``. A method not in the table (a newer server's addition, or another
service entirely) is forwarded as unary-unary: correct for every unary method, and
the upstream answers UNIMPLEMENTED for one it does not have, exactly as it would
direct. A client streaming on an unknown streaming method gets an error from the
sidecar's gRPC layer instead; add the method to ``STREAMING`` to support it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

OIP_SERVICE = "inference.GRPCInferenceService"
TF_PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
TF_MODEL_SERVICE = "tensorflow.serving.ModelService"
PROTOCOLS = ("oip", "tfserving")
# The services each protocol's health status is published under (besides "").
HEALTH_SERVICES = {
    "oip": (OIP_SERVICE,),
    "tfserving": (TF_PREDICTION_SERVICE, TF_MODEL_SERVICE),
}


class Cardinality(enum.Enum):
    UNARY_UNARY = "unary-unary"
    UNARY_STREAM = "unary-stream"
    STREAM_UNARY = "stream-unary"
    STREAM_STREAM = "stream-stream"

    @property
    def client_streams(self) -> bool:
        return self in (Cardinality.STREAM_UNARY, Cardinality.STREAM_STREAM)

    @property
    def server_streams(self) -> bool:
        return self in (Cardinality.UNARY_STREAM, Cardinality.STREAM_STREAM)


STREAMING = {
    f"/{OIP_SERVICE}/ModelStreamInfer": Cardinality.STREAM_STREAM,
    # Reflection is not served by the sidecar: forwarded, so clients see the upstream's
    # answer (every time: see grpc_proxy._RequestPump for the grpc.aio race it avoids).
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Cardinality.STREAM_STREAM,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Cardinality.STREAM_STREAM,
}


@dataclass(frozen=True, slots=True)
class Inference:
    """An inference method: metered per model; ``model_path`` locates the model name."""

    model_path: tuple[int, ...]


_TF_MODEL_NAME = (1, 1)  # *Request.model_spec(1).name(1)
INFERENCE = {
    f"/{OIP_SERVICE}/ModelInfer": Inference((1,)),  # ModelInferRequest.model_name(1)
    f"/{OIP_SERVICE}/ModelStreamInfer": Inference((1,)),  # the same, per message
    f"/{TF_PREDICTION_SERVICE}/Predict": Inference(_TF_MODEL_NAME),
    f"/{TF_PREDICTION_SERVICE}/Classify": Inference(_TF_MODEL_NAME),
    f"/{TF_PREDICTION_SERVICE}/Regress": Inference(_TF_MODEL_NAME),
    # MultiInferenceRequest.tasks(1).model_spec(1).name(1): the first task's model.
    f"/{TF_PREDICTION_SERVICE}/MultiInference": Inference((1, 1, 1)),
}


def cardinality(method: str) -> Cardinality:
    return STREAMING.get(method, Cardinality.UNARY_UNARY)


def short_name(method: str) -> str:
    """``/pkg.Service/Method`` -> ``pkg.Service/Method`` (span names, metric labels)."""
    return method.lstrip("/")

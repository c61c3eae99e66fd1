"""The AWS Lambda function: the example models behind an OIP-shaped event.

The event and reply are ``infergw.wire.lambda_event`` (the codec the gateway's
``lambda`` backend uses too): tensors inline as base64 of OIP raw bytes, or as S3
references for payloads over the 6 MB synchronous limit. Outputs travel through S3
(under the event's ``output_s3.prefix``) when inlining them would break Lambda's
6 MB response limit. ``{"action": "metadata", "model": ...}`` returns the model's
OIP metadata.

The models are loaded at import, i.e. in Lambda's Init phase, so their load time
is reported as Init Duration and paid once per execution environment:
``INFERGW_MODELS`` (comma-separated) picks them, default all example models.
Bad input raises an exception whose message says what is wrong; Lambda reports it
as a function error with that message. S3 goes through boto3 (part of the Lambda
Python runtime), endpoint and credentials from the standard environment.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from infergw.models import MODELS, Model, load_model
from infergw.models import TensorSpec as ModelSpec
from infergw.vocab.datatypes import tensor_from_numpy, tensor_to_numpy
from infergw.vocab.errors import InvalidArgument
from infergw.vocab.types import ModelMetadata, Tensor, TensorSpec
from infergw.wire import lambda_event as wire

MAX_RESPONSE_BYTES = 6_291_456  # Lambda's synchronous response limit
RESPONSE_HEADROOM = 64 * 1024  # JSON structure around the base64 payloads
DEFAULT_MODELS = ("identity", "minilm", "mobilenet", "yolo")


class ModelNotServed(LookupError):
    """The event names a model this function was not deployed with."""


class ResponseTooLarge(ValueError):
    """Outputs exceed the response limit and the event gave no ``output_s3``."""


def _configured_models() -> tuple[str, ...]:
    listed = os.environ.get("INFERGW_MODELS", "")
    names = [n.strip() for n in listed.split(",") if n.strip()]
    return tuple(names) if names else tuple(n for n in DEFAULT_MODELS if n in MODELS)


# Init phase: runs once per execution environment, before the first invocation.
LOADED: dict[str, Model] = {name: load_model(name) for name in _configured_models()}
_s3_client: Any = None


def _s3() -> Any:
    """One boto3 client per environment, created on first use (most requests need none)."""
    global _s3_client
    if _s3_client is None:
        import boto3  # in the Lambda runtime; AWS_ENDPOINT_URL_S3 is honoured by boto3

        _s3_client = boto3.client("s3")
    return _s3_client


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = wire.decode_event(event)  # InvalidArgument naming the field
    model = _model(request.model)
    if isinstance(request, wire.MetadataEvent):
        return wire.metadata_document(_metadata(model))
    tensors = [_resolve(t) for t in request.inputs]
    results = model.infer({t.name: tensor_to_numpy(t) for t in tensors})
    missing = [n for n in request.outputs if n not in results]
    if missing:
        raise InvalidArgument(f"model {model.name!r} has no output(s) {missing}")
    names = request.outputs or tuple(results)
    outputs = [tensor_from_numpy(n, np.asarray(results[n])) for n in names]
    reply = wire.InferReply(
        outputs=_offload_outputs(outputs, request.output_s3),
        model_name=model.name,
        model_version="1",
        id=request.id,
    )
    return wire.reply_document(reply)


def _model(name: str) -> Model:
    model = LOADED.get(name)
    if model is None:
        raise ModelNotServed(
            f"model {name!r} is not served by this function; it serves {sorted(LOADED)}"
        )
    return model


def _metadata(model: Model) -> ModelMetadata:
    def specs(items: tuple[ModelSpec, ...]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in items)

    platform = str(model.metadata()["platform"])
    return ModelMetadata(model.name, ("1",), platform, specs(model.inputs), specs(model.outputs))


def _resolve(tensor: wire.EventTensor) -> Tensor:
    """An input's bytes: inline already, or read from the S3 reference."""
    if isinstance(tensor, wire.S3Tensor):
        body = _s3().get_object(Bucket=tensor.ref.bucket, Key=tensor.ref.key)["Body"]
        return tensor.with_data(body.read())
    return tensor


def _offload_outputs(
    tensors: list[Tensor], target: wire.S3Prefix | None
) -> tuple[wire.EventTensor, ...]:
    """Inline every output, except the largest ones while the response would be too big."""
    to_s3 = wire.plan_offload(tensors, MAX_RESPONSE_BYTES - RESPONSE_HEADROOM)
    if to_s3 and target is None:
        raise ResponseTooLarge(
            f"outputs need more than the {MAX_RESPONSE_BYTES}-byte response limit "
            "and the event has no 'output_s3' to put them in"
        )
    out: list[wire.EventTensor] = []
    for t in tensors:
        if target is not None and t.name in to_s3:
            ref = wire.S3Ref(target.bucket, target.prefix + t.name)
            _s3().put_object(Bucket=ref.bucket, Key=ref.key, Body=bytes(t.data))
            out.append(wire.S3Tensor(t.name, t.datatype, t.shape, ref))
        else:
            out.append(t)
    return tuple(out)

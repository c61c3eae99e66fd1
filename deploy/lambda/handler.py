"""The AWS Lambda function: the example models behind an OIP-shaped event.

Event (what ``infergw.backends.aws_lambda`` sends)::

    {"model": "identity", "id": "...",
     "inputs": [{"name", "datatype", "shape", "data_b64": "..."}          # inline, or
                {"name", "datatype", "shape", "s3": {"bucket", "key"}}],  # offloaded
     "outputs": [{"name": "output"}],                                     # optional
     "output_s3": {"bucket", "prefix"}}                                   # optional

Tensor bytes are in OIP raw layout (little-endian; BYTES = 4-byte LE length + bytes).
The response has the same tensor shape; an output travels through S3 (under
``output_s3.prefix``) when inlining it would break Lambda's 6 MB response limit.
``{"action": "metadata", "model": ...}`` returns the model's OIP metadata.

The models are loaded at import, i.e. in Lambda's Init phase, so their load time
is reported as Init Duration and paid once per execution environment:
``INFERGW_MODELS`` (comma-separated) picks them, default all example models.
Bad input raises an exception whose message says what is wrong; Lambda reports it
as a function error with that message. S3 goes through boto3 (part of the Lambda
Python runtime), endpoint and credentials from the standard environment.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

import numpy as np

from infergw.models import MODELS, Model, load_model
from infergw.vocab.datatypes import tensor_from_numpy, tensor_to_numpy, validate_tensor
from infergw.vocab.errors import InvalidArgument
from infergw.vocab.types import Tensor

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
    if not isinstance(event, dict):
        raise InvalidArgument("event must be a JSON object")
    model = _model(event.get("model"))
    if event.get("action") == "metadata":
        return model.metadata()
    inputs = event.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument("event needs a non-empty 'inputs' list")
    arrays = {t.name: tensor_to_numpy(t) for t in (_read_input(item) for item in inputs)}
    results = model.infer(arrays)
    wanted = [_field(o, "name", str, "requested output") for o in event.get("outputs") or []]
    missing = [n for n in wanted if n not in results]
    if missing:
        raise InvalidArgument(f"model {model.name!r} has no output(s) {missing}")
    tensors = [tensor_from_numpy(n, np.asarray(results[n])) for n in wanted or list(results)]
    return {
        "model_name": model.name,
        "model_version": "1",
        "id": event.get("id", ""),
        "outputs": _write_outputs(tensors, event.get("output_s3")),
    }


def _model(name: Any) -> Model:
    if not isinstance(name, str) or not name:
        raise InvalidArgument("event needs a 'model' name")
    model = LOADED.get(name)
    if model is None:
        raise ModelNotServed(
            f"model {name!r} is not served by this function; it serves {sorted(LOADED)}"
        )
    return model


def _field(item: Any, key: str, kind: type, what: str) -> Any:
    value = item.get(key) if isinstance(item, dict) else None
    if not isinstance(value, kind):
        raise InvalidArgument(f"{what}: {key!r} must be a {kind.__name__}")
    return value


def _read_input(item: Any) -> Tensor:
    name = _field(item, "name", str, "input")
    what = f"input {name!r}"
    shape = _field(item, "shape", list, what)
    if not all(isinstance(d, int) for d in shape):
        raise InvalidArgument(f"{what}: shape must be a list of integers")
    if "s3" in item:
        ref = item["s3"]
        bucket, key = _field(ref, "bucket", str, what), _field(ref, "key", str, what)
        data = _s3().get_object(Bucket=bucket, Key=key)["Body"].read()
    else:
        try:
            data = base64.b64decode(_field(item, "data_b64", str, what), validate=True)
        except binascii.Error as exc:
            raise InvalidArgument(f"{what}: 'data_b64' is not valid base64") from exc
    tensor = Tensor(name, _field(item, "datatype", str, what), tuple(shape), data)
    validate_tensor(tensor)  # shape x datatype against the bytes, before any allocation
    return tensor


def _b64_len(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _write_outputs(tensors: list[Tensor], output_s3: Any) -> list[dict[str, Any]]:
    """Inline every output, except the largest ones while the response would be too big."""
    budget = MAX_RESPONSE_BYTES - RESPONSE_HEADROOM
    size = sum(_b64_len(len(t.data)) for t in tensors)
    to_s3: set[str] = set()
    for t in sorted(tensors, key=lambda t: len(t.data), reverse=True):
        if size <= budget:
            break
        to_s3.add(t.name)
        size -= _b64_len(len(t.data))
    if to_s3 and not isinstance(output_s3, dict):
        raise ResponseTooLarge(
            f"outputs need more than the {MAX_RESPONSE_BYTES}-byte response limit "
            "and the event has no 'output_s3' to put them in"
        )
    out = []
    for t in tensors:
        doc: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if t.name in to_s3:
            bucket = _field(output_s3, "bucket", str, "output_s3")
            key = _field(output_s3, "prefix", str, "output_s3") + t.name
            _s3().put_object(Bucket=bucket, Key=key, Body=bytes(t.data))
            doc["s3"] = {"bucket": bucket, "key": key}
        else:
            doc["data_b64"] = base64.b64encode(t.data).decode("ascii")
        out.append(doc)
    return out

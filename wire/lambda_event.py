"""The JSON body our Lambda function takes and gives back, for both sides of the invoke.

The gateway's ``lambda`` backend encodes events and decodes replies; the function
(``deploy/lambda/handler.py``) decodes events and encodes replies. One codec keeps
the two from drifting apart::

    event  {"model": "identity", "id": "...",
            "inputs": [{"name", "datatype", "shape", "data_b64": "..."},          # inline
                       {"name", "datatype", "shape", "s3": {"bucket", "key"}}],   # offloaded
            "outputs": [{"name": "output"}],                                      # optional
            "output_s3": {"bucket", "prefix"}}                                    # optional
    reply  {"model_name", "model_version", "id", "outputs": [same entries as inputs]}
    metadata event {"action": "metadata", "model": ...} -> OIP model metadata JSON
    error  {"errorType", "errorMessage", ...}   (what the Lambda runtime sends for a raise)

Tensor bytes are OIP raw layout (little-endian; BYTES = 4-byte LE length + bytes),
base64 inside JSON. Tensors too large for the 6 MB synchronous limit travel through
S3 (``S3Tensor``); ``plan_offload`` picks which, the same way on both sides. A bad
document raises ``InvalidArgument`` naming the field; the backend turns that into
``BackendError`` for a reply, as a bad reply is the function's fault, not the client's.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from infergw.vocab.datatypes import (
    check_datatype,
    count_bytes_elements,
    element_count,
    expected_nbytes,
)
from infergw.vocab.errors import InvalidArgument
from infergw.vocab.types import ModelMetadata, Tensor, TensorSpec

# What the function raises for bad input: the client's fault, not the backend's.
INPUT_ERROR_TYPES = frozenset({"InvalidArgument", "ModelInputError"})
METADATA_ACTION = "metadata"


@dataclass(frozen=True, slots=True)
class S3Ref:
    bucket: str
    key: str


@dataclass(frozen=True, slots=True)
class S3Prefix:
    """Where the function may write outputs too large to return inline."""

    bucket: str
    prefix: str


@dataclass(frozen=True, slots=True)
class S3Tensor:
    """A tensor whose bytes are in S3; ``with_data`` makes it a checked ``Tensor``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    ref: S3Ref

    def with_data(self, data: bytes) -> Tensor:
        return _checked(Tensor(self.name, self.datatype, self.shape, data), f"tensor {self.name!r}")


EventTensor = Tensor | S3Tensor


@dataclass(frozen=True, slots=True)
class InferEvent:
    model: str
    inputs: tuple[EventTensor, ...]
    id: str = ""
    outputs: tuple[str, ...] = ()  # requested outputs; empty: all
    output_s3: S3Prefix | None = None


@dataclass(frozen=True, slots=True)
class MetadataEvent:
    model: str


@dataclass(frozen=True, slots=True)
class InferReply:
    outputs: tuple[EventTensor, ...]
    model_name: str = ""
    model_version: str = ""
    id: str | None = None  # None: the function did not say (the request's id stands)


@dataclass(frozen=True, slots=True)
class FunctionError:
    """A function error (``X-Amz-Function-Error``) as the Lambda runtime reports a raise."""

    error_type: str
    message: str

    @property
    def is_input_error(self) -> bool:
        return self.error_type in INPUT_ERROR_TYPES


# --- sizes ---------------------------------------------------------------------------


def inline_size(nbytes: int) -> int:
    """Bytes that ``nbytes`` of tensor data take inline (base64)."""
    return 4 * ((nbytes + 2) // 3)


def plan_offload(tensors: Iterable[Tensor], budget: int) -> frozenset[str]:
    """Names of the tensors to send through S3 so the inline rest fits ``budget``:
    the largest first, as few as possible."""
    items = sorted(tensors, key=lambda t: len(t.data), reverse=True)
    size = sum(inline_size(len(t.data)) for t in items)
    chosen: set[str] = set()
    for t in items:
        if size <= budget:
            break
        chosen.add(t.name)
        size -= inline_size(len(t.data))
    return frozenset(chosen)


# --- encoding ------------------------------------------------------------------------


def encode_event(event: InferEvent | MetadataEvent) -> bytes:
    return json.dumps(event_document(event)).encode()


def event_document(event: InferEvent | MetadataEvent) -> dict[str, Any]:
    if isinstance(event, MetadataEvent):
        return {"action": METADATA_ACTION, "model": event.model}
    doc: dict[str, Any] = {
        "model": event.model,
        "id": event.id,
        "inputs": [_tensor_document(t) for t in event.inputs],
    }
    if event.outputs:
        doc["outputs"] = [{"name": name} for name in event.outputs]
    if event.output_s3 is not None:
        doc["output_s3"] = {"bucket": event.output_s3.bucket, "prefix": event.output_s3.prefix}
    return doc


def reply_document(reply: InferReply) -> dict[str, Any]:
    """What the function returns (the Lambda runtime serializes it)."""
    return {
        "model_name": reply.model_name,
        "model_version": reply.model_version,
        "id": reply.id or "",
        "outputs": [_tensor_document(t) for t in reply.outputs],
    }


def metadata_document(metadata: ModelMetadata) -> dict[str, Any]:
    """OIP model metadata JSON, the reply to a ``MetadataEvent``."""

    def specs(items: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in items]

    return {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": specs(metadata.inputs),
        "outputs": specs(metadata.outputs),
    }


def _tensor_document(tensor: EventTensor) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
    }
    if isinstance(tensor, S3Tensor):
        doc["s3"] = {"bucket": tensor.ref.bucket, "key": tensor.ref.key}
    else:
        doc["data_b64"] = base64.b64encode(tensor.data).decode("ascii")
    return doc


# --- decoding ------------------------------------------------------------------------


def decode_event(event: object) -> InferEvent | MetadataEvent:
    """An event as the function receives it (a parsed JSON object, or its bytes)."""
    doc = _object(_parsed(event, "event"), "event")
    model = _str(doc, "model", "event", required=True)
    if doc.get("action") == METADATA_ACTION:
        return MetadataEvent(model)
    inputs = _list(doc, "inputs", "event")
    if not inputs:
        raise InvalidArgument("event: 'inputs' must be a non-empty list")
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidArgument("event: 'outputs' must be a list")
    target = doc.get("output_s3")
    return InferEvent(
        model=model,
        inputs=tuple(_tensor(item, f"inputs[{i}]") for i, item in enumerate(inputs)),
        id=_str(doc, "id", "event"),
        outputs=tuple(
            _str(_object(o, f"outputs[{i}]"), "name", f"outputs[{i}]", required=True)
            for i, o in enumerate(outputs)
        ),
        output_s3=None if target is None else _s3_prefix(target),
    )


def decode_reply(payload: object) -> InferReply:
    """The function's answer to an ``InferEvent`` (bytes, or the parsed object)."""
    doc = _object(_parsed(payload, "reply"), "reply")
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidArgument("reply: 'outputs' must be a list")
    reply_id = doc.get("id")
    return InferReply(
        outputs=tuple(_tensor(item, f"outputs[{i}]") for i, item in enumerate(outputs)),
        model_name=_str(doc, "model_name", "reply"),
        model_version=str(doc.get("model_version", "")),
        id=None if reply_id is None else str(reply_id),
    )


def decode_metadata(payload: object, model: str) -> ModelMetadata:
    """The function's answer to a ``MetadataEvent``."""
    doc = _object(_parsed(payload, "metadata"), "metadata")
    versions = doc.get("versions") or ["1"]
    if not isinstance(versions, list):
        raise InvalidArgument("metadata: 'versions' must be a list")

    def specs(key: str) -> tuple[TensorSpec, ...]:
        items = _list(doc, key, "metadata")
        out = []
        for i, item in enumerate(items):
            what = f"{key}[{i}]"
            spec = _object(item, what)
            out.append(
                TensorSpec(
                    _str(spec, "name", what, required=True),
                    _str(spec, "datatype", what, required=True),
                    _shape(spec, what, allow_variable=True),
                )
            )
        return tuple(out)

    return ModelMetadata(
        name=_str(doc, "name", "metadata") or model,
        versions=tuple(str(v) for v in versions),
        platform=_str(doc, "platform", "metadata"),
        inputs=specs("inputs"),
        outputs=specs("outputs"),
    )


def decode_function_error(payload: object) -> FunctionError:
    """The body of a function error; a body that is not the runtime's shape still gives
    a usable ``FunctionError`` (its message is then generic: it may be anything)."""
    try:
        doc = _parsed(payload, "error")
    except InvalidArgument:
        doc = None
    if not isinstance(doc, Mapping):
        return FunctionError("Error", "the function failed without an error document")
    return FunctionError(
        str(doc.get("errorType") or "Error"), str(doc.get("errorMessage") or "no message")
    )


def _tensor(item: object, what: str) -> EventTensor:
    doc = _object(item, what)
    name = _str(doc, "name", what, required=True)
    what = f"{what} ({name!r})"
    datatype = _str(doc, "datatype", what, required=True)
    check_datatype(datatype, what)
    shape = _shape(doc, what)
    if "s3" in doc:
        ref = _object(doc["s3"], f"{what}.s3")
        bucket = _str(ref, "bucket", f"{what}.s3", required=True)
        key = _str(ref, "key", f"{what}.s3", required=True)
        return S3Tensor(name, datatype, shape, S3Ref(bucket, key))
    encoded = doc.get("data_b64")
    if not isinstance(encoded, str):
        raise InvalidArgument(f"{what}: needs 'data_b64' (a base64 string) or 's3'")
    try:
        data = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise InvalidArgument(f"{what}: 'data_b64' is not valid base64") from exc
    return _checked(Tensor(name, datatype, shape, data), what)


def _checked(tensor: Tensor, what: str) -> Tensor:
    """``tensor`` if its bytes are exactly what shape x datatype declare."""
    expected = expected_nbytes(tensor.datatype, tensor.shape, what)
    if expected is None:  # BYTES: count the length-prefixed elements
        expected, found, unit = (
            element_count(tensor.shape, what),
            count_bytes_elements(tensor.data, what),
            "BYTES elements",
        )
    else:
        found, unit = len(tensor.data), "bytes"
    if found != expected:
        raise InvalidArgument(
            f"{what}: shape {list(tensor.shape)} with datatype {tensor.datatype} needs "
            f"{expected} {unit}, got {found}"
        )
    return tensor


def _s3_prefix(target: object) -> S3Prefix:
    doc = _object(target, "output_s3")
    return S3Prefix(
        _str(doc, "bucket", "output_s3", required=True),
        _str(doc, "prefix", "output_s3", required=True),
    )


def _parsed(payload: object, what: str) -> object:
    if isinstance(payload, bytes | bytearray | memoryview | str):
        try:
            return json.loads(bytes(payload) if not isinstance(payload, str) else payload)
        except ValueError as exc:
            raise InvalidArgument(f"{what}: not JSON ({exc.__class__.__name__})") from exc
    return payload


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{what}: must be a JSON object")
    return value


def _list(doc: Mapping[str, Any], key: str, what: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise InvalidArgument(f"{what}: {key!r} must be a list")
    return value


def _str(doc: Mapping[str, Any], key: str, what: str, required: bool = False) -> str:
    value = doc.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        kind = "a non-empty string" if required else "a string"
        raise InvalidArgument(f"{what}: {key!r} must be {kind}")
    return value


def _shape(doc: Mapping[str, Any], what: str, allow_variable: bool = False) -> tuple[int, ...]:
    value = doc.get("shape")
    lowest = -1 if allow_variable else 0
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= lowest for d in value
    ):
        kind = "integers (-1: any size)" if allow_variable else "non-negative integers"
        raise InvalidArgument(f"{what}: 'shape' must be a list of {kind}")
    return tuple(value)

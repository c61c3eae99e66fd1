"""Codec between TensorFlow Serving's REST JSON (``/v1/models/...``) and the core types.

No I/O: the TF Serving REST frontend (``gateway.frontends.tfserving_rest``) feeds it
bodies and metadata. The formats are those of TF Serving's RESTful API and its
``json_tensor.cc``:

- Predict requests carry tensors in row form (``instances``: one entry per batch item,
  objects keyed by input name when there are several inputs) or columnar form
  (``inputs``: one value, or an object of named values). A JSON value says nothing of
  its dtype, so decoding needs the signature's inputs (``TensorSpec``); a value is
  accepted only where TF Serving accepts it (an integer for an int tensor, any number
  for a float one, ``true``/``false`` for bool, a string or ``{"b64": ...}`` for
  strings) and integers must fit their dtype exactly: no float round trip.
- Responses mirror the request's form: ``predictions`` (row) or ``outputs`` (columnar),
  the output's name omitted when there is one. Strings are JSON strings, or
  ``{"b64": ...}`` for an output named ``*_bytes`` (TF Serving's rule) and for bytes
  that are not UTF-8 (which TF Serving would write as invalid JSON). Floats are
  numbers; NaN and infinities are the ``NaN``/``Infinity`` tokens TF Serving writes
  and reads (orjson reads neither, so a body holding them is parsed by the stdlib).
- Model metadata is ``GetModelMetadataResponse`` in protobuf's JSON mapping with the
  proto field names, as TF Serving prints it; model status is ``GetModelStatusResponse``.

Errors are ``InvalidArgument`` worded as TF Serving words them where it has words.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import numpy as np
import orjson
from google.protobuf import json_format

from infergw.proto.tfs import get_model_metadata_pb2
from infergw.vocab.datatypes import NUMPY_DTYPES, deserialize_bytes, serialize_bytes
from infergw.vocab.errors import BackendError, InvalidArgument
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec
from infergw.wire import tfserving

# A parsed JSON document (what orjson and the stdlib return).
Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"

SIGNATURE_KEY = "signature_name"
INSTANCES_KEY = "instances"
INPUTS_KEY = "inputs"
PREDICTIONS_KEY = "predictions"
OUTPUTS_KEY = "outputs"
B64_KEY = "b64"
BYTES_SUFFIX = "_bytes"  # TF Serving's rule: a DT_STRING output named so is binary
MAX_RANK = 64  # deeper nesting is refused before it is walked
MAX_VERSION = 2**63 - 1  # versions are int64
_DEBUG_CHARS = 100  # how much of an offending value an error message quotes
_NULL = re.compile(rb"null")
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


class Format(enum.Enum):
    """How a predict request gave its tensors; the response answers in the same form."""

    ROW = INSTANCES_KEY
    COLUMNAR = INPUTS_KEY


@dataclass(frozen=True, slots=True)
class PredictBody:
    """A parsed predict body: its signature, form, and the tensors' JSON as sent."""

    signature: str
    format: Format
    tensors: Json


# -- TF's names for things ---------------------------------------------------------------
def tf_type_name(datatype: str) -> str:
    """TF's ``DataTypeString``: ``float``, ``int64``, ``string``..."""
    dtype = tfserving.FROM_OIP.get(datatype)
    if dtype is None:
        return datatype
    return tfserving.DT.Name(dtype).removeprefix("DT_").lower()


def _json_type(value: Json) -> str:
    """rapidjson's type names, which TF Serving's messages use."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int | float):
        return "Number"
    if isinstance(value, str):
        return "String"
    return "Array" if isinstance(value, list) else "Object"


def _debug(value: Json) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # an int beyond 64 bits (the stdlib parsed it): orjson refuses it
        text = json.dumps(value)
    return text if len(text) <= _DEBUG_CHARS else text[:_DEBUG_CHARS] + "..."


def _type_error(value: Json, datatype: str) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected type: "
        f"{tf_type_name(datatype)}"
    )


# -- URL parts ---------------------------------------------------------------------------
def parse_version(text: str) -> str:
    """A ``/versions/N`` segment (digits, by the route) as the core's version string."""
    if not text.isdigit() or int(text) > MAX_VERSION:
        raise InvalidArgument(f"Failed to convert version: {text[:32]} to numeric.")
    return str(int(text))


# -- predict requests --------------------------------------------------------------------
def parse_json(body: bytes | bytearray) -> Json:
    """orjson; the stdlib only for what orjson refuses and TF Serving reads (NaN, Infinity)."""
    if not body.strip():
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)  # type: ignore[no-any-return]
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(body)  # type: ignore[no-any-return]
        except (ValueError, RecursionError):
            raise InvalidArgument(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from exc


def parse_predict_body(body: bytes | bytearray) -> PredictBody:
    """The body's signature and tensors; which inputs they fill needs the signature."""
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise InvalidArgument(f"JSON Value: {_debug(doc)} Is not object")
    signature = doc.get(SIGNATURE_KEY, "")
    if not isinstance(signature, str):
        raise InvalidArgument(
            f"JSON Value: {_debug(signature)} not formatted correctly. "
            f"'{SIGNATURE_KEY}' key must be a string value."
        )
    has_instances, has_inputs = INSTANCES_KEY in doc, INPUTS_KEY in doc
    if has_instances and has_inputs:
        raise InvalidArgument(
            f"Not formatted correctly expecting only one of '{INPUTS_KEY}' or "
            f"'{INSTANCES_KEY}' keys to exist"
        )
    if has_instances:
        instances = doc[INSTANCES_KEY]
        if not isinstance(instances, list):
            raise InvalidArgument(f"Expecting '{INSTANCES_KEY}' to be an list/array")
        if not instances:
            raise InvalidArgument(f"No values in '{INSTANCES_KEY}' array")
        return PredictBody(signature, Format.ROW, instances)
    if has_inputs:
        return PredictBody(signature, Format.COLUMNAR, doc[INPUTS_KEY])
    raise InvalidArgument(f"Missing '{INPUTS_KEY}' or '{INSTANCES_KEY}' key")


def predict_request(
    model: str, version: str, body: PredictBody, inputs: Sequence[TensorSpec]
) -> InferRequest:
    """The core request for ``body``, given the signature's ``inputs`` (names, dtypes)."""
    if not inputs:
        raise InvalidArgument(
            f"Failed to get input map for signature: {body.signature or 'DEFAULT'}"
        )
    specs = sorted(inputs, key=lambda s: s.name)
    if body.format is Format.COLUMNAR:
        values = _columnar_values(body.tensors, specs)
    elif isinstance(body.tensors, list) and body.tensors:
        values = _row_values(body.tensors, specs)
    else:
        raise InvalidArgument(f"Expecting '{INSTANCES_KEY}' to be a non-empty list")
    tensors = tuple(_tensor(spec, values[spec.name]) for spec in specs)
    return InferRequest(model=model, version=version, inputs=tensors)


def _is_b64(value: Json) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64_KEY), str)


def _is_object(value: Json) -> bool:
    """An object of named tensors (a ``{"b64": ...}`` value is a tensor, not that)."""
    return isinstance(value, dict) and not _is_b64(value)


def _row_values(instances: list[Json], specs: Sequence[TensorSpec]) -> dict[str, Json]:
    """Each input's instances stacked: element i of every input is instance i's."""
    names = [s.name for s in specs]
    if not _is_object(instances[0]):
        if len(specs) > 1:
            raise InvalidArgument(
                "instances is a plain list, but expecting list of objects as multiple "
                "input tensors required as per tensorinfo_map"
            )
        for i, item in enumerate(instances):
            if _is_object(item):
                raise InvalidArgument(
                    f"Expecting value/list but got object at item {i} of input list"
                )
        return {names[0]: instances}
    wanted = set(names)
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or not _is_object(item):
            raise InvalidArgument(f"Expecting object but got list at item {i} of input list")
        if set(item) != wanted:
            raise InvalidArgument(
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{_debug(item)} keys must be equal to: {','.join(names)}"
            )
    return {name: [item[name] for item in instances if isinstance(item, dict)] for name in names}


def _columnar_values(tensors: Json, specs: Sequence[TensorSpec]) -> dict[str, Json]:
    if not isinstance(tensors, dict) or not _is_object(tensors):
        if len(specs) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        return {specs[0].name: tensors}
    for spec in specs:
        if spec.name not in tensors:
            raise InvalidArgument(f"Missing named input: {spec.name} in '{INPUTS_KEY}' object.")
    return {spec.name: tensors[spec.name] for spec in specs}


def _shape_and_leaves(value: Json, what: str) -> tuple[tuple[int, ...], list[Json], set[type[Any]]]:
    """A dense tensor's shape (from first elements, as TF does), its values (row-major)
    and their Python types (one C-speed pass: the per-element checks use it)."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        if len(shape) == MAX_RANK:
            raise InvalidArgument(f"{what}: lists nested deeper than {MAX_RANK} levels")
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    level: list[Json] = [value]
    for depth, size in enumerate(shape):
        below: list[Json] = []
        for item in level:
            if not isinstance(item, list):
                raise InvalidArgument(
                    f"{what}: JSON Value: {_debug(item)} found at incorrect level: {depth} "
                    f"in the JSON DOM. Expected at level: {len(shape)}"
                )
            if len(item) != size:
                raise InvalidArgument(
                    f"{what}: Encountered list at unexpected size: {len(item)} at level: "
                    f"{depth} expected size: {size}"
                )
            below.extend(item)
        level = below
    types = set(map(type, level))
    if list in types:
        raise InvalidArgument(
            f"{what}: Encountered list at unexpected level: {len(shape)} expected < {len(shape)}"
        )
    return tuple(shape), level, types


# The Python types a JSON value of each kind of datatype may have (bool is not an int here).
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
_NUMBER_TYPES = frozenset({int, float})
_INT_TYPES = frozenset({int})
_BOOL_TYPES = frozenset({bool})


def _tensor(spec: TensorSpec, value: Json) -> Tensor:
    what = f"input {spec.name!r}"
    shape, leaves, found = _shape_and_leaves(value, what)
    datatype = spec.datatype
    if datatype == "BYTES":
        data = serialize_bytes([_string_bytes(v, what) for v in leaves])
        return Tensor(spec.name, datatype, shape, data)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"{what} has datatype {datatype}, which JSON cannot carry")
    if datatype in _FLOATS:
        allowed = _NUMBER_TYPES
    elif datatype == "BOOL":
        allowed = _BOOL_TYPES
    else:
        allowed = _INT_TYPES
    if not found <= allowed:
        bad = next(v for v in leaves if type(v) not in allowed)
        raise InvalidArgument(f"{what}: {_type_error(bad, datatype).message}")
    if allowed is _INT_TYPES and leaves:  # exact bounds: Python ints, no float round trip
        ints, info = cast(list[int], leaves), np.iinfo(dtype)
        for bound in (min(ints), max(ints)):
            if not info.min <= bound <= info.max:
                raise InvalidArgument(f"{what}: {_type_error(bound, datatype).message}")
    try:
        with np.errstate(over="ignore"):  # a double beyond float32 is inf, as in TF
            array = np.array(leaves, dtype=dtype)
    except OverflowError as exc:  # an integer beyond any float (only the stdlib parses one)
        raise InvalidArgument(
            f"{what}: a value is out of range for {tf_type_name(datatype)}"
        ) from exc
    return Tensor(spec.name, datatype, shape, array.tobytes())


def _string_bytes(value: Json, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict):
        encoded = value.get(B64_KEY)
        if not _is_b64(value) or not isinstance(encoded, str):
            raise InvalidArgument(
                f"{what}: JSON Value: {_debug(value)} not formatted correctly for base64 data"
            )
        try:  # absl's Base64Unescape, which TF uses, takes unpadded text too
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"{what}: Unable to base64 decode") from None
    raise InvalidArgument(f"{what}: {_type_error(value, 'BYTES').message}")


# -- predict responses -------------------------------------------------------------------
def predict_response_json(response: InferResponse, fmt: Format) -> bytes:
    """``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar), outputs by name."""
    outputs = sorted(response.outputs, key=lambda t: t.name)
    if not outputs:
        raise BackendError(f"model {response.model!r} returned no outputs")
    if fmt is Format.COLUMNAR:
        values = {t.name: _output_value(t) for t in outputs}
        doc: dict[str, Any] = {OUTPUTS_KEY: _single_or_named(values)}
        return orjson.dumps(doc, option=_NUMPY)
    batch = _batch_size(outputs)
    if len(outputs) == 1:  # the list of its rows is the tensor itself
        predictions: Any = _output_value(outputs[0])
    else:
        rows = {t.name: list(_output_rows(t)) for t in outputs}
        predictions = [{name: items[i] for name, items in rows.items()} for i in range(batch)]
    return orjson.dumps({PREDICTIONS_KEY: predictions}, option=_NUMPY)


def _single_or_named(values: Mapping[str, Any]) -> Any:
    return next(iter(values.values())) if len(values) == 1 else dict(values)


def _batch_size(outputs: Sequence[Tensor]) -> int:
    """Row form needs every output batched alike (TF Serving's check and words)."""
    batch = -1
    for tensor in outputs:
        if not tensor.shape:
            raise InvalidArgument(f"Tensor name: {tensor.name} has no shape information ")
        if batch >= 0 and tensor.shape[0] != batch:
            raise InvalidArgument(
                f"Tensor name: {tensor.name} has inconsistent batch size: {tensor.shape[0]} "
                f"expecting: {batch}"
            )
        batch = tensor.shape[0]
    return batch


def _output_value(tensor: Tensor) -> Any:
    """What orjson writes for a whole tensor: an array, a numpy scalar, nested lists..."""
    if tensor.datatype == "BYTES":
        return _nest(_strings(tensor), tensor.shape)
    array = _array(tensor)
    return _numbers(array, _has_non_finite(array))


def _output_rows(tensor: Tensor) -> Iterator[Any]:
    """The tensor's items along its first (batch) dimension."""
    if tensor.datatype == "BYTES":
        yield from _nest(_strings(tensor), tensor.shape)
        return
    array = _array(tensor)
    non_finite = _has_non_finite(array)
    for row in array:
        yield _numbers(row, non_finite)


def _array(tensor: Tensor) -> np.ndarray[Any, Any]:
    dtype = NUMPY_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise BackendError(f"output {tensor.name!r} has datatype {tensor.datatype}")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tensor.shape)


def _has_non_finite(array: np.ndarray[Any, Any]) -> bool:
    return array.dtype.kind == "f" and not bool(np.isfinite(array).all())


def _numbers(array: Any, non_finite: bool) -> Any:
    """A numpy array or scalar for orjson; with NaN/infinities, the JSON TF Serving writes.

    orjson writes a non-finite float as ``null``; in a numeric array nothing else is
    ``null``, so each is replaced, in order, by its token.
    """
    value = array[()] if array.ndim == 0 else array
    if not non_finite or bool(np.isfinite(array).all()):
        return value
    flat = np.asarray(array).reshape(-1)
    tokens = iter(
        b"NaN" if np.isnan(v) else (b"Infinity" if v > 0 else b"-Infinity")
        for v in flat[~np.isfinite(flat)]
    )
    text = _NULL.sub(lambda _: next(tokens), orjson.dumps(value, option=_NUMPY))
    return orjson.Fragment(text)


def _strings(tensor: Tensor) -> list[Any]:
    binary = tensor.name.endswith(BYTES_SUFFIX)
    return [_string_value(item, binary) for item in deserialize_bytes(tensor.data)]


def _string_value(item: bytes, binary: bool) -> Any:
    if not binary:
        try:
            return item.decode()
        except UnicodeDecodeError:
            pass  # JSON strings are UTF-8: bytes that are not go as base64
    return {B64_KEY: base64.b64encode(item).decode()}


def _nest(flat: list[Any], shape: Sequence[int]) -> Any:
    """Flat row-major values as nested lists of ``shape`` (a scalar for shape ())."""
    if not shape:
        return flat[0]
    for k in range(len(shape) - 1, 0, -1):
        size, count = shape[k], math.prod(shape[:k])
        flat = [flat[i * size : (i + 1) * size] for i in range(count)]
    return flat


# -- metadata and status -----------------------------------------------------------------
def metadata_json(meta: ModelMetadata, version: str) -> bytes:
    """``GetModelMetadataResponse`` as TF Serving's REST prints it (proto field names)."""
    msg = tfserving.metadata_to_proto(meta, version)
    sig_map = get_model_metadata_pb2.SignatureDefMap.FromString(
        msg.metadata[tfserving.SIGNATURE_DEF].value
    )
    doc = {
        "model_spec": _proto_dict(msg.model_spec),
        "metadata": {tfserving.SIGNATURE_DEF: _proto_dict(sig_map)},
    }
    return orjson.dumps(doc)


def _proto_dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def status_json(versions: Sequence[str]) -> bytes:
    """``GetModelStatusResponse``: each version AVAILABLE (the gateway lists ready ones)."""
    statuses = [
        {
            "version": version or "0",
            "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""},
        }
        for version in versions
    ]
    return orjson.dumps({"model_version_status": statuses})


def error_json(message: str) -> bytes:
    """TF Serving's error body."""
    return orjson.dumps({"error": message})

"""Open Inference Protocol v2 HTTP/JSON codec, with the binary tensor extension.

Pure functions (no I/O) between the OIP REST wire format and the core types; the
gateway's REST frontend uses the request decoder and response encoder, the SDK's
REST client the other two. Wire layout of a body::

    {JSON header}{binary tensor 0}{binary tensor 1}...
    ^------------^ ``Inference-Header-Content-Length`` (absent: the body is all JSON)

A tensor travels in binary when its ``parameters.binary_data_size`` is set; the
blobs follow the header in tensor order. Which outputs come back in binary is
chosen by the request: per requested output ``parameters.binary_data``, else the
request-level ``parameters.binary_data_output`` (default false), as Triton does.

Model metadata and Triton's statistics extension have one converter pair each
here (``metadata_to_json``/``metadata_from_json``, ``statistics_to_json``/
``statistics_from_json``), used by the REST frontend and the SDK.

JSON is parsed and written with orjson: fast, strict UTF-8 (a lone surrogate is refused,
and named by its field), and tensor data is written straight from numpy arrays. What
other wires cannot carry is refused here as a client's mistake, not left to fail in a
backend's encoder: integer parameters outside int64 (OIP gRPC's ``int64_param``).
Binary tensors stay ``memoryview`` slices of the body: nothing is copied on the
way in. Declared shapes are checked (``element_count``) before anything sized by
them is built. Bad requests raise ``InvalidArgument``; a malformed response (or a
backend output that does not match its own shape) raises ``BackendError`` so a
client is never blamed for a server's mistake.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import orjson

from infergw.vocab.datatypes import (
    NUMPY_DTYPES,
    check_datatype,
    count_bytes_elements,
    deserialize_bytes,
    element_count,
    expected_nbytes,
    serialize_bytes,
)
from infergw.vocab.errors import BackendError, InferGWError, InvalidArgument
from infergw.vocab.types import (
    EMPTY_PARAMS,
    SHARED_MEMORY_REGION,
    Duration,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelStatistics,
    Parameters,
    RequestedOutput,
    Tensor,
    TensorSpec,
)
from infergw.wire import json_numbers
from infergw.wire.json_numbers import Span

__all__ = [
    "BINARY_DATA",
    "BINARY_DATA_OUTPUT",
    "BINARY_DATA_SIZE",
    "HEADER_LENGTH",
    "STATISTICS_PHASES",
    "WIRE_PARAMETERS",
    "BodyParts",
    "decode_infer_request",
    "decode_infer_response",
    "encode_infer_request",
    "encode_infer_response",
    "encode_infer_response_parts",
    "json_output_bytes",
    "metadata_from_json",
    "metadata_to_json",
    "statistics_from_json",
    "statistics_to_json",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_DATA_SIZE = "binary_data_size"  # tensor parameter: its blob's length
BINARY_DATA = "binary_data"  # requested-output parameter: send it in binary
BINARY_DATA_OUTPUT = "binary_data_output"  # request parameter: default for all outputs
# Where a tensor's data goes in a body: JSON ``data``, a binary blob, or nowhere (it is in
# a shared-memory region the client registered; the entry has no data, as Triton's).
Placement: TypeAlias = Literal["json", "binary", "shared_memory"]
# Parameters that only mean something on this wire; other protocols may drop them.
WIRE_PARAMETERS = frozenset({BINARY_DATA_SIZE, BINARY_DATA, BINARY_DATA_OUTPUT})

Body: TypeAlias = bytes | bytearray | memoryview
# A body as the buffers it is made of, in order; the first is the JSON header (bytes).
BodyParts: TypeAlias = tuple[bytes | memoryview, ...]
JsonObject: TypeAlias = dict[str, Any]

# ModelStatistics' durations, named as in Triton's ``inference_stats``.
STATISTICS_PHASES = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
)
_NO_CACHE = ("cache_hit", "cache_miss")  # Triton's response cache: always 0 here
# Integer parameters travel as int64 on every other wire (OIP gRPC's ``int64_param``).
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# Documents from this size on have their big number arrays lifted out (json_numbers).
_LIFT_DOCUMENTS_FROM = 1 << 20
# orjson's exact integers: int64's minimum to uint64's maximum; beyond, floats.
_LOWEST_INT, _PAST_UINT64 = float(-(1 << 63)), float(1 << 64)


# -- public API ----------------------------------------------------------------------


def decode_infer_request(
    model: str, version: str, body: Body, header_length: int | None
) -> InferRequest:
    """Parse an OIP inference request body (model and version come from the URL).

    A refused body is refused by the whole-document reading, so its error is the same
    whichever way it was first read (see ``_ReadWhole``).
    """
    try:
        return _decode_request(model, version, body, header_length, lift=True)
    except _ReadWhole:
        return _decode_request(model, version, body, header_length, lift=False)


def _decode_request(
    model: str, version: str, body: Body, header_length: int | None, lift: bool
) -> InferRequest:
    doc, blobs = _split(body, header_length, "inference request", lift)
    with blobs.whole_reading_refuses():
        inputs = tuple(
            _decode_tensor(item, blobs, "input", i)
            for i, item in enumerate(_array(doc, "inputs", "inference request", required=True))
        )
        blobs.finish()
        outputs = tuple(
            _decode_requested_output(item, i)
            for i, item in enumerate(_array(doc, "outputs", "inference request"))
        )
        parameters = _parameters(doc.get("parameters"), "inference request")
    if not isinstance(parameters.get(BINARY_DATA_OUTPUT, False), bool):
        raise InvalidArgument(f"inference request: parameter {BINARY_DATA_OUTPUT!r} must be a bool")
    return InferRequest(
        model=model,
        version=version,
        id=_string(doc, "id", "inference request"),
        inputs=inputs,
        outputs=outputs,
        parameters=parameters,
    )


def encode_infer_response(
    response: InferResponse, request: InferRequest
) -> tuple[bytes, int | None]:
    """Build the response body and its JSON header length (None: the body is pure JSON).

    Only the outputs the request named are sent (all of them if it named none),
    each in binary or JSON as the request asked.
    """
    parts, header_length = encode_infer_response_parts(response, request)
    return _join(parts), header_length


def encode_infer_response_parts(
    response: InferResponse, request: InferRequest
) -> tuple[BodyParts, int | None]:
    """``encode_infer_response``'s body as its parts: the JSON header, then each binary
    output's data as the backend gave it, for a writer that sends them one after the
    other (joining them copies every byte of tensor data once more)."""
    header: JsonObject = {"model_name": response.model, "model_version": response.version}
    if response.id or request.id:  # Triton echoes the request's id
        header["id"] = response.id or request.id
    if response.parameters:
        header["parameters"] = dict(response.parameters)
    header["outputs"], blobs = _encode_tensors(
        _select_outputs(response, request), "output", BackendError
    )
    return _assemble(header, blobs)


def json_output_bytes(response: InferResponse, request: InferRequest) -> int:
    """How many bytes of tensor data the response writes as JSON (not as binary blobs):
    what its encoding costs, and so what decides whether to encode it off the loop."""
    try:
        selected = _select_outputs(response, request)
    except BackendError:
        return 0  # the encoder will say so, and quickly
    return sum(len(tensor.data) for tensor, placement in selected if placement == "json")


def encode_infer_request(
    request: InferRequest, binary_inputs: bool = True, binary_outputs: bool = True
) -> tuple[bytes, int | None]:
    """Build a request body (client side); explicit ``binary_data`` parameters win."""
    header: JsonObject = {}
    if request.id:
        header["id"] = request.id
    placement: Placement = "binary" if binary_inputs else "json"
    header["inputs"], blobs = _encode_tensors(
        [(t, placement) for t in request.inputs], "input", InvalidArgument
    )
    parameters = dict(request.parameters)
    if request.outputs:
        header["outputs"] = [
            {"name": o.name, "parameters": {BINARY_DATA: binary_outputs, **o.parameters}}
            for o in request.outputs
        ]
    else:
        parameters.setdefault(BINARY_DATA_OUTPUT, binary_outputs)
    if parameters:
        header["parameters"] = parameters
    parts, header_length = _assemble(header, blobs)
    return _join(parts), header_length


def decode_infer_response(body: Body, header_length: int | None) -> InferResponse:
    """Parse an OIP inference response body (client side, or a REST backend's reply)."""
    try:
        try:
            return _decode_response(body, header_length, lift=True)
        except _ReadWhole:
            return _decode_response(body, header_length, lift=False)
    except InvalidArgument as exc:
        raise BackendError(f"malformed inference response: {exc.message}") from exc


def _decode_response(body: Body, header_length: int | None, lift: bool) -> InferResponse:
    doc, blobs = _split(body, header_length, "inference response", lift)
    with blobs.whole_reading_refuses():
        outputs = tuple(
            _decode_tensor(item, blobs, "output", i)
            for i, item in enumerate(_array(doc, "outputs", "inference response"))
        )
        blobs.finish()
    for tensor in outputs:
        if tensor.datatype == "BYTES":  # fixed-size ones were checked while slicing
            _check_bytes_count(tensor, f"output {tensor.name!r}")
    return InferResponse(
        model=_string(doc, "model_name", "inference response"),
        version=_string(doc, "model_version", "inference response"),
        id=_string(doc, "id", "inference response"),
        outputs=outputs,
        parameters=_parameters(doc.get("parameters"), "inference response"),
    )


def metadata_to_json(metadata: ModelMetadata) -> JsonObject:
    """``GET /v2/models/{m}[/versions/{v}]``'s body."""
    return {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": [_spec_to_json(t) for t in metadata.inputs],
        "outputs": [_spec_to_json(t) for t in metadata.outputs],
    }


def metadata_from_json(doc: Any) -> ModelMetadata:
    """Parse a server's model metadata; a malformed one is a ``BackendError``."""
    what = "model metadata"
    try:
        doc = _object(doc, what)
        return ModelMetadata(
            name=_string(doc, "name", what),
            versions=tuple(_strings(_array(doc, "versions", what), f"{what} 'versions'")),
            platform=_string(doc, "platform", what),
            inputs=_specs(doc, "inputs", what),
            outputs=_specs(doc, "outputs", what),
        )
    except InvalidArgument as exc:
        raise BackendError(f"malformed {exc.message}") from exc


def statistics_to_json(stats: Sequence[ModelStatistics]) -> JsonObject:
    """``GET /v2/models[/{m}[/versions/{v}]]/stats``'s body, in Triton's shape."""
    return {"model_stats": [_statistics_to_json(s) for s in stats]}


def statistics_from_json(doc: Any) -> list[ModelStatistics]:
    """Parse Triton's ``{"model_stats": [...]}``; a malformed one is a ``BackendError``.

    Counters may be JSON numbers (Triton) or decimal strings (protobuf's JSON mapping
    of 64-bit integers); absent ones are 0.
    """
    what = "model statistics"
    try:
        return [
            _statistics_from_json(_object(item, f"{what} [{i}]"), f"{what} [{i}]")
            for i, item in enumerate(_array(_object(doc, what), "model_stats", what))
        ]
    except InvalidArgument as exc:
        raise BackendError(f"malformed {exc.message}") from exc


def _spec_to_json(spec: TensorSpec) -> JsonObject:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _specs(doc: JsonObject, key: str, what: str) -> tuple[TensorSpec, ...]:
    specs = []
    for i, item in enumerate(_array(doc, key, what)):
        where = f"{what} {key}[{i}]"
        item = _object(item, where)
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
        ):
            raise InvalidArgument(f"{where}: 'shape' must be an array of integers >= -1")
        specs.append(
            TensorSpec(
                _string(item, "name", where, required=True),
                _string(item, "datatype", where, required=True),
                tuple(shape),
            )
        )
    return tuple(specs)


def _statistics_to_json(stats: ModelStatistics) -> JsonObject:
    inference_stats = {name: _duration_to_json(getattr(stats, name)) for name in STATISTICS_PHASES}
    for name in _NO_CACHE:
        inference_stats[name] = {"count": 0, "ns": 0}
    return {
        "name": stats.name,
        "version": stats.version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": inference_stats,
        "batch_stats": [],
        "memory_usage": [],
    }


def _duration_to_json(duration: Duration) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}


def _statistics_from_json(doc: JsonObject, what: str) -> ModelStatistics:
    phases = doc.get("inference_stats")
    phases = {} if phases is None else _object(phases, f"{what} 'inference_stats'")

    def duration(name: str) -> Duration:
        value = phases.get(name)
        where = f"{what} {name}"
        value = {} if value is None else _object(value, where)
        return Duration(_counter(value, "count", where), _counter(value, "ns", where))

    return ModelStatistics(
        name=_string(doc, "name", what),
        version=_string(doc, "version", what),
        last_inference_ms=_counter(doc, "last_inference", what),
        inference_count=_counter(doc, "inference_count", what),
        execution_count=_counter(doc, "execution_count", what),
        success=duration("success"),
        fail=duration("fail"),
        queue=duration("queue"),
        compute_input=duration("compute_input"),
        compute_infer=duration("compute_infer"),
        compute_output=duration("compute_output"),
    )


def _counter(doc: JsonObject, key: str, what: str) -> int:
    value = doc.get(key, 0)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InvalidArgument(f"{what}: {key!r} must be a non-negative integer")


# -- body framing ----------------------------------------------------------------------


class _ReadWhole(Exception):
    """The lifted reading (``json_numbers``) met something it does not handle, or refused
    the body: it is read again whole, so that what is accepted and the errors given stay
    those of the whole reading (only bodies that fail pay for a second reading)."""


class _Blobs:
    """The body outside its JSON document: hands out consecutive slices of the binary
    section, checking its bounds, and the number arrays lifted out of the document."""

    __slots__ = ("_arrays", "_lifted", "_offset", "_view", "_what")

    def __init__(self, view: memoryview, what: str, arrays: dict[str, Span]) -> None:
        self._view = view
        self._offset = 0
        self._what = what
        self._arrays = arrays
        self._lifted = bool(arrays)

    @contextmanager
    def whole_reading_refuses(self) -> Iterator[None]:
        """A refusal of a body with lifted arrays is left to the whole reading."""
        try:
            yield
        except InvalidArgument as exc:
            if self._lifted:
                raise _ReadWhole from exc
            raise

    def lifted(self, data: Any) -> Span | None:
        """The array a tensor's ``data`` placeholder stands for (each is taken once)."""
        return self._arrays.pop(data, None) if isinstance(data, str) and self._arrays else None

    def take(self, size: int, what: str) -> memoryview:
        end = self._offset + size
        if end > len(self._view):
            raise InvalidArgument(
                f"{what}: {BINARY_DATA_SIZE} {size} at offset {self._offset} runs past the end "
                f"of the {len(self._view)}-byte binary section"
            )
        blob = self._view[self._offset : end]
        self._offset = end
        return blob

    def finish(self) -> None:
        if self._arrays:  # lifted from somewhere other than a tensor's data
            raise _ReadWhole
        if self._offset != len(self._view):
            raise InvalidArgument(
                f"{self._what}: the binary section has {len(self._view)} bytes but the tensors' "
                f"{BINARY_DATA_SIZE} values add up to {self._offset}"
            )


def _split(
    body: Body, header_length: int | None, what: str, lift: bool
) -> tuple[JsonObject, _Blobs]:
    """The JSON document and the rest; with ``lift``, big number arrays are lifted out
    of a big document first (``json_numbers``: a fraction of the memory)."""
    view = memoryview(body)
    if header_length is None:
        header_length = len(view)
    elif header_length < 0 or header_length > len(view):
        raise InvalidArgument(
            f"{what}: {HEADER_LENGTH} {header_length} is outside the {len(view)}-byte body"
        )
    head = view[:header_length]
    lifted = None
    if lift and header_length >= _LIFT_DOCUMENTS_FROM and isinstance(body, bytes | bytearray):
        lifted = json_numbers.lift(body, header_length)
    try:
        doc = orjson.loads(head if lifted is None else lifted.document)
    except orjson.JSONDecodeError as exc:
        if lifted is not None:
            raise _ReadWhole from exc
        raise InvalidArgument(f"{what}: {_json_error(head, exc)}") from exc
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what}: the JSON header must be an object")
    if _may_hide_an_integer(doc):  # rare; orjson found the text valid, so this reads it
        doc = json.loads(bytes(head) if lifted is None else lifted.document)
    return doc, _Blobs(view[header_length:], what, {} if lifted is None else lifted.arrays)


def _may_hide_an_integer(doc: JsonObject) -> bool:
    """Whether a parameter's float may stand for an integer literal beyond 64 bits.

    orjson reads integers exactly from -2**63 to 2**64 - 1 and any integer beyond as a
    float (18446744073709551616 -> 1.8446744073709552e19), which a parameter would take
    as a double. Only a whole float outside that range can be one, so only then is the
    header read again with the stdlib, whose integers are exact, for ``_parameters`` to
    refuse it by name. Tensor data needs no second reading: see ``_exact_integers``.
    """
    maps = [doc.get("parameters")]
    for key in ("inputs", "outputs"):
        items = doc.get(key)
        if isinstance(items, list):
            maps += [item.get("parameters") for item in items if isinstance(item, dict)]
    return any(
        _beyond_64_bits(value)
        for params in maps
        if isinstance(params, dict)
        for value in params.values()
    )


def _beyond_64_bits(value: Any) -> bool:
    """A whole float from 2**64 on, or -2**63 and below (-2**63 - 1 rounds to -2**63): maybe
    an integer literal that orjson rounded."""
    return (
        isinstance(value, float)
        and (value <= _LOWEST_INT or value >= _PAST_UINT64)
        and value.is_integer()
    )


class _NonFinite(list):  # type: ignore[type-arg]
    """Tensor data holding NaN or an infinity, which only the stdlib writes as JSON does."""


def _dumps(header: JsonObject) -> bytes:
    tensors = (*header.get("inputs", ()), *header.get("outputs", ()))
    if any(isinstance(tensor.get("data"), _NonFinite) for tensor in tensors):
        return json.dumps(header, separators=(",", ":"), default=_numpy_default).encode()
    return orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)


def _numpy_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_error(head: memoryview, exc: orjson.JSONDecodeError) -> str:
    """Why a header is refused; a lone surrogate (valid JSON syntax, not UTF-8) by its field.

    orjson refuses ``"\\ud800"`` as it parses; the stdlib parser accepts it, so the error
    path (only) re-parses with it to name the field, which a client can act on.
    """
    if "surrogate" in str(exc):
        try:
            where = _surrogate_path(json.loads(bytes(head)), "")
        except (ValueError, RecursionError):
            where = None
        if where is not None:
            return f"field {where or '(root)'!r} holds a lone UTF-16 surrogate (not valid UTF-8)"
    return f"malformed JSON: {exc}"


def _surrogate_path(value: Any, path: str) -> str | None:
    """The path of the first string (or key) that cannot be encoded as UTF-8."""
    if isinstance(value, str):
        return None if _is_utf8(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if not _is_utf8(key):
                return path or "(root)"
            found = _surrogate_path(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _surrogate_path(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _assemble(
    header: JsonObject, blobs: list[bytes | memoryview] | None
) -> tuple[BodyParts, int | None]:
    """orjson writes tensor data straight from numpy arrays: no Python object per element."""
    head = _dumps(header)
    if blobs is None:
        return (head,), None
    return (head, *blobs), len(head)


def _join(parts: BodyParts) -> bytes:
    head = parts[0]  # the JSON header: bytes
    return head if len(parts) == 1 and isinstance(head, bytes) else b"".join(parts)


# -- tensors ---------------------------------------------------------------------------


def _decode_tensor(item: Any, blobs: _Blobs, kind: str, index: int) -> Tensor:
    if not isinstance(item, dict):
        raise InvalidArgument(f"{kind} #{index} must be a JSON object")
    name = _string(item, "name", f"{kind} #{index}", required=True)
    what = f"{kind} {name!r}"
    datatype = _string(item, "datatype", what, required=True)
    check_datatype(datatype, what)
    shape = _shape(item.get("shape"), what)
    count = element_count(shape, what)  # before anything is sized by the shape
    parameters = dict(_parameters(item.get("parameters"), what))
    size = parameters.pop(BINARY_DATA_SIZE, None)
    if SHARED_MEMORY_REGION in parameters:  # the backend reads it from the region
        if "data" in item or size is not None:
            given = "'data'" if "data" in item else f"'{BINARY_DATA_SIZE}'"
            raise InvalidArgument(
                "Input must set only one of the following fields: 'data', "
                f"'{BINARY_DATA_SIZE}' in 'parameters', '{SHARED_MEMORY_REGION}' in "
                f"'parameters'. But set {given} '{SHARED_MEMORY_REGION}'"
            )
        return Tensor(name, datatype, shape, b"", parameters)
    if size is None:
        if "data" not in item:
            raise InvalidArgument(f"{what}: has neither 'data' nor {BINARY_DATA_SIZE}")
        lifted = blobs.lifted(item["data"])
        data: bytes | memoryview = (
            _json_to_raw(item["data"], datatype, shape, count, what)
            if lifted is None
            else _lifted_to_raw(lifted, datatype, shape, count, what)
        )
    else:
        if "data" in item:
            raise InvalidArgument(f"{what}: has both 'data' and {BINARY_DATA_SIZE}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"{what}: {BINARY_DATA_SIZE} must be a non-negative integer")
        _check_fixed_size(datatype, shape, size, what)
        data = blobs.take(size, what)
    return Tensor(name, datatype, shape, data, parameters or EMPTY_PARAMS)


def _decode_requested_output(item: Any, index: int) -> RequestedOutput:
    if not isinstance(item, dict):
        raise InvalidArgument(f"requested output #{index} must be a JSON object")
    name = _string(item, "name", f"requested output #{index}", required=True)
    parameters = _parameters(item.get("parameters"), f"requested output {name!r}")
    if not isinstance(parameters.get(BINARY_DATA, False), bool):
        raise InvalidArgument(
            f"requested output {name!r}: parameter {BINARY_DATA!r} must be a bool"
        )
    return RequestedOutput(name, parameters)


def _select_outputs(
    response: InferResponse, request: InferRequest
) -> list[tuple[Tensor, Placement]]:
    default: Placement = "binary" if request.parameters.get(BINARY_DATA_OUTPUT) else "json"
    if not request.outputs:
        return [(t, default) for t in response.outputs]
    produced = {t.name: t for t in response.outputs}
    selected: list[tuple[Tensor, Placement]] = []
    for wanted in request.outputs:
        tensor = produced.get(wanted.name)
        if tensor is None:
            raise BackendError(f"model {response.model!r} returned no output {wanted.name!r}")
        placement: Placement = default
        if SHARED_MEMORY_REGION in wanted.parameters:
            placement = "shared_memory"
        elif BINARY_DATA in wanted.parameters:
            placement = "binary" if wanted.parameters[BINARY_DATA] else "json"
        selected.append((tensor, placement))
    return selected


def _encode_tensors(
    tensors: Sequence[tuple[Tensor, Placement]], kind: str, error: type[InferGWError]
) -> tuple[list[JsonObject], list[bytes | memoryview] | None]:
    """JSON entries plus the binary blobs (None if no tensor went binary).

    A tensor whose data does not match its own shape raises ``error``.
    """
    entries: list[JsonObject] = []
    blobs: list[bytes | memoryview] | None = None
    for tensor, placement in tensors:
        what = f"{kind} {tensor.name!r}"
        entry: JsonObject = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if placement == "shared_memory":  # written into the client's region: no data
            entries.append(entry)
            continue
        binary = placement == "binary"
        parameters = {k: v for k, v in tensor.parameters.items() if k != BINARY_DATA_SIZE}
        try:
            _check_fixed_size(tensor.datatype, tensor.shape, len(tensor.data), what)
            if not binary and tensor.datatype == "BYTES":
                _check_bytes_count(tensor, what)
        except InvalidArgument as exc:
            raise error(exc.message) from exc
        if binary:
            parameters[BINARY_DATA_SIZE] = len(tensor.data)
            blobs = [] if blobs is None else blobs
            blobs.append(tensor.data)
        else:
            entry["data"] = _raw_to_json(tensor, what)
        if parameters:
            entry["parameters"] = parameters
        entries.append(entry)
    return entries, blobs


def _check_fixed_size(datatype: str, shape: Sequence[int], size: int, what: str) -> None:
    expected = expected_nbytes(datatype, shape, what)
    if expected is not None and size != expected:
        raise InvalidArgument(
            f"{what}: shape {list(shape)} with datatype {datatype} needs {expected} bytes, "
            f"got {size}"
        )


def _check_bytes_count(tensor: Tensor, what: str) -> None:
    count = element_count(tensor.shape, what)
    found = count_bytes_elements(tensor.data, what)
    if found != count:
        raise InvalidArgument(
            f"{what}: shape {list(tensor.shape)} needs {count} BYTES elements, got {found}"
        )


# -- JSON tensor data <-> raw layout -----------------------------------------------------


def _json_to_raw(data: Any, datatype: str, shape: Sequence[int], count: int, what: str) -> bytes:
    """JSON ``data`` (flat or nested, row-major) -> OIP raw layout."""
    if datatype == "BYTES":
        items = [s.encode() for s in _flatten_strings(data, what)]
        _check_count(len(items), shape, count, what)
        return serialize_bytes(items)
    try:
        array = np.array(data)
    except ValueError as exc:  # ragged nesting
        raise InvalidArgument(f"{what}: 'data' is not a regular nested list") from exc
    _check_count(array.size, shape, count, what)
    return (
        _checked(data, array, datatype, what).astype(NUMPY_DTYPES[datatype], copy=False).tobytes()
    )


def _lifted_to_raw(span: Span, datatype: str, shape: Sequence[int], count: int, what: str) -> bytes:
    """``_json_to_raw`` for an array lifted out of the document: read piece by piece into
    the tensor's buffer, so no Python object exists for more than a piece's values."""
    try:
        if datatype == "BYTES":
            items = [
                s.encode()
                for piece in json_numbers.pieces(span)
                for s in _flatten_strings(piece, what)
            ]
            _check_count(len(items), shape, count, what)
            return serialize_bytes(items)
        out = np.empty(count, NUMPY_DTYPES[datatype])
        filled = 0
        values = json_numbers.pieces(span)
        for piece in values:
            if filled + len(piece) > count:  # count them all, for the message
                _check_count(filled + len(piece) + sum(map(len, values)), shape, count, what)
            out[filled : filled + len(piece)] = _checked(piece, np.array(piece), datatype, what)
            filled += len(piece)
    except orjson.JSONDecodeError as exc:
        raise _ReadWhole from exc
    _check_count(filled, shape, count, what)
    return out.tobytes()


def _checked(data: Any, array: npt.NDArray[Any], datatype: str, what: str) -> npt.NDArray[Any]:
    """``array`` (numpy's reading of ``data``), if it holds values of ``datatype``."""
    if array.size and NUMPY_DTYPES[datatype].kind in "iu" and array.dtype.kind in "fO":
        array = _exact_integers(data, array, datatype, what)
    _check_values(array, datatype, what)
    return array


def _exact_integers(
    data: Any, array: npt.NDArray[Any], datatype: str, what: str
) -> npt.NDArray[Any]:
    """Integer ``data`` that numpy read as floats, exactly; or why it is not integers.

    Python integers that no single int64 or uint64 array holds ([0, 7, 2**64 - 1] for a
    UINT64 tensor, [-1, 2**63]) become float64, rounded. This path runs only then (or
    when floats are really there): each value is looked at as the parser gave it.
    """
    values = np.array(data, dtype=object)
    kinds = set(map(type, values.flat))
    if kinds <= {int}:
        return values.astype(_range_checked(values, datatype, what))
    if kinds <= {int, float} and any(_beyond_64_bits(v) for v in values.flat):
        raise InvalidArgument(f"{what}: 'data' has values out of range for {datatype}")
    return array  # floats or other values: ``_check_values`` says which


def _range_checked(values: npt.NDArray[Any], datatype: str, what: str) -> np.dtype[Any]:
    target = NUMPY_DTYPES[datatype]
    info = np.iinfo(target)
    if min(values.flat) < info.min or max(values.flat) > info.max:
        raise InvalidArgument(f"{what}: 'data' has values out of range for {datatype}")
    return target


def _check_count(found: int, shape: Sequence[int], count: int, what: str) -> None:
    if found != count:
        raise InvalidArgument(
            f"{what}: shape {list(shape)} needs {count} elements, 'data' has {found}"
        )


def _check_values(array: npt.NDArray[Any], datatype: str, what: str) -> None:
    """Refuse values the datatype cannot hold instead of letting numpy cast them."""
    if array.size == 0:
        return
    target = NUMPY_DTYPES[datatype]
    kind = array.dtype.kind
    if target.kind == "b":
        fits = kind == "b"
    elif target.kind in "iu":
        fits = kind in "iu"
        if fits:
            info = np.iinfo(target)
            if array.min() < info.min or array.max() > info.max:
                raise InvalidArgument(f"{what}: 'data' has values out of range for {datatype}")
    else:
        fits = kind in "iuf"
    if not fits:
        found = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats"}.get(kind)
        raise InvalidArgument(
            f"{what}: 'data' must hold {datatype} values, got {found or 'other values'}"
        )


def _flatten_strings(data: Any, what: str) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, list):
        for item in data:
            yield from _flatten_strings(item, what)
    else:
        raise InvalidArgument(f"{what}: BYTES 'data' must hold strings")


def _raw_to_json(tensor: Tensor, what: str) -> npt.NDArray[Any] | list[Any]:
    """OIP raw layout (already size-checked) -> flat JSON array; BYTES as UTF-8 strings.

    Fixed-size data stays a numpy view for orjson to write, unless it holds NaN or an
    infinity: orjson would write those as ``null``, so such data goes as Python floats,
    which ``_assemble`` writes as ``NaN``/``Infinity`` the way Python's json module and
    tritonclient read them.
    """
    if tensor.datatype != "BYTES":
        values = np.frombuffer(tensor.data, NUMPY_DTYPES[tensor.datatype])
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return _NonFinite(values.tolist())
        return values
    try:
        return [item.decode() for item in deserialize_bytes(tensor.data)]
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"{what}: BYTES data is not valid UTF-8, so it cannot be sent as JSON; "
            f"ask for it with {BINARY_DATA}=true"
        ) from exc


# -- JSON fields ---------------------------------------------------------------------------


def _object(value: Any, what: str) -> JsonObject:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what}: expected a JSON object")
    return value


def _strings(values: list[Any], what: str) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise InvalidArgument(f"{what}: expected an array of strings")
    return values


def _string(doc: JsonObject, key: str, what: str, required: bool = False) -> str:
    value = doc.get(key)
    if value is None:
        if required:
            raise InvalidArgument(f"{what}: missing required field {key!r}")
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what}: field {key!r} must be a string")
    return value


def _array(doc: JsonObject, key: str, what: str, required: bool = False) -> list[Any]:
    value = doc.get(key)
    if value is None:
        if required:
            raise InvalidArgument(f"{what}: missing required field {key!r}")
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{what}: field {key!r} must be an array")
    return value


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if value is None:
        raise InvalidArgument(f"{what}: missing required field 'shape'")
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidArgument(f"{what}: 'shape' must be an array of integers")
    if any(d < 0 for d in value):
        raise InvalidArgument(f"{what}: shape {value} has a negative dimension")
    return tuple(value)


def _parameters(value: Any, what: str) -> Parameters:
    if value is None:
        return EMPTY_PARAMS
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{what}: 'parameters' must be an object")
    for key, item in value.items():
        if not isinstance(item, bool | int | float | str):
            raise InvalidArgument(f"{what}: parameter {key!r} must be a boolean, number or string")
        if (
            isinstance(item, int)
            and not isinstance(item, bool)
            and not _INT64_MIN <= item <= _INT64_MAX
        ):
            raise InvalidArgument(
                f"{what}: parameter {key!r} is outside the 64-bit signed integer range"
            )
    return dict(value)

"""Core request/response types: pure, frozen data with no wire format.

Frontends convert their wire messages into these and back; backends consume and
produce them. Tensor data is always held in the Open Inference Protocol "raw"
layout (little-endian, row-major; BYTES elements as 4-byte little-endian length
followed by the bytes), which is what Triton, the binary tensor extension and
``raw_input_contents`` all use, so the common paths never copy or convert.

A request or response may also carry ``raw``: the message exactly as it arrived,
tagged with its encoding. A backend that speaks the same encoding may forward it
untouched (the fast path); everyone else ignores it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

ParamValue = bool | int | float | str
Parameters = Mapping[str, ParamValue]
EMPTY_PARAMS: Parameters = MappingProxyType({})
# A tensor parameter of Triton's shared-memory extension: the tensor's data is in this
# registered region, not in the message (both wires; the backend reads or writes it).
SHARED_MEMORY_REGION = "shared_memory_region"


@dataclass(frozen=True, slots=True)
class RawMessage:
    """An encoded message kept opaque so it can be forwarded without re-encoding."""

    encoding: str  # e.g. "oip-grpc": a serialized inference.ModelInferRequest
    payload: bytes


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor; ``data`` is in OIP raw layout (see module docstring)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes | memoryview
    parameters: Parameters = field(default_factory=lambda: EMPTY_PARAMS)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=lambda: EMPTY_PARAMS)


@dataclass(frozen=True, slots=True)
class InferRequest:
    model: str
    inputs: tuple[Tensor, ...]
    version: str = ""
    id: str = ""
    outputs: tuple[RequestedOutput, ...] = ()
    parameters: Parameters = field(default_factory=lambda: EMPTY_PARAMS)
    raw: RawMessage | None = field(default=None, compare=False, repr=False)

    @property
    def payload_bytes(self) -> int:
        return sum(len(t.data) for t in self.inputs)


@dataclass(frozen=True, slots=True)
class InferResponse:
    model: str
    outputs: tuple[Tensor, ...]
    version: str = ""
    id: str = ""
    parameters: Parameters = field(default_factory=lambda: EMPTY_PARAMS)
    raw: RawMessage | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Declared tensor metadata; -1 in ``shape`` means any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class Duration:
    count: int = 0
    ns: int = 0


@dataclass(frozen=True, slots=True)
class ModelStatistics:
    """Aggregate server-side statistics (Triton's statistics extension)."""

    name: str
    version: str = ""
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()

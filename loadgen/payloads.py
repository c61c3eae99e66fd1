"""Request inputs: realistic ones for the example models, payload sizes for sweeps.

Inputs are built once per run from a seeded generator (random data, so no transport
compression or caching can flatter a result).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

SENTENCE = b"Where does the time go in serverless inference?"

# Input sizes of the published protocol experiment: FP32 images, batch 1.
NAMED_SIZES: dict[str, int] = {
    "mobilenet": 224 * 224 * 3 * 4,  # 602,112 B
    "inceptionv3": 299 * 299 * 3 * 4,  # 1,072,812 B
    "yolov5": 640 * 640 * 3 * 4,  # 4,915,200 B
}
DEFAULT_SWEEP = ("1KB", "16KB", "128KB", "mobilenet", "1MB", "inceptionv3", "yolov5", "8MB")
_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024 * 1024}


Inputs = dict[str, np.ndarray]
# Example model -> its inputs from (generator, payload_bytes); payload_bytes sizes only
# the identity models' tensors, others take their natural input.
MODEL_INPUTS: dict[str, Callable[[np.random.Generator, int | None], Inputs]] = {
    "identity": lambda rng, n: {"input": rng.random((1, max(1, (n or 64) // 4)), np.float32)},
    "identity_int64": lambda rng, n: {
        "input": rng.integers(0, 1 << 30, (1, max(1, (n or 64) // 8)), dtype=np.int64)
    },
    "minilm": lambda rng, n: {"text": np.array([SENTENCE], dtype=np.object_)},
    "mobilenet": lambda rng, n: {"image": rng.random((1, 224, 224, 3), dtype=np.float32)},
    "yolo": lambda rng, n: {"images": rng.random((1, 3, 640, 640), dtype=np.float32)},
    "delay": lambda rng, n: {"input": rng.random((1, max(1, (n or 64) // 4)), np.float32)},
}


def model_inputs(model: str, seed: int = 0, payload_bytes: int | None = None) -> Inputs:
    """Inputs for an example model (``MODEL_INPUTS``).

    ``payload_bytes`` sizes the identity model's tensor (rounded down to whole
    values); other models take their natural input. Unknown models need
    ``inputs_from_metadata``.
    """
    return MODEL_INPUTS[model](np.random.default_rng(seed), payload_bytes)


_DTYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


def inputs_from_metadata(
    specs: list[tuple[str, str, tuple[int, ...]]], seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs for any model from its metadata: (name, datatype, shape) with
    variable dimensions (-1) set to 1; BYTES inputs get one short sentence each."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, datatype, shape in specs:
        dims = tuple(1 if d < 0 else d for d in shape)
        if datatype == "BYTES":
            out[name] = np.full(dims, SENTENCE, dtype=np.object_)
        elif datatype in _DTYPES:
            out[name] = (rng.random(dims) * 100).astype(_DTYPES[datatype])
        else:
            raise ValueError(f"input {name!r}: cannot generate datatype {datatype}")
    return out


def parse_size(text: str) -> int:
    """``1KB``, ``8MB``, ``4096`` or a named input size (``mobilenet``...) -> bytes."""
    key = text.strip().lower()
    if key in NAMED_SIZES:
        return NAMED_SIZES[key]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(b|kb|mb)?", key)
    if not match:
        raise ValueError(f"bad size {text!r}: use e.g. 1KB, 8MB, 4096 or {', '.join(NAMED_SIZES)}")
    return int(float(match[1]) * _UNITS[match[2] or ""])


def size_label(text: str) -> str:
    key = text.strip().lower()
    if key in NAMED_SIZES:
        return f"{key} ({NAMED_SIZES[key] / 1e6:.2f} MB)"
    return text.strip()

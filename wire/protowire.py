"""Just enough protobuf wire format to read a field out of a message we never decode.

The sidecar forwards messages as bytes. For metrics labels it needs the model name of
an inference request, which sits at a known field path (OIP ``ModelInferRequest.
model_name`` = field 1; TF Serving ``PredictRequest.model_spec.name`` = 1.1). Walking
the top-level fields skips length-delimited ones by their length, so the cost is per
field, not per byte: a 5 MB request costs the same few microseconds as a tiny one,
where parsing it with protobuf would copy every tensor. The health checker uses the
same helpers to build and read TF Serving's tiny GetModelStatus messages without
depending on TensorFlow's protos.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_FIXED = {I64: 8, I32: 4}


class WireError(ValueError):
    """The bytes are not a protobuf message we can walk (or the field is not a string)."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def iter_fields(payload: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Top-level ``(field number, wire type, value)``: an int for varints, a view for LEN.

    Fixed-size fields are yielded with their raw bytes as a view.
    """
    buf = memoryview(payload)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        value: int | memoryview
        if wire_type == VARINT:
            value, pos = _varint(buf, pos)
        elif wire_type == LEN:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire_type in _FIXED:
            value, pos = buf[pos : pos + _FIXED[wire_type]], pos + _FIXED[wire_type]
        else:  # groups (deprecated) or garbage
            raise WireError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise WireError("truncated message")
        yield number, wire_type, value


def _message_at(payload: bytes | memoryview, path: Sequence[int]) -> memoryview | None:
    """The nested message at field ``path``, as protobuf reads it: the occurrences of a
    message field merge, which is the same as parsing their bytes one after another."""
    view = memoryview(payload)
    for field in path:
        found = [v for n, t, v in iter_fields(view) if n == field and t == LEN]
        if not found:
            return None
        last = found[-1]
        assert isinstance(last, memoryview)
        view = last if len(found) == 1 else memoryview(b"".join(found))  # type: ignore[arg-type]
    return view


def _last(view: memoryview, field: int, wire_type: int) -> int | memoryview | None:
    found = None
    for number, kind, value in iter_fields(view):
        if number == field and kind == wire_type:
            found = value  # a scalar: the last occurrence wins
    return found


def find_string(payload: bytes | memoryview, path: Sequence[int]) -> str | None:
    """The UTF-8 string at field ``path`` (message fields, then the string), or None.

    Raises ``WireError`` for bytes that are not a valid message along the way.
    """
    *messages, field = path
    view = _message_at(payload, messages)
    found = None if view is None else _last(view, field, LEN)
    if found is None:
        return None
    assert isinstance(found, memoryview)
    try:
        return bytes(found).decode()
    except UnicodeDecodeError as exc:
        raise WireError("not a UTF-8 string") from exc


def find_varint(payload: bytes | memoryview, path: Sequence[int]) -> int | None:
    """The varint (int, bool, enum) at field ``path``: messages along ``path[:-1]``, then
    field ``path[-1]``; None when absent (protobuf's default, 0, is not sent)."""
    *messages, field = path
    view = _message_at(payload, messages)
    found = None if view is None else _last(view, field, VARINT)
    assert found is None or isinstance(found, int)
    return found


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def len_field(field: int, value: bytes) -> bytes:
    """One serialized length-delimited field (a string, bytes or a nested message)."""
    return encode_varint(field << 3 | LEN) + encode_varint(len(value)) + value

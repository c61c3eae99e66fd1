"""The Lambda event/reply codec: what the backend sends is what the handler reads, and back."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from infergw.vocab.datatypes import serialize_bytes, tensor_from_numpy
from infergw.vocab.errors import InvalidArgument
from infergw.vocab.types import ModelMetadata, Tensor, TensorSpec
from infergw.wire import lambda_event as wire

X = tensor_from_numpy("input", np.arange(6, dtype=np.float32).reshape(2, 3))
TEXT = Tensor("text", "BYTES", (2,), serialize_bytes([b"a", b"bc"]))
BIG = wire.S3Tensor("images", "FP32", (1, 3, 640, 640), wire.S3Ref("bkt", "p/1/in/images"))


def as_json(doc: dict[str, Any]) -> dict[str, Any]:
    """Through JSON text, as the Lambda runtime hands the event to the function."""
    loaded: dict[str, Any] = json.loads(json.dumps(doc))
    return loaded


def test_event_round_trip_inline_and_s3() -> None:
    event = wire.InferEvent(
        model="identity",
        inputs=(X, TEXT, BIG),
        id="req-1",
        outputs=("output",),
        output_s3=wire.S3Prefix("bkt", "p/1/out/"),
    )
    decoded = wire.decode_event(wire.encode_event(event))
    assert decoded == event
    assert wire.decode_event(as_json(wire.event_document(event))) == event
    inline = decoded.inputs[0]  # type: ignore[union-attr]
    assert isinstance(inline, Tensor) and bytes(inline.data) == bytes(X.data)


def test_metadata_event_and_reply_round_trip() -> None:
    assert wire.decode_event(wire.encode_event(wire.MetadataEvent("minilm"))) == (
        wire.MetadataEvent("minilm")
    )
    meta = ModelMetadata(
        "minilm", ("1",), "infergw_numpy", (TensorSpec("text", "BYTES", (-1,)),),
        (TensorSpec("embedding", "FP32", (-1, 384)),),
    )  # fmt: skip
    assert wire.decode_metadata(json.dumps(wire.metadata_document(meta)), "minilm") == meta


def test_reply_round_trip_and_missing_fields_default() -> None:
    out = wire.S3Tensor("output", "FP32", (1, 25200, 85), wire.S3Ref("bkt", "p/1/out/output"))
    reply = wire.InferReply((X, out), model_name="yolo", model_version="1", id="r")
    assert wire.decode_reply(json.dumps(wire.reply_document(reply)).encode()) == reply
    bare = wire.decode_reply(b'{"outputs": []}')  # a minimal function's answer
    assert bare == wire.InferReply(()) and bare.id is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("model"), "'model'"),
        (lambda d: d.update(inputs=[]), "'inputs'"),
        (lambda d: d.update(inputs="x"), "'inputs'"),
        (lambda d: d["inputs"][0].pop("name"), "inputs[0]: 'name'"),
        (lambda d: d["inputs"][0].update(shape=[2, "3"]), "inputs[0] ('input'): 'shape'"),
        (lambda d: d["inputs"][0].update(shape=[-1, 3]), "'shape'"),
        (lambda d: d["inputs"][0].update(datatype="FP8"), "unsupported datatype"),
        (lambda d: d["inputs"][0].update(data_b64="@@@"), "'data_b64' is not valid base64"),
        (lambda d: d["inputs"][0].pop("data_b64"), "needs 'data_b64'"),
        (lambda d: d["inputs"][0].update(shape=[2, 4]), "needs 32 bytes, got 24"),
        (lambda d: d["inputs"][1].update(s3={"bucket": "b"}), "inputs[1] ('images').s3: 'key'"),
        (lambda d: d.update(outputs=[{"nom": "x"}]), "outputs[0]: 'name'"),
        (lambda d: d.update(output_s3={"bucket": "b"}), "output_s3: 'prefix'"),
    ],
)
def test_bad_events_name_the_field(mutate: Any, field: str) -> None:
    doc = as_json(wire.event_document(wire.InferEvent("identity", (X, BIG), id="i")))
    mutate(doc)
    with pytest.raises(InvalidArgument) as info:
        wire.decode_event(doc)
    assert field in info.value.message


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", "null", 7])
def test_an_event_that_is_not_an_object_is_invalid(payload: object) -> None:
    with pytest.raises(InvalidArgument, match=r"^event: "):
        wire.decode_event(payload)


def test_bytes_counts_and_s3_objects_are_checked_against_the_shape() -> None:
    doc = as_json(wire.event_document(wire.InferEvent("minilm", (TEXT,))))
    doc["inputs"][0]["shape"] = [3]
    expected = r"inputs\[0\] \('text'\): .*needs 3 BYTES elements, got 2"
    with pytest.raises(InvalidArgument, match=expected):
        wire.decode_event(doc)
    assert bytes(BIG.with_data(bytes(4 * 3 * 640 * 640)).data[:4]) == bytes(4)
    with pytest.raises(InvalidArgument, match=r"tensor 'images': .* got 10"):
        BIG.with_data(bytes(10))


def test_a_bad_reply_output_is_invalid_naming_it() -> None:
    doc = wire.reply_document(wire.InferReply((X,)))
    doc["outputs"][0]["data_b64"] = "AAAA"
    with pytest.raises(InvalidArgument, match=r"outputs\[0\] \('input'\)|input 'input'"):
        wire.decode_reply(json.dumps(doc))


def test_function_errors_keep_type_and_message_and_never_fail_to_decode() -> None:
    err = wire.decode_function_error(b'{"errorType": "InvalidArgument", "errorMessage": "bad"}')
    assert err == wire.FunctionError("InvalidArgument", "bad") and err.is_input_error
    runtime = wire.decode_function_error(
        json.dumps({"errorType": "Runtime.ExitError", "errorMessage": "x", "stackTrace": []})
    )
    assert runtime.error_type == "Runtime.ExitError" and not runtime.is_input_error
    for junk in (b"", b"<html>", b"[]"):
        assert wire.decode_function_error(junk).error_type == "Error"


def test_plan_offload_moves_the_largest_first_until_the_rest_fits() -> None:
    small = tensor_from_numpy("s", np.zeros(10, np.uint8))  # 16 base64 bytes
    medium = tensor_from_numpy("m", np.zeros(300, np.uint8))  # 400
    large = tensor_from_numpy("l", np.zeros(3000, np.uint8))  # 4000
    tensors = [small, large, medium]
    assert wire.plan_offload(tensors, 10_000) == frozenset()
    assert wire.plan_offload(tensors, 4416) == frozenset()  # exactly fits
    assert wire.plan_offload(tensors, 4415) == {"l"}
    assert wire.plan_offload(tensors, 100) == {"l", "m"}
    assert wire.plan_offload(tensors, 0) == {"l", "m", "s"}
    assert wire.inline_size(3000) == len(wire.event_document(
        wire.InferEvent("m", (large,)))["inputs"][0]["data_b64"])  # fmt: skip

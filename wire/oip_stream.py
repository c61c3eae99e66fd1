"""The bytes of Triton's ModelStreamInfer that the gateway reads or adds, never re-encoding.

A streamed request or response is forwarded as the bytes that arrived. Protobuf merges
repeated occurrences of a message field and keeps the last value of a scalar (the
language guide's "last one wins"), so a field is *added* by appending its encoding:

- ``with_empty_final``: the request asks Triton for an empty final response
  (``triton_enable_empty_final_response``), so that every request of a decoupled model
  ends with a message carrying ``triton_final_response: true`` that the gateway can see;
- ``with_reply_parameter``: a response gets one more ``infer_response.parameters`` entry
  (the gateway's per-response ``server-timing``).

``read_reply`` walks a response's fields (``protowire``) for what the gateway needs to
match it to its request: the id, the final flag, the error, whether it carries outputs.
Tensors are skipped by their length, never copied. ``is_decoupled`` reads one flag of
Triton's ModelConfig reply (whose proto the gateway does not carry).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from infergw.proto import grpc_service_pb2 as pb
from infergw.wire.protowire import LEN, VARINT, WireError, find_varint, iter_fields

FINAL = "triton_final_response"  # response parameter: the request's last response
EMPTY_FINAL = "triton_enable_empty_final_response"  # request parameter, Triton's own name

# Field numbers (grpc_service.proto).
_STREAM_ERROR, _STREAM_RESPONSE = 1, 2  # ModelStreamInferResponse
_RESPONSE_ID, _RESPONSE_PARAMETERS, _RESPONSE_OUTPUTS = 3, 4, 5  # ModelInferResponse
_ENTRY_KEY, _ENTRY_VALUE = 1, 2  # a map entry
_BOOL_PARAM = 1  # InferParameter.bool_param
_FINAL_KEY = FINAL.encode()
# ModelConfigResponse.config -> ModelConfig.model_transaction_policy -> .decoupled
# (Triton's model_config.proto: fields 1, 19, 1).
_DECOUPLED_PATH = (1, 19, 1)


@dataclass(frozen=True, slots=True)
class StreamReply:
    """What one ModelStreamInferResponse says about its request.

    ``final`` is Triton's ``triton_final_response`` (None when absent: an error Triton
    raised before running the request has no flag, and is that request's only answer).
    """

    id: str
    error: str
    final: bool | None
    outputs: int

    @property
    def completes(self) -> bool:
        """Whether no more responses follow for this request (Triton's rules above)."""
        return self.final is True or (self.final is None and bool(self.error))

    @property
    def empty_final(self) -> bool:
        """The bare end-of-request marker Triton sends only when a request asks for it."""
        return self.final is True and not self.outputs and not self.error


def read_reply(payload: bytes) -> StreamReply:
    """The id, error, final flag and output count of a serialized stream response.

    Raises ``WireError`` for bytes that are not a message.
    """
    error = ""
    response_id = ""
    final: bool | None = None
    outputs = 0
    for number, wire_type, value in iter_fields(payload):
        if wire_type != LEN or not isinstance(value, memoryview):
            continue
        if number == _STREAM_ERROR:
            error = _text(value)
        elif number == _STREAM_RESPONSE:  # repeated occurrences merge, as protobuf does
            for field, kind, item in iter_fields(value):
                if kind != LEN or not isinstance(item, memoryview):
                    continue
                if field == _RESPONSE_ID:
                    response_id = _text(item)
                elif field == _RESPONSE_OUTPUTS:
                    outputs += 1
                elif field == _RESPONSE_PARAMETERS:
                    flag = _final_flag(item)
                    final = final if flag is None else flag
    return StreamReply(response_id, error, final, outputs)


def is_decoupled(config_reply: bytes) -> bool:
    """Whether a serialized ModelConfigResponse is of a decoupled model (any number of
    responses per request). Raises ``WireError`` for bytes that are not a message."""
    return bool(find_varint(config_reply, _DECOUPLED_PATH))


def _final_flag(entry: memoryview) -> bool | None:
    """The bool of a ``parameters`` map entry keyed ``triton_final_response``, else None."""
    key = b""
    value: memoryview | None = None
    for field, kind, item in iter_fields(entry):
        if kind == LEN and isinstance(item, memoryview):
            if field == _ENTRY_KEY:
                key = bytes(item)
            elif field == _ENTRY_VALUE:
                value = item
    if key != _FINAL_KEY:
        return None
    flag = False  # an entry without a value is the default parameter: bool_param unset
    for field, kind, item in iter_fields(value or b""):
        if field == _BOOL_PARAM and kind == VARINT:
            flag = bool(item)
    return flag


def _text(view: memoryview) -> str:
    try:
        return bytes(view).decode()
    except UnicodeDecodeError as exc:
        raise WireError("not a UTF-8 string") from exc


@cache
def _empty_final_suffix() -> bytes:
    """The encoded ``parameters {triton_enable_empty_final_response: true}``, made once."""
    param = pb.InferParameter(bool_param=True)
    return pb.ModelInferRequest(parameters={EMPTY_FINAL: param}).SerializeToString()


def with_empty_final(request: bytes) -> bytes:
    """A serialized ModelInferRequest that also asks for the empty final response."""
    return request + _empty_final_suffix()


def with_reply_parameter(reply: bytes, key: str, value: str) -> bytes:
    """A serialized stream response with one more string parameter on its infer_response."""
    extra = pb.ModelStreamInferResponse()
    extra.infer_response.parameters[key].string_param = value
    return reply + extra.SerializeToString()

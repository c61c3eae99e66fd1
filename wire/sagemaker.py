"""The wire conventions our SageMaker container and the ``sagemaker`` backend share.

Pure helpers, no I/O, so both sides import them without pulling in the model runtime
or aiobotocore.

- Body: OIP v2 REST JSON, or the binary tensor extension in SageMaker-Triton's
  convention: ``Content-Type: application/vnd.sagemaker-triton.binary+json;
  json-header-size=N`` says how many leading bytes are the JSON header (Triton's
  SageMaker server uses this because InvokeEndpoint drops
  ``Inference-Header-Content-Length`` along with every other custom header).
- Model: a serverless endpoint is not a multi-model endpoint, so the model is named
  in the body, as a top-level ``model_name`` in the JSON header (the same field an
  OIP response carries). ``X-Amzn-SageMaker-Target-Model`` (multi-model endpoints)
  and ``SAGEMAKER_TRITON_DEFAULT_MODEL_NAME`` (Triton's single-model convention)
  are honoured too (order: ``serve.resolve_model``).
- Timing: InvokeEndpoint hands the container's ``X-Amzn-SageMaker-Custom-Attributes``
  response header back to the caller verbatim (<= 1024 ASCII chars), so the container
  reports what it measured as ``server-timing=<W3C Server-Timing value>``.
"""

from __future__ import annotations

import json
import re

from infergw.vocab.errors import InvalidArgument
from infergw.vocab.timing import TimingEntry
from infergw.wire.server_timing import format_server_timing, parse_server_timing

JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/vnd.sagemaker-triton.binary+json"
HEADER_SIZE_PARAM = "json-header-size"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
DEFAULT_MODEL_ENV = "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"
MODEL_FIELD = "model_name"
TIMING_ATTRIBUTE = "server-timing="
MAX_CUSTOM_ATTRIBUTES = 1024  # InvokeEndpoint's limit on the header value

_MODEL_FIRST = re.compile(rb'\A\s*\{\s*"model_name"\s*:\s*"([^"\\]{1,256})"')


def content_type(header_length: int | None) -> str:
    """The Content-Type for a body whose JSON header is ``header_length`` bytes (None: all)."""
    if header_length is None:
        return JSON_CONTENT_TYPE
    return f"{BINARY_CONTENT_TYPE};{HEADER_SIZE_PARAM}={header_length}"


def header_length(value: str | None, body_size: int) -> int | None:
    """JSON header size from a Content-Type (None: the body is all JSON).

    Raises ``InvalidArgument`` for a binary content type without a usable size.
    """
    if not value:
        return None
    media, *params = (part.strip() for part in value.split(";"))
    if media.lower() != BINARY_CONTENT_TYPE:
        return None
    for param in params:
        key, _, raw = param.partition("=")
        if key.strip().lower() == HEADER_SIZE_PARAM:
            try:
                size = int(raw.strip())
            except ValueError:
                break
            if 0 <= size <= body_size:
                return size
            raise InvalidArgument(
                f"{HEADER_SIZE_PARAM} {size} is outside the {body_size}-byte body"
            )
    raise InvalidArgument(f"{BINARY_CONTENT_TYPE} needs a {HEADER_SIZE_PARAM}=<bytes> parameter")


def with_model_name(body: bytes, header_length: int | None, model: str) -> tuple[bytes, int | None]:
    """Put ``model_name`` first in the JSON header, where the container finds it without a parse."""
    prefix = b'{"' + MODEL_FIELD.encode() + b'":' + json.dumps(model).encode()
    rest = body[1:]
    glued = prefix + (b"" if rest.lstrip().startswith(b"}") else b",") + rest
    added = len(glued) - len(body)
    return glued, None if header_length is None else header_length + added


def model_in_body(head: bytes | memoryview) -> str | None:
    """The header's top-level ``model_name``: a prefix match when it comes first, else a parse."""
    match = _MODEL_FIRST.match(bytes(head[:300]))
    if match:
        return match.group(1).decode()
    try:
        doc = json.loads(bytes(head))
    except (ValueError, RecursionError):
        return None  # the OIP decoder reports malformed JSON properly
    name = doc.get(MODEL_FIELD) if isinstance(doc, dict) else None
    return name if isinstance(name, str) and name else None


def format_timing_attribute(entries: list[TimingEntry]) -> str:
    value = TIMING_ATTRIBUTE + format_server_timing(entries)
    return value if len(value) <= MAX_CUSTOM_ATTRIBUTES else ""


def parse_timing_attribute(value: str | None, *, timed_only: bool = False) -> list[TimingEntry]:
    """Server-Timing entries from a CustomAttributes value; anything else yields none
    (``timed_only``: as ``parse_server_timing``)."""
    if not value or not value.startswith(TIMING_ATTRIBUTE):
        return []
    return parse_server_timing(value[len(TIMING_ATTRIBUTE) :], timed_only=timed_only)

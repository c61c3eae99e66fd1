"""The redacting filter of ``infergw``'s log handler (no sockets; the end-to-end check
against botocore is tests/integration/test_debug_logs.py)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from infergw.gateway import logs

Captured = tuple[logging.Logger, io.StringIO]

SHAPES = {  # text as a library logs it -> the secret inside it
    "{'Authorization': b'AWS4-HMAC-SHA256 Credential=X/2026, Signature=ab12'}": "ab12",
    "Authorization: Bearer sk-live-123": "sk-live-123",
    "authorization: Basic dXNlcjpwYXNz": "dXNlcjpwYXNz",
    "x-amz-security-token:FQoGZXIvYXdz": "FQoGZXIvYXdz",
    "{'X-Amz-Security-Token': b'FQoGZXIvYXdz'}": "FQoGZXIvYXdz",
    "?X-Amz-Credential=ASIAX%2F2026&X-Amz-Signature=deadbeef&x=1": "deadbeef",
    "https://b.s3/k?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=c2ln": "c2ln",
    "Signature:\n3f1e0c": "3f1e0c",
    "aws_secret_access_key = abc/def": "abc/def",
    "{'aws_session_token': 'tok-123'}": "tok-123",
    "key id AKIAIOSFODNN7EXAMPLE in a sentence": "AKIAIOSFODNN7EXAMPLE",
    "x-api-key: k3y": "k3y",
    "calling with bearer abc.def.ghi": "abc.def.ghi",
    "password=hunter2&user=me": "hunter2",
    "Response body:\nb'{\"outputs\": [1, 2, 3]}'": "outputs",
    "{'body': b'raw-tensor-bytes', 'url': 'u'}": "raw-tensor-bytes",
    "sent b'" + "\\x00\\x01" * 40 + "'": "\\x00\\x01",
}


@pytest.mark.parametrize("text", list(SHAPES))
def test_redact_removes_the_secret(text: str) -> None:
    assert SHAPES[text] not in logs.redact(text)


def test_redact_keeps_ordinary_text() -> None:
    for kept in (
        "Making request for OperationModel(name=Invoke) to http://127.0.0.1:5000",
        "Calculating signature using v4 auth.",
        "max_tokens=5 tokenizer loaded; 'X-Amz-Date': b'20261201T092842Z'",
    ):
        assert logs.redact(kept) == kept


@pytest.fixture
def logger() -> Iterator[Captured]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RedactingFilter())
    log = logging.getLogger("botocore.test_logs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield log, stream
    finally:
        log.removeHandler(handler)
        log.propagate = True


def test_filter_redacts_arguments_and_tracebacks(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    log.debug("headers: %s", {"Authorization": "Bearer s3cr3t-arg"})
    try:
        raise RuntimeError("failed with x-api-key: s3cr3t-exc")
    except RuntimeError:
        log.exception("call failed")
    out = stream.getvalue()
    assert "s3cr3t" not in out
    assert "call failed" in out and "RuntimeError" in out and logs.REDACTED in out


def test_filter_cuts_wire_dumps_short(logger: Captured) -> None:
    log, stream = logger
    log.debug("dump %s", "x" * 10 * logs.MAX_WIRE_CHARS)
    assert len(stream.getvalue()) < logs.MAX_WIRE_CHARS + 100
    assert "chars dropped" in stream.getvalue()

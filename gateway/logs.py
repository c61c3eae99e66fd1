"""Logging for the ``infergw`` command: one handler, with a filter that redacts secrets.

``-v`` turns on DEBUG for every logger, third-party ones included, and botocore's
debug output carries the signed request (``Authorization`` with the access key id and
signature, ``X-Amz-Security-Token``), the canonical request and the raw request and
response bodies. Those loggers are not ours to change, so the filter sits on the
handler: it sees every record, whichever logger made it, after its arguments are
formatted, and rewrites the text before any formatter or stream sees it.
"""

from __future__ import annotations

import logging
import re
from typing import TextIO

__all__ = ["FORMAT", "RedactingFilter", "configure", "redact"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"
# Loggers that dump wire-level data (requests, bodies): their records are also cut short.
WIRE_LOGGERS = frozenset({"botocore", "aiobotocore", "boto3", "s3transfer", "urllib3", "aiohttp"})
MAX_WIRE_CHARS = 2000

# Names whose value is a secret, as a header, a dict key, a query parameter or a
# "name: value" line (botocore's canonical request and its "Signature:" line).
_SECRET_NAMES = (
    r"authorization|proxy-authorization|x-amz-security-token|x-amz-credential|x-amz-signature"
    r"|x-api-key|api[_-]?key|aws_access_key_id|aws_secret_access_key|aws_session_token"
    r"|access[_-]?key(?:[_-]?id)?|secret(?:[_-]?access)?(?:[_-]?key)?|session[_-]?token"
    r"|security[_-]?token|token|password|credential|signature"
)
_NAME = rf"(?<![\w-])(?:{_SECRET_NAMES})(?![\w-])['\"]?\s*[:=]\s*"
_QUOTED_SECRET = re.compile(rf"({_NAME}b?)(['\"])(?:\\.|(?!\2).)*\2", re.IGNORECASE | re.DOTALL)
_AUTH_LINE = re.compile(r"((?<![\w-])(?:proxy-)?authorization\s*:\s*)[^\n]+", re.IGNORECASE)
_BARE_SECRET = re.compile(rf"({_NAME})(?!b?['\"]|\[)[^\s'\",;&}})\]]+", re.IGNORECASE)
_BEARER = re.compile(r"\b(bearer\s+)[\w.~+/=-]+", re.IGNORECASE)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA)[A-Z0-9]{16}\b")
# Payloads: a ``body`` value (botocore's request dict), "Response body:" dumps, and any
# long bytes literal, whatever printed it.
_BODY = re.compile(r"(['\"]?\bbody['\"]?\s*[:=]\s*)b?(['\"])(?:\\.|(?!\2).)*\2", re.IGNORECASE)
_RESPONSE_BODY = re.compile(r"(\b(?:response|request) body:?\s*).+", re.IGNORECASE | re.DOTALL)
_LONG_BYTES = re.compile(r"\bb(['\"])(?:\\.|(?!\1).){64,}\1", re.DOTALL)


def _count_chars(match: re.Match[str]) -> str:
    """Keep the label, replace the payload after it by its size."""
    return f"{match.group(1)}<{len(match.group(0)) - len(match.group(1))} chars>"


def _redact_quoted(match: re.Match[str]) -> str:
    return f"{match.group(1)}{match.group(2)}{REDACTED}{match.group(2)}"


def redact(text: str) -> str:
    """``text`` with credentials, signatures, tokens and payload bytes replaced."""
    text = _BODY.sub(_count_chars, text)
    text = _RESPONSE_BODY.sub(_count_chars, text)
    text = _QUOTED_SECRET.sub(_redact_quoted, text)
    text = _AUTH_LINE.sub(rf"\g<1>{REDACTED}", text)
    text = _BARE_SECRET.sub(rf"\g<1>{REDACTED}", text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    text = _AWS_KEY_ID.sub(REDACTED, text)
    return _LONG_BYTES.sub(lambda m: f"<{len(m.group(0))} bytes>", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback) through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the template: keep the template
            message = str(record.msg)
        message = redact(message)
        if record.name.partition(".")[0] in WIRE_LOGGERS and len(message) > MAX_WIRE_CHARS:
            dropped = len(message) - MAX_WIRE_CHARS
            message = f"{message[:MAX_WIRE_CHARS]} ... [{dropped} chars dropped]"
        record.msg, record.args = message, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class _Handler(logging.StreamHandler):
    """The handler :func:`configure` installs (so that a second call replaces it)."""


def configure(verbose: bool = False, stream: TextIO | None = None) -> logging.Handler:
    """Log to ``stream`` (stderr) at INFO, or DEBUG with ``verbose``; returns the handler.

    Calling it again (``main`` run twice in one process) replaces the handler.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler

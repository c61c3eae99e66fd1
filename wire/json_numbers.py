"""Big JSON arrays of numbers, read in pieces instead of as one document.

orjson reads a document whole: a 30 MB body of tensor data peaked at 3.4x its size on top
of the body (a copy of the input, yyjson's tree of every value, then a Python float per
value). ``lift`` takes the large, flat, string-free ``"data": [...]`` arrays out of a
body's text and puts a placeholder string in each one's place, so that what orjson reads
whole is a few hundred bytes; ``pieces`` then reads one lifted array about a megabyte at
a time, each piece still parsed by orjson (so a piece is exactly as strict as the whole
was), its values ready to go into a numpy buffer before the next is read.

Finding the arrays only needs to know where strings are: a ``"data"`` key counts when
it starts outside every string, and its array is lifted only when it holds no string,
no nested array and is large (``MIN_LIFTED_BYTES``). The placeholders carry a random
nonce, so no string a client writes can pass for one. Anything this does not expect
makes ``lift`` lift less, never guess: the codec reads the whole text again if the rest
does not parse, and the errors a client sees are the whole text's.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson

__all__ = ["MIN_LIFTED_BYTES", "Lifted", "Span", "lift", "pieces"]

Text: TypeAlias = bytes | bytearray
MIN_LIFTED_BYTES = 1 << 16  # smaller arrays stay in the document: nothing to save there
PIECE_BYTES = 1 << 20  # about this much text per orjson call
_DATA_KEY = re.compile(rb'"data"\s*:\s*\[')
# Strings stepped over per body at most: a body of a million short strings (a BYTES
# tensor) before a "data" key would cost seconds; past this, the rest is read whole.
_MAX_STRINGS_WALKED = 100_000


@dataclass(frozen=True, slots=True)
class Span:
    """The text between an array's brackets, as ``[start, end)`` of the body."""

    text: Text
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Lifted:
    """The document without its big arrays, and the arrays by placeholder."""

    document: bytes
    arrays: dict[str, Span]


def lift(text: Text, end: int) -> Lifted | None:
    """Lift the big number arrays out of ``text[:end]``; None when there is none."""
    nonce = secrets.token_hex(8)
    parts: list[bytes | memoryview] = []
    arrays: dict[str, Span] = {}
    view = memoryview(text)
    copied = pos = 0  # text[:copied] is in parts; pos is outside every string
    budget = _MAX_STRINGS_WALKED
    while (match := _DATA_KEY.search(text, pos, end)) is not None:
        pos, budget = _outside_strings(text, pos, match.start(), budget)
        if budget < 0:
            break
        if pos != match.start():  # the key's quote was inside a string: go past it
            continue
        start = match.end()  # just after "["
        close = text.find(b"]", start, end)
        if close < 0:
            break  # not JSON; orjson will say so
        pos = match.end()
        if close - start < MIN_LIFTED_BYTES or _holds(text, start, close, b'"['):
            continue
        name = f"\0infergw-{nonce}-{len(arrays)}"
        parts += (view[copied : start - 1], orjson.dumps(name))
        arrays[name] = Span(text, start, close)
        copied = pos = close + 1
    if not arrays:
        return None
    parts.append(view[copied:end])
    return Lifted(b"".join(parts), arrays)


def pieces(span: Span) -> Iterator[list[Any]]:
    """The array's values in order, as lists of about ``PIECE_BYTES`` of text each.

    Raises ``orjson.JSONDecodeError`` where the text is not a JSON array of values.
    """
    text, pos = span.text, span.start
    while pos < span.end:
        cut = span.end if span.end - pos <= PIECE_BYTES else text.find(b",", pos + PIECE_BYTES)
        if cut < 0 or cut > span.end:
            cut = span.end
        values = orjson.loads(b"".join((b"[", memoryview(text)[pos:cut], b"]")))
        if not values and (pos, cut) != (span.start, span.end):  # "[1,,2]", "[1, ]"
            raise orjson.JSONDecodeError("an empty array element", "", 0)
        yield values
        pos = cut + 1
        if pos == span.end:  # a trailing comma: "[1,2,]"
            raise orjson.JSONDecodeError("a trailing comma in an array", "", 0)


def _outside_strings(text: Text, pos: int, target: int, budget: int) -> tuple[int, int]:
    """From ``pos`` (outside strings), the first position at or past ``target`` that is
    outside every string (``target`` itself when no string spans it), and the budget of
    strings left to step over."""
    while (quote := text.find(b'"', pos, target)) >= 0:
        budget -= 1
        pos = _string_end(text, quote) + 1
        if pos > target or budget < 0:
            return pos, budget
    return target, budget


def _string_end(text: Text, quote: int) -> int:
    """The closing quote of the string opened at ``quote`` (escapes skipped)."""
    pos = quote + 1
    while (pos := text.find(b'"', pos)) >= 0:
        backslashes = 0
        while text[pos - 1 - backslashes] == 0x5C:  # "\\"
            backslashes += 1
        if backslashes % 2 == 0:
            return pos
        pos += 1
    return len(text)  # unterminated: orjson will say so


def _holds(text: Text, start: int, end: int, chars: bytes) -> bool:
    return any(text.find(char, start, end) >= 0 for char in (bytes([c]) for c in chars))

"""API keys: how a key is presented, compared, reloaded; TLS/auth config validation."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from infergw.gateway.auth import ApiKeys, presented_key
from infergw.gateway.core.config import parse_config
from infergw.gateway.reloading import Follower, Reloading
from infergw.vocab.errors import InvalidArgument


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bearer   abc  "}, "abc"),  # scheme case-insensitive (RFC 7235)
        ({"authorization": "Basic abc"}, None),
        ({"authorization": "Bearer "}, None),
        ({"authorization": "Bearer"}, None),
        ({"x-api-key": "xyz"}, "xyz"),
        ({"authorization": "Basic abc", "x-api-key": "xyz"}, "xyz"),
        ({"authorization": "Bearer abc", "x-api-key": "xyz"}, "abc"),
        ({"x-api-key": ""}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], key: str | None) -> None:
    assert presented_key(headers.get) == key


def test_keys_file_comments_blanks_and_hashing(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# comment\n\n  alpha  \nbeta\n#gamma\n")
    keys = ApiKeys(str(path))
    assert keys.accepts("alpha") and keys.accepts("beta")
    assert not keys.accepts("gamma") and not keys.accepts("# comment") and not keys.accepts("")
    assert not keys.accepts(None) and not keys.accepts("alph")
    # Stored as SHA-256 digests only.
    assert all(isinstance(d, bytes) and len(d) == 32 for d in keys._digests.get())


def test_an_unreadable_keys_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"auth\.api_keys_file: cannot read .*missing"):
        ApiKeys(str(tmp_path / "missing"))
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        ApiKeys(str(tmp_path / "binary"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reloading_checks_at_most_once_per_interval_and_keeps_the_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "value"
    path.write_text("1")
    loads: list[str] = []

    def load() -> int:
        text = path.read_text()
        loads.append(text)
        return int(text)

    clock = Clock()
    value = Reloading([str(path)], load, "the value", interval_s=1.0, clock=clock)
    assert value.get() == 1
    path.write_text("22")
    clock.now = 0.5
    assert value.get() == 1  # not checked yet
    clock.now = 1.0
    assert value.get() == 22
    assert value.get() == 22 and loads == ["1", "22"]  # unchanged files: no load
    path.write_text("not a number")  # a broken rotation
    clock.now = 2.0
    with caplog.at_level(logging.WARNING):
        assert value.get() == 22
    assert "cannot be loaded (ValueError)" in caplog.text and "not a number" not in caplog.text
    os.remove(path)
    clock.now = 3.0
    assert value.get() == 22  # a missing file too
    path.write_text("333")
    clock.now = 4.0
    assert value.get() == 333


def test_a_follower_hands_each_new_value_once_and_keeps_going_after_a_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    values = [("first",)]
    handed: list[tuple[str]] = []

    def push(value: tuple[str]) -> None:
        if value[0].startswith("bad"):
            raise ValueError(f"refused {value[0][:3]}")
        handed.append(value)

    follower = Follower("the value", lambda: values[-1], push)
    follower.sync()
    follower.sync()  # the same object: not handed again
    assert handed == [("first",)]
    values.append(("second",))
    follower.sync()
    assert handed == [("first",), ("second",)]
    values.append(("bad-secret",))
    with caplog.at_level(logging.WARNING):
        follower.sync()
        follower.sync()  # a refused value is not offered again
    assert caplog.text.count("the value reloaded but not taken (refused bad)") == 1
    assert "secret" not in caplog.text and handed[-1] == ("second",)
    first_refused = Follower("the value", lambda: ("bad",), push)
    with pytest.raises(ValueError):  # before the start: the start fails
        first_refused.sync()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"listen": {"tls": {"cert_file": "c"}}}, "listen.tls.key_file is required"),
        (
            {"listen": {"tls": {"cert_file": "c", "key_file": "k", "ca": "x"}}},
            "listen.tls.ca: unknown key",
        ),
        ({"auth": {}}, "auth.api_keys_file is required"),
        (
            {"auth": {"api_keys_file": "k", "open_health": "no"}},
            "auth.open_health: must be a boolean",
        ),
        ({"auth": {"api_key_file": "k"}}, "did you mean 'api_keys_file'"),
    ],
)
def test_tls_and_auth_config_problems(raw: dict[str, object], problem: str) -> None:
    raw = {"backends": {"t": {"kind": "triton", "url": "h:1"}}, **raw}
    with pytest.raises(InvalidArgument, match=problem.replace(".", r"\.")):
        parse_config(raw)

"""What address a bind address is reported as (no sockets)."""

from __future__ import annotations

import pytest

from infergw.gateway.sites import display_host


@pytest.mark.parametrize(
    ("bind", "shown"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "localhost"),
    ],
)
def test_a_wildcard_is_reached_through_loopback(bind: str, shown: str) -> None:
    assert display_host(bind) == shown

"""The one gRPC channel factory: defaults, what callers override, TLS vs plaintext."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest

from infergw.wire import grpc_channel
from infergw.wire.grpc_channel import MAX_MESSAGE_BYTES, UNLIMITED, channel_options


def test_defaults_allow_yolo_sized_messages_both_ways_with_keepalive() -> None:
    options = dict(channel_options())
    assert MAX_MESSAGE_BYTES == 1 << 30
    assert options["grpc.max_send_message_length"] == MAX_MESSAGE_BYTES
    assert options["grpc.max_receive_message_length"] == MAX_MESSAGE_BYTES
    assert options["grpc.keepalive_time_ms"] == 120_000
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert "grpc.use_local_subchannel_pool" not in options


def test_callers_pass_only_what_differs() -> None:
    options = channel_options(
        max_message_bytes=UNLIMITED,
        private=True,
        options=(("grpc.keepalive_time_ms", 5_000), ("grpc.max_reconnect_backoff_ms", 2000)),
    )
    names = [name for name, _ in options]
    assert len(names) == len(set(names)), "an override must replace, not repeat, a default"
    merged = dict(options)
    assert merged["grpc.max_send_message_length"] == UNLIMITED
    assert merged["grpc.max_receive_message_length"] == UNLIMITED
    assert merged["grpc.use_local_subchannel_pool"] == 1
    assert merged["grpc.keepalive_time_ms"] == 5_000
    assert merged["grpc.max_reconnect_backoff_ms"] == 2000
    assert merged["grpc.keepalive_timeout_ms"] == 20_000  # the rest stay defaults


def test_server_options_take_the_receive_limit_and_the_same_send_default() -> None:
    options = dict(grpc_channel.server_options(64 << 20, options=(("grpc.so_reuseport", 0),)))
    assert options == {
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": 64 << 20,
        "grpc.so_reuseport": 0,
    }


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, kind: str) -> Any:
        def make(*args: Any, **kwargs: Any) -> str:
            self.calls.append((kind, args, kwargs))
            return kind

        return make


@pytest.mark.parametrize(
    ("factory", "module"),
    [(grpc_channel.aio_channel, "grpc.aio"), (grpc_channel.sync_channel, "grpc")],
)
def test_plaintext_without_credentials_tls_with_them(
    monkeypatch: pytest.MonkeyPatch, factory: Any, module: str
) -> None:
    target = grpc.aio if module == "grpc.aio" else grpc
    record = Recorder()
    monkeypatch.setattr(target, "insecure_channel", record("insecure"))
    monkeypatch.setattr(target, "secure_channel", record("secure"))
    creds = grpc.ssl_channel_credentials()

    assert factory("h:1", private=True) == "insecure"
    assert factory("h:2", credentials=creds) == "secure"

    (_, args1, kw1), (_, args2, kw2) = record.calls
    assert args1 == ("h:1",) and dict(kw1["options"])["grpc.use_local_subchannel_pool"] == 1
    assert args2 == ("h:2", creds) and kw2["options"] == channel_options()


async def test_aio_channel_is_a_real_channel_without_connecting() -> None:
    channel = grpc_channel.aio_channel("127.0.0.1:1")
    try:
        assert isinstance(channel, grpc.aio.Channel)
        assert channel.get_state() == grpc.ChannelConnectivity.IDLE  # lazy: no socket yet
    finally:
        await channel.close()

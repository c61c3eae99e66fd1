"""Every gRPC channel infergw opens, with one set of defaults.

Backends, the SDK, the load generator, the sidecar's upstream, the Cloud Run stand-in
and the benchmarks all open channels here and pass only what differs:

- messages up to ``MAX_MESSAGE_BYTES`` (1 GiB) both ways. gRPC's own default (4 MiB
  received) is below a YOLO-sized output (8.6 MB), and a channel is the wrong place for
  a policy: how large a request the gateway accepts is its configured
  ``limits.max_message_bytes``, checked where the error can name the limit. A proxy
  that must not add a limit of its own passes ``UNLIMITED``.
- keepalive pings every 2 min while calls are in flight, so a peer that vanished
  during a long call (a cold start takes tens of seconds) is noticed, yet seldom
  enough that servers' default ping policy (one per 5 min without data, two strikes)
  does not answer a long call with GOAWAY.
- ``private``: a connection of this channel's own instead of one shared through
  gRPC's global subchannel pool (load generators and benchmarks measuring one
  connection, proxies that must not share the client's).

``server_options`` gives servers the same message limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias
from urllib.parse import urlsplit

import grpc
import grpc.aio

__all__ = [
    "FAST_RECONNECT",
    "KEEPALIVE_OPTIONS",
    "LIMIT_SLACK_BYTES",
    "MAX_MESSAGE_BYTES",
    "UNLIMITED",
    "Option",
    "aio_channel",
    "channel_options",
    "limited_server_options",
    "message_limits",
    "parse_target_url",
    "server_options",
    "sync_channel",
    "tls_credentials",
]

Option: TypeAlias = tuple[str, int | str]

MAX_MESSAGE_BYTES = 1 << 30
UNLIMITED = -1  # gRPC's "no limit"
LIMIT_SLACK_BYTES = 1024 * 1024  # see limited_server_options

# For a channel to a server that restarts (a supervised Triton, a sidecar's neighbour):
# connection attempts while it is down every 0.1 s growing to 0.5 s, cheap (a refused
# connect), so a restarted server is used again within ~0.5 s of being ready; gRPC's
# default backoff grows to 120 s.
FAST_RECONNECT: tuple[Option, ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)

KEEPALIVE_OPTIONS: tuple[Option, ...] = (
    ("grpc.keepalive_time_ms", 120_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
)


def message_limits(
    max_receive_bytes: int = MAX_MESSAGE_BYTES, max_send_bytes: int = MAX_MESSAGE_BYTES
) -> tuple[Option, ...]:
    return (
        ("grpc.max_send_message_length", max_send_bytes),
        ("grpc.max_receive_message_length", max_receive_bytes),
    )


def channel_options(
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    private: bool = False,
    options: Sequence[Option] = (),
) -> tuple[Option, ...]:
    """The defaults, then ``options`` (which replace a default of the same name)."""
    merged = dict((*message_limits(max_message_bytes, max_message_bytes), *KEEPALIVE_OPTIONS))
    if private:
        merged["grpc.use_local_subchannel_pool"] = 1
    merged.update(options)
    return tuple(merged.items())


def aio_channel(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    private: bool = False,
    options: Sequence[Option] = (),
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel (create it inside the event loop that will use it).

    ``credentials`` switch to TLS (e.g. ``grpc.ssl_channel_credentials()``); without
    them the channel is plaintext HTTP/2 (h2c).
    """
    opts = channel_options(max_message_bytes=max_message_bytes, private=private, options=options)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=opts)
    return grpc.aio.secure_channel(target, credentials, options=opts)


def sync_channel(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    private: bool = False,
    options: Sequence[Option] = (),
) -> grpc.Channel:
    """A blocking channel; same arguments as ``aio_channel``."""
    opts = channel_options(max_message_bytes=max_message_bytes, private=private, options=options)
    if credentials is None:
        return grpc.insecure_channel(target, options=opts)
    return grpc.secure_channel(target, credentials, options=opts)


def tls_credentials(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """TLS toward a server: its CA (PEM; None: the system's roots) and, for mutual TLS,
    our certificate chain and key. Reads the files now (OSError if one cannot be read)."""

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as file:
            return file.read()

    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


def server_options(
    max_receive_bytes: int = MAX_MESSAGE_BYTES,
    *,
    max_send_bytes: int = MAX_MESSAGE_BYTES,
    options: Sequence[Option] = (),
) -> tuple[Option, ...]:
    """Options for ``grpc.aio.server``: message limits plus ``options``.

    A server that enforces a configured request limit passes it (plus any slack it
    wants so its own check answers first) as ``max_receive_bytes``.
    """
    merged = dict(message_limits(max_receive_bytes, max_send_bytes))
    merged.update(options)
    return tuple(merged.items())


def limited_server_options(limit_bytes: int, options: Sequence[Option] = ()) -> tuple[Option, ...]:
    """Options for a server that checks ``limit_bytes`` itself (the gateway, the sidecar).

    gRPC's own receive limit sits ``LIMIT_SLACK_BYTES`` above it, so that our check, which
    names the limit and leaves a ``server-timing`` trailer, answers for most oversized
    messages; replies are not limited. Port sharing is off: two servers must never
    silently split one port.
    """
    return server_options(
        limit_bytes + LIMIT_SLACK_BYTES,
        max_send_bytes=UNLIMITED,
        options=(("grpc.so_reuseport", 0), *options),
    )


def parse_target_url(url: str) -> tuple[str, bool, str]:
    """A service URL -> (gRPC target, TLS?, default ID-token audience): ``https://HOST``
    (Cloud Run: TLS on 443, the URL its tokens name), ``h2c://HOST:PORT`` or ``HOST:PORT``
    (plaintext HTTP/2). ValueError for anything else."""
    if "://" not in url:
        url = "h2c://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("https", "h2c") or not parts.hostname or parts.path.strip("/"):
        raise ValueError("expected https://HOST (Cloud Run) or h2c://HOST:PORT / HOST:PORT")
    if parts.scheme == "https":
        return f"{parts.hostname}:{parts.port or 443}", True, f"https://{parts.netloc}"
    if parts.port is None:
        raise ValueError("an h2c URL needs a port")
    return parts.netloc, False, ""

"""Google Cloud Run: OIP gRPC over HTTP/2 to our container (``deploy/cloudrun``).

The client is the shared OIP gRPC one (``oip_grpc``: original request bytes
forwarded, raw response returned, errors mapped once). What Cloud Run adds:

- ``url: https://SERVICE-xyz.a.run.app`` -> TLS on 443 plus a Google ID token whose
  audience is the service URL (or ``audience``), from Google's standard credential
  chain (google-auth, extra ``gcp``), cached until shortly before it expires and
  refreshed in the background; sent as ``authorization: Bearer ...``, never logged.
- ``url: h2c://host:port`` or ``host:port`` -> plaintext HTTP/2 (the local stand-in).
- The container's ``server-timing`` trailer gives ``compute``, ``coldstart`` and
  ``backend_queue``; exactly those are added to the request's timings.
- ``ready()`` does not call the service: probing it would keep an instance warm and
  defeat scale to zero. It only makes sure a token can be had.

Config::

    backends:
      cloudrun: {kind: cloudrun, url: "https://infergw-abc123-uc.a.run.app"}
      local_run: {kind: cloudrun, url: "h2c://127.0.0.1:8080"}
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from infergw.backends.oip_grpc import Metadata, OipGrpcBackend
from infergw.gateway.core.backend import CallCredential
from infergw.gateway.core.context import RequestContext
from infergw.vocab.errors import InvalidArgument, Unavailable
from infergw.vocab.timing import BACKEND_REPORTED
from infergw.wire import grpc_channel
from infergw.wire.server_timing import (
    parse_server_timing,
    select_entries,
    server_timing_from_metadata,
)

log = logging.getLogger(__name__)

FetchToken = Callable[[str], str]  # audience -> ID token; blocking (runs in a thread)

REFRESH_BEFORE_S = 300.0  # refresh in the background this long before expiry
MIN_VALIDITY_S = 30.0  # below this, wait for a fresh token instead
UNKNOWN_EXPIRY_TTL_S = 300.0  # a token whose expiry cannot be read is kept this long


def fetch_google_id_token(audience: str) -> str:
    """An ID token for ``audience`` from Google's default credential chain."""
    from google.auth.transport.requests import Request
    from google.oauth2 import id_token

    token: str = id_token.fetch_id_token(Request(), audience)
    return token


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (not verified: the server does that), or None."""
    try:
        body = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        return None


class IdTokenCache:
    """ID tokens for one audience: one fetch at a time, reused until near expiry."""

    def __init__(
        self,
        audience: str,
        fetch: FetchToken = fetch_google_id_token,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audience = audience
        self._fetch = fetch
        self._clock = clock
        self._token: str | None = None
        self._expiry = 0.0
        self._pending: asyncio.Task[str] | None = None

    def __repr__(self) -> str:  # never show the token
        return f"IdTokenCache(audience={self.audience!r})"

    @property
    def expires_at(self) -> float:
        """When the token ``get`` returns expires (unix time; 0 before the first)."""
        return self._expiry

    async def get(self) -> str:
        left = self._expiry - self._clock()
        if self._token is not None and left > MIN_VALIDITY_S:
            if left <= REFRESH_BEFORE_S and self._pending is None:
                self._start_fetch().add_done_callback(_log_background_failure)
            return self._token
        return await asyncio.shield(self._pending or self._start_fetch())

    def _start_fetch(self) -> asyncio.Task[str]:
        self._pending = asyncio.create_task(self._refresh())
        return self._pending

    async def _refresh(self) -> str:
        try:
            token = await asyncio.to_thread(self._fetch, self.audience)
            expiry = _jwt_expiry(token)
            self._token = token
            self._expiry = expiry if expiry is not None else self._clock() + UNKNOWN_EXPIRY_TTL_S
            return token
        finally:
            self._pending = None


def _log_background_failure(task: asyncio.Task[str]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("background ID token refresh failed: %s", type(task.exception()).__name__)


class CloudRunBackend(OipGrpcBackend):
    reads_trailers = True  # the container's server-timing trailer carries compute/coldstart
    scales_to_zero = True

    def __init__(
        self,
        name: str,
        url: str,
        *,
        audience: str | None = None,
        tokens: IdTokenCache | None = None,
    ) -> None:
        target, self.tls, default_audience = grpc_channel.parse_target_url(url)
        super().__init__(name, url)
        self.target = target
        if tokens is None and self.tls:
            tokens = IdTokenCache(audience or default_audience)
        self._tokens = tokens

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> CloudRunBackend:
        unknown = set(options) - {"url", "audience"}
        if unknown:
            raise InvalidArgument(f"backend {name!r}: unknown options {sorted(unknown)}")
        url, audience = options.get("url"), options.get("audience")
        if not isinstance(url, str) or not url:
            raise InvalidArgument(
                f"backend {name!r}: 'url' (the Cloud Run service URL) is required"
            )
        if audience is not None and not isinstance(audience, str):
            raise InvalidArgument(f"backend {name!r}: 'audience' must be a string")
        try:
            backend = cls(name, url, audience=audience)
        except ValueError as exc:
            raise InvalidArgument(f"backend {name!r}: bad url {url!r}: {exc}") from exc
        if backend.tls:
            try:
                import google.oauth2.id_token  # noqa: F401 - fail at config time, not per request
            except ImportError as exc:
                raise InvalidArgument(
                    f"backend {name!r}: https Cloud Run URLs need google-auth: "
                    "pip install 'infergw[gcp]'"
                ) from exc
        return backend

    def _open_channel(self) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials() if self.tls else None
        return grpc_channel.aio_channel(
            self.target, credentials=creds, options=grpc_channel.FAST_RECONNECT
        )

    async def _metadata(self, ctx: RequestContext | None) -> Metadata | None:
        headers = await super()._metadata(ctx)
        if self._tokens is None:
            return headers
        credential = await self.call_credential()
        return (*(headers or ()), (credential.header, credential.value))

    async def call_credential(self) -> CallCredential:
        """``authorization: Bearer`` with the ID token (``CredentialedBackend``: the native
        plane sends the calls of an ``https`` service with it), good until 30 s before it
        expires. The client's error names the audience; the log, the failure's type only
        (google-auth's messages are not the client's to read)."""
        if self._tokens is None:
            raise Unavailable(f"backend {self.name!r}: an h2c service takes no ID token")
        try:
            token = await self._tokens.get()
        except Exception as exc:
            log.warning("backend %r: no Google ID token: %s", self.name, type(exc).__name__)
            raise Unavailable(
                f"backend {self.name!r}: no Google ID token for audience "
                f"{self._tokens.audience!r} (the gateway's log says why)"
            ) from exc
        return CallCredential(
            "authorization", f"Bearer {token}", self._tokens.expires_at - MIN_VALIDITY_S
        )

    def _on_trailers(self, trailers: grpc.aio.Metadata | None, ctx: RequestContext) -> None:
        value = server_timing_from_metadata(trailers)
        if value is not None:
            timed = parse_server_timing(value, timed_only=True)
            for entry in select_entries(timed, BACKEND_REPORTED):
                ctx.timings.add(entry.name, entry.duration_ms, entry.description)

    async def ready(self) -> bool:
        if self._tokens is None:
            return True
        try:
            await self._tokens.get()  # also keeps the token warm, off the request path
        except Exception:
            return False
        return True

"""API keys at the gateway (``auth: {api_keys_file: PATH}``), for REST and gRPC alike.

The file holds one key per line (blank lines and ``#`` comments are skipped) and is
re-read when it changes, so keys rotate without a restart. Keys are kept only as
SHA-256 digests; a presented key is hashed and compared with every digest by
``hmac.compare_digest``, all of them, so neither a reply nor its timing tells which
keys exist. A client presents ``authorization: Bearer KEY`` or ``x-api-key: KEY`` (an
HTTP header or gRPC metadata, as tritonclient's ``headers=`` sends either); a missing or
wrong key is UNAUTHENTICATED / 401 with one message for every case. Health checks
(``/v2/health/*``, ServerLive/ServerReady, ``grpc.health.v1``) and the metrics port
stay open unless configured otherwise, so probes and scrapers need no key.
Keys never reach a log line, span, metric or error.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from infergw.gateway.core.config import AuthConfig
from infergw.gateway.reloading import CHECK_INTERVAL_S, Reloading
from infergw.vocab.errors import InvalidArgument, Unauthenticated

RpcHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic in the stubs only
MESSAGE = "missing or invalid API key"
CHALLENGE = 'Bearer realm="infergw"'
OPEN_HTTP_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
OPEN_GRPC_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    }
)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _read_keys(path: str) -> tuple[bytes, ...]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    keys = [line.strip() for line in lines]
    return tuple(_digest(k) for k in keys if k and not k.startswith("#"))


class ApiKeys:
    """The accepted keys, as digests, from a file re-read when it changes."""

    def __init__(self, path: str, interval_s: float = CHECK_INTERVAL_S) -> None:
        try:
            self._digests = Reloading([path], lambda: _read_keys(path), "API keys", interval_s)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise InvalidArgument(f"auth.api_keys_file: cannot read {path}: {reason}") from exc

    def digests(self) -> tuple[bytes, ...]:
        """The accepted keys' SHA-256 digests (the same object until the file changes):
        what the native plane checks keys against."""
        return self._digests.get()

    def accepts(self, presented: str | None) -> bool:
        if not presented:
            return False
        candidate = _digest(presented)
        found = False
        for digest in self._digests.get():  # every digest: the time does not depend on which
            found |= hmac.compare_digest(candidate, digest)
        return found


def presented_key(header: Callable[[str], str | None]) -> str | None:
    """The key in ``authorization: Bearer KEY`` or ``x-api-key: KEY``; ``header`` looks one up."""
    authorization = header("authorization")
    if authorization:
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            return credential.strip()
    return header("x-api-key") or None


class Authenticator:
    """The config's policy: which keys, and which endpoints need none."""

    def __init__(self, config: AuthConfig, interval_s: float = CHECK_INTERVAL_S) -> None:
        self.config = config
        self.keys = ApiKeys(config.api_keys_file, interval_s)

    def rest_middleware(self, *, metrics: bool = False) -> Middleware:
        """For an aiohttp app (the REST port, or with ``metrics`` the metrics port).

        Put it first (outermost): a refused request is answered before its body is read,
        as 401 ``{"error": ...}`` (the shape of OIP's and TF Serving's REST errors) with a
        ``WWW-Authenticate`` challenge.
        """
        open_paths = OPEN_HTTP_PATHS if self.config.open_health else frozenset()
        everything_open = metrics and self.config.open_metrics

        @web.middleware
        async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
            if everything_open or request.path in open_paths:
                return await handler(request)
            if not self.keys.accepts(presented_key(request.headers.get)):
                refused = Unauthenticated(MESSAGE)
                return web.json_response(
                    {"error": refused.message},
                    status=refused.http_status,
                    headers={"WWW-Authenticate": CHALLENGE},
                )
            return await handler(request)

        return authenticate

    def grpc_interceptor(self) -> grpc.aio.ServerInterceptor:
        open_methods = OPEN_GRPC_METHODS if self.config.open_health else frozenset()
        return _GrpcAuth(self.keys, open_methods)


class _GrpcAuth(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED before the method runs; health stays open if configured."""

    def __init__(self, keys: ApiKeys, open_methods: frozenset[str]) -> None:
        self._keys = keys
        self._open = open_methods
        self._refuse = _refusing_handlers()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[RpcHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> RpcHandler | None:
        if details.method not in self._open:
            metadata: Mapping[str, str | bytes] = dict(details.invocation_metadata or ())

            def header(name: str) -> str | None:
                value = metadata.get(name)
                return value if isinstance(value, str) else None

            if not self._keys.accepts(presented_key(header)):
                handler = await continuation(details)
                if handler is None:  # no such method: UNIMPLEMENTED tells nothing about keys
                    return handler
                return self._refuse[(handler.request_streaming, handler.response_streaming)]
        return await continuation(details)


def _refusing_handlers() -> dict[tuple[bool, bool], RpcHandler]:
    """One refusing handler per method shape (unary/stream request x response)."""

    async def refuse(_: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, MESSAGE)

    async def refuse_stream(_: object, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, MESSAGE)
        yield  # pragma: no cover - makes this an async generator (a streaming response)

    return {
        (False, False): grpc.unary_unary_rpc_method_handler(refuse),
        (True, False): grpc.stream_unary_rpc_method_handler(refuse),
        (False, True): grpc.unary_stream_rpc_method_handler(refuse_stream),
        (True, True): grpc.stream_stream_rpc_method_handler(refuse_stream),
    }

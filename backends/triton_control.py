"""Triton's HTTP API, for the REST control calls the gateway forwards (``core/control.py``).

Why forward to Triton's own HTTP endpoint (the backend's ``http_url`` option) instead of
converting its gRPC answers: the two APIs differ in shape, not only in encoding (log
settings are a flat object on REST and a map of typed values on gRPC, shared-memory
status a list on one and a map on the other, model config JSON is Triton's own
rendering of the protobuf), so a conversion would be one hand-written mapping per call
that drifts with every release. Forwarded, the answer is Triton's, byte for byte.

The request goes out as the client sent it (method, path and query, body); Triton's
answer comes back as it is, error statuses included: they are Triton's to give. Only
a failure to reach Triton is the gateway's (UNAVAILABLE, naming the backend).
"""

from __future__ import annotations

import ssl

import aiohttp

from infergw.gateway.core.control import HttpCall, HttpReply
from infergw.vocab.errors import BackendError, Unavailable

CONTROL_TIMEOUT_S = 120.0  # a model load can take this long; control answers are small
MAX_REPLY_BYTES = 64 * 1024 * 1024


class TritonHttpControl:
    def __init__(
        self,
        backend: str,
        base_url: str,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self.backend = backend
        self.base_url = base_url.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        if self.base_url.startswith("https://"):
            self._ssl = ssl.create_default_context(cafile=ca_file)
            if cert_file is not None:
                self._ssl.load_cert_chain(cert_file, key_file)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, call: HttpCall, timeout_s: float | None = None) -> HttpReply:
        if self._session is None:  # created lazily: a session belongs to the running loop
            self._session = aiohttp.ClientSession(auto_decompress=True)
        headers = {"Content-Type": "application/json"} if call.body else {}
        timeout = aiohttp.ClientTimeout(total=timeout_s or CONTROL_TIMEOUT_S)
        try:
            async with self._session.request(
                call.method,
                self.base_url + call.path_qs,
                data=call.body or None,
                headers=headers,
                timeout=timeout,
                ssl=self._ssl if self._ssl is not None else True,
                allow_redirects=False,
            ) as reply:
                if (reply.content_length or 0) > MAX_REPLY_BYTES:
                    raise BackendError(f"backend {self.backend!r} answered with too large a body")
                body = await reply.content.read(MAX_REPLY_BYTES + 1)
                if len(body) > MAX_REPLY_BYTES:
                    raise BackendError(f"backend {self.backend!r} answered with too large a body")
                return HttpReply(reply.status, body, reply.content_type or "application/json")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unavailable(
                f"backend {self.backend!r} is unavailable over HTTP: {type(exc).__name__}"
            ) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

"""OIP REST clients (``/v2/...``), sync on ``http.client`` and asyncio on aiohttp.

``binary=True`` uses the binary tensor extension for inputs and outputs (raw bytes
after a JSON header) instead of JSON number lists: the protocol comparison in the
design brief is exactly this switch. The gateway's breakdown arrives in the
``Server-Timing`` response header. Protocol logic lives in ``_rest``; this module
only moves bytes.
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import aiohttp
import yarl

from infergw.clients import _convert, _rest
from infergw.clients._errors import from_transport
from infergw.clients._rest import Call, Endpoint, Reply
from infergw.clients.types import InferResult, ServerMetadata
from infergw.vocab.types import ModelMetadata, ModelStatistics, ParamValue
from infergw.wire.oip_json import metadata_from_json, statistics_from_json
from infergw.wire.server_timing import HEADER, join_server_timing

__all__ = ["AsyncHttpClient", "HttpClient"]

# A kept-alive connection the server closed while idle fails like this on reuse.
_DROPPED = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)  # + RemoteDisconnected


class _HttpBase:
    def __init__(
        self,
        url: str = "127.0.0.1:8000",
        *,
        binary: bool = False,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``url`` is ``host:port`` or ``http(s)://host:port[/prefix]``; ``binary`` selects
        the binary tensor extension; ``timeout`` (seconds) is the default per call
        (None: none); ``headers`` go on every request; ``ssl_context`` is for https."""
        self.endpoint = Endpoint.parse(url)
        self.binary = binary
        self.timeout = timeout
        self._headers = dict(headers or {})
        self._ssl_context = ssl_context

    def _get(self, path: str) -> Call:
        return _rest.get(self.endpoint.prefix + path, self._headers, self.timeout)

    def _infer_call(
        self,
        model: str,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None,
        backend: str | None,
        timeout: float | None,
        request_id: str,
        version: str,
        parameters: Mapping[str, ParamValue] | None,
    ) -> Call:
        return _rest.infer_call(
            self.endpoint.prefix,
            self._headers,
            model,
            inputs,
            binary=self.binary,
            outputs=outputs,
            backend=backend,
            timeout=_convert.timeout_or(timeout, self.timeout),
            request_id=request_id,
            version=version,
            parameters=parameters,
        )


class HttpClient(_HttpBase):
    """Blocking OIP REST client over one persistent keep-alive connection.

    Not thread-safe (one connection carries one request at a time): use one client
    per thread. If the server closed the connection while it sat idle, the request
    is sent once more on a fresh connection; nothing else is retried.
    """

    def __init__(
        self,
        url: str = "127.0.0.1:8000",
        *,
        binary: bool = False,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            url, binary=binary, timeout=timeout, headers=headers, ssl_context=ssl_context
        )
        ep = self.endpoint
        self._conn: http.client.HTTPConnection
        if ep.scheme == "https":
            self._conn = http.client.HTTPSConnection(ep.host, ep.port, context=self._ssl_context)
        else:
            self._conn = http.client.HTTPConnection(ep.host, ep.port)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        outputs: Sequence[str] | None = None,
        backend: str | None = None,
        timeout: float | None = None,
        request_id: str = "",
        version: str = "",
        parameters: Mapping[str, ParamValue] | None = None,
    ) -> InferResult:
        """Run one inference; same arguments as ``GrpcClient.infer``. ``timeout`` is
        both the socket timeout and Triton's ``timeout`` parameter (microseconds)."""
        started = time.perf_counter()
        call = self._infer_call(
            model, inputs, outputs, backend, timeout, request_id, version, parameters
        )
        return _rest.infer_result(self._send(call), started)

    def server_live(self) -> bool:
        return _rest.ready_result(self._send(self._get("/v2/health/live")))

    def server_ready(self) -> bool:
        return _rest.ready_result(self._send(self._get("/v2/health/ready")))

    def model_ready(self, model: str, version: str = "") -> bool:
        """False for a model that is not ready or not known."""
        return _rest.ready_result(
            self._send(self._get(_rest.model_path(model, version) + "/ready"))
        )

    def server_metadata(self) -> ServerMetadata:
        return _convert.server_metadata_from_json(self._send(self._get("/v2")).json())

    def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        reply = self._send(self._get(_rest.model_path(model, version)))
        return metadata_from_json(reply.json())

    def model_statistics(self, model: str = "", version: str = "") -> list[ModelStatistics]:
        """Triton-style aggregate statistics; ``model=""`` asks for every model."""
        reply = self._send(self._get(_rest.statistics_path(model, version)))
        return statistics_from_json(reply.json())

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: Call) -> Reply:
        conn = self._conn
        for attempt in (1, 2):
            reused = conn.sock is not None
            conn.timeout = call.timeout  # for a new connection
            if conn.sock is not None:
                conn.sock.settimeout(call.timeout)
            try:
                conn.request(call.method, call.path, body=call.body, headers=call.headers)
                response = conn.getresponse()
                body = response.read()
            except _DROPPED as exc:  # RemoteDisconnected is a ConnectionResetError
                conn.close()
                if reused and attempt == 1:
                    continue
                raise from_transport(exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise from_transport(exc) from exc
            except BaseException:  # e.g. KeyboardInterrupt mid-response: never reuse it
                conn.close()
                raise
            timing = join_server_timing(response.headers.get_all(HEADER) or ())
            return Reply(response.status, response.headers, body, timing)
        raise AssertionError("unreachable: the second attempt returns or raises")


class AsyncHttpClient(_HttpBase):
    """asyncio OIP REST client on one ``aiohttp.ClientSession`` (a connection pool).

    Safe to share between tasks of one event loop. The session is created on first
    use (or ``async with``), inside the running loop.
    """

    def __init__(
        self,
        url: str = "127.0.0.1:8000",
        *,
        binary: bool = False,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 100,
    ) -> None:
        """As ``HttpClient``; ``max_connections`` caps the pool (0: no cap)."""
        super().__init__(
            url, binary=binary, timeout=timeout, headers=headers, ssl_context=ssl_context
        )
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        outputs: Sequence[str] | None = None,
        backend: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - sent as the deadline, as in the sync API
        request_id: str = "",
        version: str = "",
        parameters: Mapping[str, ParamValue] | None = None,
    ) -> InferResult:
        """See ``HttpClient.infer``."""
        started = time.perf_counter()
        call = self._infer_call(
            model, inputs, outputs, backend, timeout, request_id, version, parameters
        )
        return _rest.infer_result(await self._send(call), started)

    async def server_live(self) -> bool:
        return _rest.ready_result(await self._send(self._get("/v2/health/live")))

    async def server_ready(self) -> bool:
        return _rest.ready_result(await self._send(self._get("/v2/health/ready")))

    async def model_ready(self, model: str, version: str = "") -> bool:
        """False for a model that is not ready or not known."""
        call = self._get(_rest.model_path(model, version) + "/ready")
        return _rest.ready_result(await self._send(call))

    async def server_metadata(self) -> ServerMetadata:
        return _convert.server_metadata_from_json((await self._send(self._get("/v2"))).json())

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        reply = await self._send(self._get(_rest.model_path(model, version)))
        return metadata_from_json(reply.json())

    async def model_statistics(self, model: str = "", version: str = "") -> list[ModelStatistics]:
        """Triton-style aggregate statistics; ``model=""`` asks for every model."""
        reply = await self._send(self._get(_rest.statistics_path(model, version)))
        return statistics_from_json(reply.json())

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                ssl=self._ssl_context if self._ssl_context is not None else True,
            )
            # Large tensors: read in 1 MiB chunks rather than aiohttp's 64 KiB default.
            self._session = aiohttp.ClientSession(connector=connector, read_bufsize=1 << 20)
        return self._session

    async def _send(self, call: Call) -> Reply:
        url = yarl.URL(self.endpoint.origin + call.path, encoded=True)  # keep %2F as sent
        try:
            async with self._open().request(
                call.method,
                url,
                data=call.body,
                headers=call.headers,
                timeout=aiohttp.ClientTimeout(total=call.timeout),
            ) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise from_transport(exc) from exc
        timing = join_server_timing(response.headers.getall(HEADER, ()))
        return Reply(response.status, response.headers, body, timing)

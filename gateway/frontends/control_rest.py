"""Triton's control routes on the gateway's REST port, forwarded (``core/control.py``).

Each request goes to the owning backend's own HTTP API as the client sent it (method,
raw path and query, body), and Triton's answer, status and JSON body, comes back as
it is. Calls about every model (``GET /v2/models/stats``, ``POST /v2/repository/index``)
merge the routed backends' answers, each keeping the models routed to it. A backend
with no HTTP API for its control plane (Triton without ``http_url``) still answers
statistics and the index through the Backend contract; its other control routes are
FAILED_PRECONDITION naming the option to set.

Errors raised here are answered by the REST app's boundary, in OIP's shape.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from infergw.gateway.core.control import ControlPlane, ControlRouter, HttpCall, Source
from infergw.gateway.core.service import PIN_HEADER, InferenceService
from infergw.vocab.errors import BackendError, InvalidArgument, Unimplemented
from infergw.wire.oip_json import statistics_to_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The REST app's body reader (inflates, enforces the size limit): rest.py passes its own.
ReadBody = Callable[[web.Request, InferenceService], Awaitable[bytes | bytearray]]
Route = tuple[str, str, Handler]  # (method, path, handler)

MODELS = "/v2/models/{model}"
VERSIONS = "/v2/models/{model}/versions/{version:[0-9]+}"  # Triton: other versions are 404
OTHER_VERSIONS = "/v2/models/{model}/versions/{version}{tail:.*}"
SHARED_MEMORY = (
    ("systemsharedmemory", "system shared memory"),
    ("cudasharedmemory", "CUDA shared memory"),
)


class RestControl:
    def __init__(self, service: InferenceService, read_body: ReadBody) -> None:
        self.service = service
        self.read_body = read_body
        self.router = service.router
        self.control = ControlRouter(service.router)

    def routes(self) -> list[Route]:
        """Every control route; ``/v2/models/stats`` comes before ``/v2/models/{model}``."""
        model = self._model_call
        server = self._server_call
        found: list[Route] = [
            ("GET", "/v2", self.server_metadata),
            ("GET", "/v2/models/stats", self.statistics),
            ("POST", "/v2/repository/index", self.repository_index),
            ("POST", "/v2/repository/models/{model}/load", model("model load", control=True)),
            ("POST", "/v2/repository/models/{model}/unload", model("model unload", control=True)),
            ("GET", "/v2/trace/setting", server("trace settings")),
            ("POST", "/v2/trace/setting", server("trace settings")),
            ("GET", MODELS + "/trace/setting", model("trace settings")),
            ("POST", MODELS + "/trace/setting", model("trace settings")),
            ("GET", "/v2/logging", server("log settings")),
            ("POST", "/v2/logging", server("log settings")),
        ]
        for prefix in (MODELS, VERSIONS):
            found.append(("GET", prefix + "/config", model("model configuration")))
            found.append(("GET", prefix + "/stats", self.statistics))
        for kind, what in SHARED_MEMORY:
            region = f"/v2/{kind}/region/{{region}}"
            found += [
                ("GET", f"/v2/{kind}/status", server(f"{what} status")),
                ("GET", region + "/status", server(f"{what} status")),
                ("POST", region + "/register", server(f"{what} registration")),
                ("POST", f"/v2/{kind}/unregister", server(f"{what} unregistration")),
                ("POST", region + "/unregister", server(f"{what} unregistration")),
            ]
        return found

    # -- forwarded as they are -----------------------------------------------------------
    def _model_call(self, what: str, control: bool = False) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            if control:
                self.control.check_model_control(what)
            model = request.match_info["model"]
            plane = self.control.for_model(model, _pinned(request), what)
            return await self._forward(plane, request)

        return handle

    def _server_call(self, what: str) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            plane = self.control.for_server(_pinned(request), what)
            return await self._forward(plane, request)

        return handle

    # -- merged across backends, or through the Backend contract -------------------------
    async def server_metadata(self, request: web.Request) -> web.Response:
        service = self.service
        extensions = await self.control.extensions(service.extensions)
        return web.json_response(
            {"name": service.server_name, "version": service.version, "extensions": extensions}
        )

    async def statistics(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info.get("model", "")
        version = request.match_info.get("version", "")
        if model:
            backend = self.router.backend_name(model, _pinned(request))
            plane = self.control.plane(backend)
            if plane is not None and plane.serves_http:
                return await self._forward(plane, request)
            stats = await self.router.backends[backend].model_statistics(model, version)
            return web.json_response(statistics_to_json(stats))
        merged: list[Any] = []
        missing: list[Unimplemented] = []
        for source in self.control.sources():
            if source.plane is not None and source.plane.serves_http:
                reply = await _merged_part(source, HttpCall("GET", "/v2/models/stats"))
                if isinstance(reply, web.Response):
                    return reply
                found = reply.get("model_stats") if isinstance(reply, dict) else None
                merged += [s for s in _objects(found, source) if self._owns(source, s)]
                continue
            try:
                stats = await self.control.contract_statistics(source)
            except Unimplemented as exc:
                missing.append(exc)  # a backend without statistics adds none...
                continue
            merged += statistics_to_json(stats)["model_stats"]
        if missing and len(missing) == len(self.control.sources()):
            raise missing[0]  # ...unless no backend has any
        return web.json_response({"model_stats": merged})

    async def repository_index(self, request: web.Request) -> web.StreamResponse:
        body = bytes(await self.read_body(request, self.service))
        ready_only = _ready_only(body)
        merged: list[Any] = []
        for source in self.control.sources():
            if source.plane is not None and source.plane.serves_http:
                call = HttpCall("POST", "/v2/repository/index", body)
                reply = await _merged_part(source, call)
                if isinstance(reply, web.Response):
                    return reply
                merged += [m for m in _objects(reply, source) if self._owns(source, m)]
                continue
            names = source.routed
            ready = await asyncio.gather(*(self.router.model_ready(name) for name in names))
            merged += [
                {"name": name, "state": "READY" if ok else "UNAVAILABLE"}
                for name, ok in zip(names, ready, strict=True)
                if ok or not ready_only
            ]
        return web.json_response(merged)

    def _owns(self, source: Source, entry: dict[str, Any]) -> bool:
        name = entry.get("name")
        return isinstance(name, str) and self.control.owns(source.backend, name)

    async def _forward(self, plane: ControlPlane, request: web.Request) -> web.Response:
        body = bytes(await self.read_body(request, self.service)) if request.can_read_body else b""
        reply = await plane.http_control(HttpCall(request.method, request.raw_path, body))
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)


async def _merged_part(source: Source, call: HttpCall) -> Any:
    """A backend's JSON answer to a merged call; its error answer as a response to send on."""
    assert source.plane is not None
    reply = await source.plane.http_control(call)
    if reply.status != 200:
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)
    try:
        return json.loads(reply.body)
    except ValueError as exc:
        raise BackendError(
            f"backend {source.backend!r} answered {call.path_qs} with no JSON"
        ) from exc


def _objects(found: Any, source: Source) -> list[dict[str, Any]]:
    if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
        raise BackendError(f"backend {source.backend!r} answered in an unexpected shape")
    return found


def _ready_only(body: bytes) -> bool:
    if not body.strip():
        return False
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise InvalidArgument(f"repository index request: malformed JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidArgument("repository index request: the body must be a JSON object")
    return doc.get("ready") is True


def _pinned(request: web.Request) -> str | None:
    return request.headers.get(PIN_HEADER)

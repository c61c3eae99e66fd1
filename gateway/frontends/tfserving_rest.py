"""TensorFlow Serving's REST API on the gateway's HTTP port, for models routed anywhere.

Predict (``POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict``), model status
(``GET /v1/models/{m}[/versions/{v}|/labels/{l}]``) and metadata (``.../metadata``),
in TF Serving's JSON (``infergw.wire.tfserving_json``) and its error shape
``{"error": ...}`` with its status codes; ``:classify``/``:regress`` (tf.Example inputs)
answer 501, as the gRPC frontend's Classify/Regress do. The OIP REST app registers
these routes (``routes``) so they share its boundary, body reading and Expect handling.

A predict runs the lifecycle of an OIP REST infer (``InferenceService``: context,
validation, the routed call, metrics with protocol ``tfserving-rest``, Server-Timing on
every answer, errors mapped once). JSON tensors carry no dtype, so decoding needs the
model's inputs; they come from its metadata, kept for ``SIGNATURE_TTL_S`` so a steady
stream of requests costs one metadata call per model every few seconds, not one each
(a miss's call is timed as part of ``decode``: it is the gateway's work, not the model's).
The gateway serves one signature per model, ``serving_default``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from aiohttp import web

from infergw.gateway.core import tracing
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.router import Router
from infergw.gateway.core.service import PIN_HEADER, InferenceService
from infergw.gateway.frontends.http_call import serve_http
from infergw.gateway.frontends.tfserving import check_signature
from infergw.vocab.errors import InferGWError, InvalidArgument, NotFound, Unimplemented
from infergw.vocab.types import TensorSpec
from infergw.wire import tfserving_json as codec

PROTOCOL = "tfserving-rest"
SIGNATURE_TTL_S = 2.0  # how long a model's inputs are reused before asking again
MAX_SIGNATURES = 1024  # (model, version, pinned backend) entries kept at most
UNIMPLEMENTED_VERBS = ("classify", "regress")
# Bodies (and outputs) above this size are parsed and built in a worker thread, so the
# event loop keeps serving small calls, as the OIP REST frontend does.
_INLINE_BYTES = 1 << 20
_MODEL = "{model:[^/:]+}"  # TF Serving's own patterns: a name has no '/' or ':'
_SPECS = ("", "/versions/{version:\\d+}", "/labels/{label:[^/:]+}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadBody = Callable[[web.Request, InferenceService], Awaitable[bytes | bytearray]]
P = ParamSpec("P")
T = TypeVar("T")


class SignatureCache:
    """Each model's inputs (names and dtypes) from its metadata, for ``ttl_s`` seconds."""

    def __init__(
        self,
        router: Router,
        ttl_s: float = SIGNATURE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.router = router
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[tuple[str, str, str | None], tuple[float, tuple[TensorSpec, ...]]] = {}

    async def inputs(self, model: str, version: str, pinned: str | None) -> tuple[TensorSpec, ...]:
        key = (model, version, pinned)
        hit = self._entries.get(key)
        if hit is not None and hit[0] > self.clock():
            return hit[1]
        meta = await self.router.model_metadata(model, version, pinned)
        self._entries.pop(key, None)
        if len(self._entries) >= MAX_SIGNATURES:
            del self._entries[next(iter(self._entries))]  # the oldest entry
        self._entries[key] = (self.clock() + self.ttl_s, meta.inputs)
        return meta.inputs


class TfServingRest:
    """The handlers; ``read_body`` is the OIP REST frontend's (limits, Content-Encoding)."""

    def __init__(self, service: InferenceService, read_body: ReadBody) -> None:
        self.service = service
        self.read_body = read_body
        self.signatures = SignatureCache(service.router)

    # -- predict -------------------------------------------------------------------------
    @tracing.traces_itself
    async def predict(self, request: web.Request) -> web.StreamResponse:
        verb = request.match_info["verb"]
        if verb in UNIMPLEMENTED_VERBS:
            raise Unimplemented(f"{verb} (tf.Example inputs) is not served; use predict")
        if verb != "predict":
            raise InvalidArgument(f"Malformed request: {request.method} {request.path[:200]}")
        model, version = _model_and_version(request)

        def run(ctx: RequestContext) -> Awaitable[web.Response]:
            return self._predict(request, ctx, model, version)

        return await serve_http(
            request, self.service, PROTOCOL, "predict", model, run, error_response
        )

    async def _predict(
        self, request: web.Request, ctx: RequestContext, model: str, version: str
    ) -> web.Response:
        service = self.service
        body = await self.read_body(request, service)  # transfer: part of total, not decode
        large = len(body) > _INLINE_BYTES
        with ctx.timings.measure("decode"), tracing.phase_span("decode"):
            parsed = await _run(large, codec.parse_predict_body, body)
            del body
            check_signature(parsed.signature)
            inputs = await self.signatures.inputs(model, version, ctx.pinned_backend)
            infer_request = await _run(large, codec.predict_request, model, version, parsed, inputs)
            service.validate(infer_request)
        infer_response = await service.infer(infer_request, ctx)
        with ctx.timings.measure("encode"), tracing.phase_span("encode"):
            large = sum(len(t.data) for t in infer_response.outputs) > _INLINE_BYTES
            payload = await _run(large, codec.predict_response_json, infer_response, parsed.format)
        return web.Response(body=payload, content_type="application/json")

    # -- status and metadata -----------------------------------------------------------
    async def status(self, request: web.Request) -> web.StreamResponse:
        """The versions the backend serves, AVAILABLE; none ready is TF Serving's 404."""
        model, version = _model_and_version(request)
        router, pinned = self.service.router, request.headers.get(PIN_HEADER)
        if version:
            if not await router.model_ready(model, version, pinned):
                router.route_for(model)  # no route: the router's own 404
                raise NotFound(f"Could not find version {version} of model {model}")
            # A label's version number is the backend's to know: proto's default, "0".
            return _json(codec.status_json([version if version.isdigit() else ""]))
        meta = await router.model_metadata(model, "", pinned)
        versions = sorted((v for v in meta.versions if v.isdigit()), key=int)
        if not versions:
            if not await router.model_ready(model, "", pinned):
                raise NotFound(f"Could not find any versions of model {model}")
            versions = [""]  # the backend has no version numbers: proto's default, "0"
        return _json(codec.status_json(versions))

    async def metadata(self, request: web.Request) -> web.StreamResponse:
        model, version = _model_and_version(request)
        router = self.service.router
        meta = await router.model_metadata(model, version, request.headers.get(PIN_HEADER))
        return _json(codec.metadata_json(meta, version))


async def _missing_model(request: web.Request) -> web.StreamResponse:
    raise InvalidArgument("Missing model name in request.")


async def _malformed(request: web.Request) -> web.StreamResponse:
    """Anything else under ``/v1/models``: TF Serving's 400, not a 404."""
    raise InvalidArgument(f"Malformed request: {request.method} {request.path[:200]}")


def routes(service: InferenceService, read_body: ReadBody) -> list[tuple[str, str, Handler]]:
    """(method, path, handler) for the OIP REST app to add; the catch-all comes last."""
    api = TfServingRest(service, read_body)
    table: list[tuple[str, str, Handler]] = []
    for spec in _SPECS:
        prefix = f"/v1/models/{_MODEL}{spec}"
        table.append(("POST", prefix + ":{verb}", api.predict))
        table.append(("GET", prefix, api.status))
        table.append(("GET", prefix + "/metadata", api.metadata))
    table.append(("GET", "/v1/models", _missing_model))
    table.append(("*", "/v1/models{tail:.*}", _malformed))
    return table


# -- helpers -----------------------------------------------------------------------------
async def _run(large: bool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn`` inline, or in a worker thread when its input is large."""
    if large:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def _model_and_version(request: web.Request) -> tuple[str, str]:
    """The model, and its version: a number (checked as int64) or a label, else ""."""
    info = request.match_info
    version = info.get("version")
    if version is not None:
        return info["model"], codec.parse_version(version)
    return info["model"], info.get("label", "")


def _json(payload: bytes, status: int = 200) -> web.Response:
    return web.Response(body=payload, status=status, content_type="application/json")


def error_response(error: InferGWError) -> web.Response:
    """TF Serving's error shape with the error's status; Retry-After when it has one."""
    response = _json(codec.error_json(error.message), error.http_status)
    if error.retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    return response

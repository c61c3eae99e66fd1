"""The SageMaker inference container: ``GET /ping`` and ``POST /invocations`` on port 8080.

SageMaker starts the image as ``docker run <image> serve`` and talks to it only through
those two routes. Bodies are OIP v2 REST JSON or the binary tensor extension in
SageMaker-Triton's convention (``wire/sagemaker.py``); the example models run
in-process through ``RuntimeBackend``, preloaded at start: ``/ping`` answers 503 until
they are loaded, then 200.

The model a request is for, first match wins (``resolve_model``):
``X-Amzn-SageMaker-Target-Model`` (multi-model endpoints), the JSON header's
``model_name`` (serverless endpoints; what the ``sagemaker`` backend sends),
``$SAGEMAKER_TRITON_DEFAULT_MODEL_NAME``, else the only model served.

What the container measured (``compute``; ``coldstart`` on the first request after
start) leaves in ``X-Amzn-SageMaker-Custom-Attributes: server-timing=<W3C value>``,
which InvokeEndpoint passes back to the caller. Errors are OIP's ``{"error": ...}``
with the error's status (400 bad input, 404 unknown model, 500 model failure).

Run locally::

    python -m infergw.deploy.sagemaker.serve --port 0 --host 127.0.0.1 --ready-line

``--ready-line`` (or ``INFERGW_READY_LINE=1``) prints ``READY <port>`` once the port
is bound and the models are loaded, which is what ``InstancePool`` waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from infergw.backends.runtime import RuntimeBackend
from infergw.gateway.core.context import RequestContext
from infergw.gateway.sites import AppSite
from infergw.vocab.datatypes import validate_tensor
from infergw.vocab.errors import InferGWError, InvalidArgument, PayloadTooLarge
from infergw.vocab.types import InferRequest
from infergw.wire import sagemaker as wire
from infergw.wire.oip_json import decode_infer_request, encode_infer_response

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
MAX_BODY_BYTES = 64 << 20  # the service in front enforces its own, smaller limit
BACKEND = web.AppKey("backend", RuntimeBackend)
LOADED = web.AppKey("loaded", asyncio.Event)


def create_app(backend: RuntimeBackend) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[BACKEND] = backend
    app[LOADED] = asyncio.Event()
    app.router.add_get("/ping", _ping)
    app.router.add_post("/invocations", _invocations)
    return app


async def _ping(request: web.Request) -> web.Response:
    if request.app[LOADED].is_set():
        return web.Response(text="")
    return web.json_response({"error": "models are loading"}, status=503)


async def _invocations(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    if not request.app[LOADED].is_set():
        return web.json_response({"error": "models are loading"}, status=503)
    ctx = RequestContext(protocol="sagemaker")
    try:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise PayloadTooLarge("request body", None, MAX_BODY_BYTES) from exc
        infer_request = _decode(request, body, backend)
        response = await backend.infer(infer_request, ctx)
        payload, header_length = encode_infer_response(response, infer_request)
    except InferGWError as exc:
        return web.json_response({"error": exc.message}, status=exc.http_status)
    except Exception:
        log.exception("unexpected error in /invocations")
        return web.json_response({"error": "internal error"}, status=500)
    reply = web.Response(body=payload, content_type=None)
    reply.headers["Content-Type"] = wire.content_type(header_length)
    timing = wire.format_timing_attribute(list(ctx.timings.entries))
    if timing:
        reply.headers[wire.CUSTOM_ATTRIBUTES] = timing
    return reply


def _decode(request: web.Request, body: bytes, backend: RuntimeBackend) -> InferRequest:
    header_length = wire.header_length(request.headers.get("Content-Type"), len(body))
    head = body if header_length is None else body[:header_length]
    model = resolve_model(request.headers.get(wire.TARGET_MODEL), head, backend.allowed)
    infer_request = decode_infer_request(model, "", body, header_length)
    if not infer_request.inputs:
        raise InvalidArgument("request has no inputs")
    names = [t.name for t in infer_request.inputs]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"inputs named more than once: {sorted(names)}")
    for tensor in infer_request.inputs:
        validate_tensor(tensor)  # binary BYTES element counts are checked only here
    return infer_request


def resolve_model(target_model: str | None, head: bytes, served: Sequence[str]) -> str:
    """Which model a request is for (order in the module docstring)."""
    model = (
        target_model
        or wire.model_in_body(head)
        or os.environ.get(wire.DEFAULT_MODEL_ENV)
        or (served[0] if len(served) == 1 else None)
    )
    if not model:
        raise InvalidArgument(
            f"no model named: set '{wire.MODEL_FIELD}' in the JSON header "
            f"(this container serves {list(served)})"
        )
    return model


# -- process -----------------------------------------------------------------------


async def serve(host: str, port: int, models: Sequence[str] | None, ready_line: bool) -> None:
    """Bind, load the models, say READY, and serve until SIGTERM/SIGINT."""
    backend = RuntimeBackend("sagemaker-container", models)
    app = create_app(backend)
    site = AppSite(app, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await site.start()
        await asyncio.to_thread(backend.preload)
        app[LOADED].set()
        log.info("serving %s on %s:%d", list(backend.allowed), host, site.port)
        if ready_line:
            print(f"READY {site.port}", flush=True)
        await stop.wait()
    finally:
        await site.stop()
        await backend.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", nargs="?", choices=["serve"], help="SageMaker passes 'serve'")
    parser.add_argument("--host", default=os.environ.get("INFERGW_HOST", "0.0.0.0"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT))
    )
    parser.add_argument(
        "--models",
        default=os.environ.get("INFERGW_MODELS", ""),
        help="comma-separated model names to serve (default: all example models)",
    )
    parser.add_argument(
        "--ready-line",
        action="store_true",
        default=os.environ.get("INFERGW_READY_LINE", "") not in ("", "0"),
        help="print 'READY <port>' on stdout once listening with models loaded",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    models = [m for m in args.models.split(",") if m] or None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, models, args.ready_line))


if __name__ == "__main__":
    main()

"""A local SageMaker Serverless Inference: the real InvokeEndpoint wire API in front of
our real container (``infergw.deploy.sagemaker.serve``) running in worker processes.

``POST /endpoints/{EndpointName}/invocations`` behaves as SageMaker Runtime does, so
botocore/aiobotocore clients (our ``sagemaker`` backend included) talk to it unchanged
with ``endpoint_url`` pointing here:

- the request must carry a SigV4 ``Authorization`` header (shape and credential scope
  are checked; the HMAC is not, as there are no real secrets here), else 403
  ``MissingAuthenticationTokenException`` / ``IncompleteSignatureException``;
- unknown endpoint: 400 ``ValidationError`` "Endpoint X of account Y not found.";
- body over the serverless limit of 4 MB (4,194,304 bytes): 400 ``ValidationError``
  "Request <id> has oversize body." (what serverless endpoints answer);
- concurrency: one request per instance, at most ``max_concurrency`` instances
  (ServerlessConfig.MaxConcurrency); more at once: 400 ``ThrottlingException``;
- the container gets 60 s (``invocation_timeout_s``), then 424 ``ModelError`` "Your
  invocation timed out ..."; a container 4xx/5xx or a dropped connection is 424
  ``ModelError`` with ``OriginalStatusCode``/``OriginalMessage`` as SageMaker sends;
- on success: the container's body, ``Content-Type`` and
  ``X-Amzn-SageMaker-Custom-Attributes``, plus ``X-Amzn-Invoked-Production-Variant``.

Instances are real processes (``InstancePool``): the first request after scale to
zero waits for a real process start and model load. Idle instances stop after
``idle_timeout_s``; ``POST /_infergw/endpoints/{name}/scale-to-zero`` (stand-in
only) stops the idle ones now. Errors carry ``x-amzn-ErrorType`` and a JSON
``message``/``Message`` so botocore raises the service's error codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from infergw.deploy import sagemaker as sagemaker_deploy
from infergw.deploy.local.instances import (
    Instance,
    InstancePool,
    InstanceStartError,
    Throttled,
)
from infergw.gateway.lifecycle import AsyncService
from infergw.gateway.sites import AppSite
from infergw.wire import sagemaker as wire

SERVERLESS_MAX_PAYLOAD = 4 * 1024 * 1024  # 4 MB, InvokeEndpoint on serverless endpoints
INVOCATION_TIMEOUT_S = 60.0  # the container must answer within 60 s
ACCOUNT = "123456789012"
REGION = "us-east-1"
ADMIN_PREFIX = "/_infergw"
ENDPOINT_CONFIG = Path(sagemaker_deploy.__file__).with_name("endpoint-config.json")
FORWARDED = ("Content-Type", "Accept", wire.CUSTOM_ATTRIBUTES, wire.TARGET_MODEL)
_SIGV4 = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=[^/\s]+/\d{8}/[a-z0-9-]+/sagemaker/aws4_request,\s*"
    r"SignedHeaders=[^,\s]+,\s*Signature=[0-9a-f]{64}$"
)


@dataclass(frozen=True)
class ServerlessEndpoint:
    """One endpoint and its ServerlessConfig (as in CreateEndpointConfig)."""

    name: str
    models: tuple[str, ...] = ()  # what the container serves (empty: all example models)
    max_concurrency: int = 20  # MaxConcurrency, 1-200
    memory_mb: int = 6144  # MemorySizeInMB, 1024-6144 in 1 GB steps (not enforced locally)
    idle_timeout_s: float = 300.0  # scale to zero after this long without requests
    invocation_timeout_s: float = INVOCATION_TIMEOUT_S
    variant: str = "AllTraffic"

    @classmethod
    def from_endpoint_config(
        cls, name: str, config: Mapping[str, Any], **overrides: Any
    ) -> ServerlessEndpoint:
        """From a CreateEndpointConfig document, e.g. ``deploy/sagemaker/endpoint-config.json``."""
        variant = config["ProductionVariants"][0]
        serverless = variant["ServerlessConfig"]
        settings: dict[str, Any] = {
            "max_concurrency": int(serverless["MaxConcurrency"]),
            "memory_mb": int(serverless["MemorySizeInMB"]),
            "variant": str(variant.get("VariantName", "AllTraffic")),
        }
        return cls(name, **{**settings, **overrides})

    def __post_init__(self) -> None:
        if not 1 <= self.max_concurrency <= 200:
            raise ValueError(f"{self.name}: MaxConcurrency must be 1-200")
        if self.memory_mb not in range(1024, 6145, 1024):
            raise ValueError(f"{self.name}: MemorySizeInMB must be 1024-6144 in 1024 steps")


class SageMakerStandIn(AsyncService):
    def __init__(
        self,
        endpoints: Iterable[ServerlessEndpoint],
        host: str = "127.0.0.1",
        port: int = 0,
        max_payload_bytes: int = SERVERLESS_MAX_PAYLOAD,
        account: str = ACCOUNT,
        region: str = REGION,
    ) -> None:
        self.endpoints = {e.name: e for e in endpoints}
        self.host = host
        self.port = port
        self.max_payload_bytes = max_payload_bytes
        self.account = account
        self.region = region
        self.pools: dict[str, InstancePool] = {}
        self._site: AppSite | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def endpoint(self) -> str:
        """The ``endpoint_url`` for botocore clients."""
        return f"http://{self.host}:{self.port}"

    def scale_to_zero_url(self, endpoint_name: str) -> str:
        """The admin route that stops the endpoint's idle instances (stand-in only)."""
        return f"{self.endpoint}{ADMIN_PREFIX}/endpoints/{endpoint_name}/scale-to-zero"

    async def start(self) -> None:
        try:
            for spec in self.endpoints.values():
                pool = InstancePool(
                    f"sagemaker:{spec.name}",
                    container_command(spec.models),
                    concurrency=1,
                    max_instances=spec.max_concurrency,
                    idle_timeout_s=spec.idle_timeout_s,
                )
                self.pools[spec.name] = pool
                await pool.start()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
            )
            app = web.Application(client_max_size=self.max_payload_bytes)
            app.router.add_post("/endpoints/{name}/invocations", self._invoke)
            app.router.add_post(ADMIN_PREFIX + "/endpoints/{name}/scale-to-zero", self._to_zero)
            app.router.add_get(ADMIN_PREFIX + "/endpoints", self._stats)
            self._site = AppSite(app, self.host, self.port)
            await self._site.start()
            self.port = self._site.port
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None
        pools, self.pools = list(self.pools.values()), {}
        await asyncio.gather(*(p.close() for p in pools))
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- InvokeEndpoint ------------------------------------------------------------------

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        denied = _check_sigv4(request.headers.get("Authorization"))
        if denied is not None:
            return _aws_error(403, denied[0], denied[1], request_id, key="message")
        name = request.match_info["name"]
        spec = self.endpoints.get(name)
        if spec is None:
            text = f"Endpoint {name} of account {self.account} not found."
            return _aws_error(400, "ValidationError", text, request_id)
        size = request.content_length
        if size is not None and size > self.max_payload_bytes:
            return _oversize(request_id)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _oversize(request_id)
        try:
            async with self.pools[name].lease() as lease:
                return await self._forward(spec, lease.instance, request, body, request_id)
        except Throttled:
            # What serverless endpoints answer over MaxConcurrency: no message at all.
            return _aws_error(400, "ThrottlingException", None, request_id, key="message")
        except InstanceStartError as exc:
            return _aws_error(503, "ServiceUnavailable", str(exc), request_id, key="message")

    async def _forward(
        self,
        spec: ServerlessEndpoint,
        instance: Instance,
        request: web.Request,
        body: bytes,
        request_id: str,
    ) -> web.Response:
        assert self._session is not None
        headers = {h: request.headers[h] for h in FORWARDED if h in request.headers}
        timeout = aiohttp.ClientTimeout(total=spec.invocation_timeout_s)
        url = f"http://127.0.0.1:{instance.port}/invocations"
        try:
            async with self._session.post(url, data=body, headers=headers, timeout=timeout) as r:
                payload = await r.read()
                if r.status >= 400:
                    return self._model_error(spec, request_id, r.status, payload)
                reply = web.Response(body=payload, status=200, content_type=None)
                reply.headers["Content-Type"] = r.headers.get("Content-Type", "application/json")
                attributes = r.headers.get(wire.CUSTOM_ATTRIBUTES)
                if attributes:
                    reply.headers[wire.CUSTOM_ATTRIBUTES] = attributes
        except TimeoutError:
            text = (
                "Your invocation timed out while waiting for a response from container "
                "primary. Review the latency metrics for each container in Amazon CloudWatch, "
                "resolve the issue, and try again."
            )
            return _aws_error(424, "ModelError", text, request_id)
        except aiohttp.ClientError as exc:
            await _retire(instance)  # SageMaker replaces a container that drops requests
            reason = f"the model container closed the connection ({type(exc).__name__})"
            return self._model_error(spec, request_id, None, reason.encode())
        reply.headers["X-Amzn-Invoked-Production-Variant"] = spec.variant
        reply.headers["x-amzn-RequestId"] = request_id
        return reply

    def _model_error(
        self, spec: ServerlessEndpoint, request_id: str, status: int | None, payload: bytes
    ) -> web.Response:
        original = payload[:4096].decode("utf-8", "replace")
        kind = "server" if status is None or status >= 500 else "client"
        code = "" if status is None else f" ({status})"
        group = f"/aws/sagemaker/Endpoints/{spec.name}"
        text = (
            f'Received {kind} error{code} from primary with message "{original}". See '
            f"https://{self.region}.console.aws.amazon.com/cloudwatch/home?region="
            f"{self.region}#logEventViewer:group={group} in account {self.account} "
            "for more information."
        )
        extra: dict[str, Any] = {
            "OriginalMessage": original,
            "LogStreamArn": f"arn:aws:logs:{self.region}:{self.account}:log-group:{group}",
        }
        if status is not None:
            extra["OriginalStatusCode"] = status
        return _aws_error(424, "ModelError", text, request_id, extra=extra)

    # -- stand-in only -------------------------------------------------------------------

    async def _to_zero(self, request: web.Request) -> web.Response:
        pool = self.pools.get(request.match_info["name"])
        if pool is None:
            return web.json_response({"error": "no such endpoint"}, status=404)
        return web.json_response({"stopped": await pool.scale_to_zero()})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({name: pool.stats() for name, pool in self.pools.items()})


def container_command(models: Sequence[str] = ()) -> list[str]:
    """How an instance starts: our container entry point, bound to a free loopback port."""
    command = [sys.executable, "-m", "infergw.deploy.sagemaker.serve", "serve"]
    command += ["--host", "127.0.0.1", "--port", "0", "--ready-line"]
    if models:
        command += ["--models", ",".join(models)]
    return command


async def _retire(instance: Instance) -> None:
    """Kill a broken instance so the pool drops it and the next request gets a fresh one."""
    with contextlib.suppress(ProcessLookupError):
        instance.process.kill()
    await instance.process.wait()


def _check_sigv4(authorization: str | None) -> tuple[str, str] | None:
    """(error code, message) if the request is not SigV4-signed for SageMaker, else None."""
    if not authorization:
        return "MissingAuthenticationTokenException", "Missing Authentication Token"
    if not _SIGV4.match(authorization.strip()):
        return (
            "IncompleteSignatureException",
            "Authorization header requires a SigV4 'Credential' scoped to the "
            "'sagemaker' service, 'SignedHeaders' and 'Signature'.",
        )
    return None


def _oversize(request_id: str) -> web.Response:
    return _aws_error(
        400, "ValidationError", f"Request {request_id} has oversize body.", request_id
    )


def _aws_error(
    status: int,
    code: str,
    message: str | None,
    request_id: str,
    key: str = "Message",
    extra: dict[str, Any] | None = None,
) -> web.Response:
    """An error as AWS REST-JSON services send it; botocore reads the code from the header."""
    body = json.dumps({key: message, **(extra or {})})
    response = web.Response(status=status, text=body, content_type="application/json")
    response.headers["x-amzn-ErrorType"] = code
    response.headers["x-amzn-RequestId"] = request_id
    return response


async def run_forever(endpoints: Sequence[ServerlessEndpoint], port: int = 0) -> None:
    """Serve until cancelled (``python -m infergw.deploy.local.sagemaker_standin``)."""
    async with SageMakerStandIn(endpoints, port=port) as standin:
        print(f"sagemaker stand-in on {standin.endpoint}", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


if __name__ == "__main__":
    config = json.loads(ENDPOINT_CONFIG.read_text())
    names = sys.argv[1:] or ["infergw"]
    endpoints = [ServerlessEndpoint.from_endpoint_config(n, config) for n in names]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_forever(endpoints, port=8085))

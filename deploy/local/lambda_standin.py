"""A local AWS Lambda: the real Invoke API in front of real execution environments.

``POST /2015-03-31/functions/{name}/invocations`` behaves like Lambda's for
``RequestResponse`` invokes, so aiobotocore (and the AWS CLI) talk to it unchanged:

- unsigned requests (no ``AWS4-HMAC-SHA256`` Authorization) -> 403 Missing
  Authentication Token. The signature itself is not verified (the stand-in has no
  secret to check it against); only that the caller signed.
- unknown function -> 404 ResourceNotFoundException; body over 6,291,456 bytes ->
  413 RequestEntityTooLargeException; all environments busy (reserved concurrency)
  -> 429 TooManyRequestsException.
- each function has an ``InstancePool`` of ``lambda_worker`` processes, one
  invocation per environment at a time. A cold invoke pays a real process start
  plus the handler's Init (model load), reported as ``Init Duration``.
- handler errors, timeouts, crashed environments and oversized responses -> 200
  with ``X-Amz-Function-Error: Unhandled`` and Lambda's error JSON.
- ``X-Amz-Log-Type: Tail`` -> ``X-Amz-Log-Result``: base64 of the last 4 KB of the
  log, ending with the REPORT line in AWS's format.

Stand-in only (not an AWS API): ``POST /_infergw/functions/{name}/scale-to-zero``
stops the function's idle environments so the next invoke is cold, and
``GET /_infergw/functions/{name}`` returns its pool statistics.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from infergw.deploy.local.instances import InstancePool, InstanceStartError, Throttled
from infergw.gateway.lifecycle import AsyncService
from infergw.gateway.sites import AppSite

log = logging.getLogger(__name__)

INVOKE_LIMIT_BYTES = 6_291_456  # synchronous request and response payloads
RESPONSE_LIMIT_BYTES = 6_291_456
LOG_TAIL_BYTES = 4096
TIMEOUT_GRACE_S = 5.0  # the worker enforces the timeout; this catches a wedged worker
DEFAULT_HANDLER = "infergw.deploy.lambda.handler.handler"
ACCOUNT = "123456789012"


@dataclass(frozen=True)
class FunctionConfig:
    name: str
    handler: str = DEFAULT_HANDLER
    memory_mb: int = 1024
    timeout_s: float = 60.0
    reserved_concurrency: int = 10  # max environments, each serving one invoke at a time
    idle_timeout_s: float = 300.0
    env: Mapping[str, str] = field(default_factory=dict)


def report_line(
    request_id: str,
    duration_ms: float,
    memory_mb: int,
    max_memory_mb: int,
    init_ms: float | None = None,
) -> str:
    """AWS's REPORT line; Billed Duration includes Init (billed since Aug 2025), rounded up."""
    billed = math.ceil(duration_ms + (init_ms or 0.0))
    line = (
        f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
        f"Billed Duration: {billed} ms\tMemory Size: {memory_mb} MB\t"
        f"Max Memory Used: {max_memory_mb} MB\t"
    )
    if init_ms is not None:
        line += f"Init Duration: {init_ms:.2f} ms\t"
    return line


def _aws_error(status: int, error_type: str, message: str, **extra: str) -> web.Response:
    body = {"Type": "User", "message": message, **extra}
    return web.json_response(body, status=status, headers={"x-amzn-ErrorType": error_type})


def _function_name(path_name: str) -> tuple[str, str]:
    """Name or ARN (optionally with ``:qualifier``) -> (name, qualifier)."""
    if path_name.startswith("arn:"):
        path_name = path_name.split(":function:", 1)[-1]
    name, _, qualifier = path_name.partition(":")
    return name, qualifier


@dataclass(frozen=True)
class WorkerReply:
    payload: bytes
    failed: bool
    duration_ms: float
    max_memory_mb: int
    logs: str
    ended: bool  # the environment is gone (crashed, timed out, failed Init)


async def _end(process: asyncio.subprocess.Process) -> None:
    """Wait briefly for an environment that is exiting by itself, else kill it."""
    try:
        async with asyncio.timeout(TIMEOUT_GRACE_S):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


class LambdaStandIn(AsyncService):
    def __init__(
        self,
        functions: Sequence[FunctionConfig],
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us-east-1",
    ) -> None:
        self.functions = {f.name: f for f in functions}
        self.host, self.port, self.region = host, port, region
        self.pools: dict[str, InstancePool] = {}
        self._site: AppSite | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def scale_to_zero_url(self, function: str) -> str:
        """The admin route that stops ``function``'s idle environments (stand-in only)."""
        return scale_to_zero_url(self.endpoint, function)

    def _arn(self, name: str) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{name}"

    async def start(self) -> None:
        try:
            for f in self.functions.values():
                self.pools[f.name] = self._pool(f)
                await self.pools[f.name].start()
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
            app = web.Application(client_max_size=4 * INVOKE_LIMIT_BYTES)
            app.router.add_post("/2015-03-31/functions/{name}/invocations", self._invoke)
            app.router.add_post("/_infergw/functions/{name}/scale-to-zero", self._scale_to_zero)
            app.router.add_get("/_infergw/functions/{name}", self._stats)
            self._site = AppSite(app, self.host, self.port)
            await self._site.start()
            self.port = self._site.port
        except BaseException:
            await self.stop()
            raise

    def _pool(self, f: FunctionConfig) -> InstancePool:
        env = {
            "AWS_LAMBDA_FUNCTION_NAME": f.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(f.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_REGION": self.region,
            "INFERGW_LAMBDA_TIMEOUT_S": str(f.timeout_s),
            **f.env,
        }
        command = [sys.executable, "-m", "infergw.deploy.local.lambda_worker"]
        return InstancePool(
            f"lambda:{f.name}",
            [*command, "--handler", f.handler],
            env,
            concurrency=1,
            max_instances=f.reserved_concurrency,
            idle_timeout_s=f.idle_timeout_s,
        )

    async def stop(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            await pool.close()

    def _lookup(self, request: web.Request) -> FunctionConfig | web.Response:
        name, qualifier = _function_name(request.match_info["name"])
        qualifier = request.query.get("Qualifier", qualifier)
        f = self.functions.get(name)
        if f is None or qualifier not in ("", "$LATEST"):
            label = self._arn(name) + (f":{qualifier}" if qualifier else "")
            return _aws_error(404, "ResourceNotFoundException", f"Function not found: {label}")
        return f

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 Credential="):
            return web.json_response(
                {"message": "Missing Authentication Token"},
                status=403,
                headers={"x-amzn-ErrorType": "MissingAuthenticationTokenException"},
            )
        f = self._lookup(request)
        if isinstance(f, web.Response):
            return f
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type != "RequestResponse":
            return _aws_error(
                400,
                "InvalidParameterValueException",
                f"the local stand-in supports InvocationType RequestResponse only, "
                f"not {invocation_type}",
            )
        if (request.content_length or 0) > INVOKE_LIMIT_BYTES:
            return self._too_large()
        body = await request.read()
        if len(body) > INVOKE_LIMIT_BYTES:
            return self._too_large()
        try:
            json.loads(body or b"{}")
        except ValueError as exc:
            return _aws_error(
                400,
                "InvalidRequestContentException",
                f"Could not parse request body into json: {exc.__class__.__name__}",
            )
        try:
            return await self._run(f, body or b"{}", request.headers.get("X-Amz-Log-Type"))
        except Throttled:
            return _aws_error(
                429,
                "TooManyRequestsException",
                "Rate Exceeded.",
                Reason="ReservedFunctionConcurrentInvocationLimitExceeded",
            )

    def _too_large(self) -> web.Response:
        return _aws_error(
            413,
            "RequestEntityTooLargeException",
            f"Request must be smaller than {INVOKE_LIMIT_BYTES} bytes for the InvokeFunction "
            "operation",
        )

    async def _run(self, f: FunctionConfig, body: bytes, log_type: str | None) -> web.Response:
        request_id = str(uuid.uuid4())
        try:
            async with self.pools[f.name].lease() as lease:
                reply = await self._call_worker(f, lease.instance.port, request_id, body)
                if reply.ended:  # destroyed: make sure the pool never hands it out again
                    await _end(lease.instance.process)
        except InstanceStartError as exc:
            error = {"errorMessage": str(exc), "errorType": "Runtime.ExitError"}
            return self._reply(f, request_id, json.dumps(error).encode(), True, 0.0, 0, "", None)
        payload, failed = reply.payload, reply.failed
        if not failed and len(payload) > RESPONSE_LIMIT_BYTES:
            failed = True
            payload = json.dumps(
                {
                    "errorMessage": "Response payload size exceeded maximum allowed payload "
                    f"size ({RESPONSE_LIMIT_BYTES} bytes).",
                    "errorType": "Function.ResponseSizeTooLarge",
                }
            ).encode()
        init_ms = lease.init_ms if lease.cold else None
        tail = reply.logs if log_type == "Tail" else None
        return self._reply(
            f, request_id, payload, failed, reply.duration_ms, reply.max_memory_mb, tail, init_ms
        )

    async def _call_worker(
        self, f: FunctionConfig, port: int, request_id: str, body: bytes
    ) -> WorkerReply:
        assert self._session is not None
        t0 = time.perf_counter()
        try:
            async with self._session.post(
                f"http://127.0.0.1:{port}/invoke",
                data=body,
                headers={"X-Request-Id": request_id, "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=f.timeout_s + TIMEOUT_GRACE_S),
            ) as resp:
                payload = await resp.read()
                h = resp.headers
                return WorkerReply(
                    payload,
                    failed=h.get("X-Function-Error") is not None,
                    duration_ms=float(h.get("X-Duration-Ms", "0")),
                    max_memory_mb=int(h.get("X-Max-Memory-Mb", "0")),
                    logs=base64.b64decode(h.get("X-Log-B64", "")).decode(errors="replace"),
                    ended=h.get("X-Environment-Ended") is not None,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = "signal: killed" if not isinstance(exc, TimeoutError) else "timed out"
            error = {
                "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: "
                f"{detail}",
                "errorType": "Runtime.ExitError",
            }
            log.warning("lambda %s: environment lost during invoke (%s)", f.name, detail)
            duration = (time.perf_counter() - t0) * 1000.0
            return WorkerReply(json.dumps(error).encode(), True, duration, 0, "", ended=True)

    def _reply(
        self,
        f: FunctionConfig,
        request_id: str,
        payload: bytes,
        failed: bool,
        duration_ms: float,
        max_memory_mb: int,
        logs: str | None,
        init_ms: float | None,
    ) -> web.Response:
        headers = {"X-Amz-Executed-Version": "$LATEST", "X-Amz-Request-Id": request_id}
        if failed:
            headers["X-Amz-Function-Error"] = "Unhandled"
        if logs is not None:
            text = (
                f"START RequestId: {request_id} Version: $LATEST\n{logs}"
                f"END RequestId: {request_id}\n"
                + report_line(request_id, duration_ms, f.memory_mb, max_memory_mb, init_ms)
                + "\n"
            )
            tail = text.encode()[-LOG_TAIL_BYTES:]
            headers["X-Amz-Log-Result"] = base64.b64encode(tail).decode()
        return web.Response(
            body=payload, status=200, headers=headers, content_type="application/json"
        )

    async def _scale_to_zero(self, request: web.Request) -> web.Response:
        f = self._lookup(request)
        if isinstance(f, web.Response):
            return f
        stopped = await self.pools[f.name].scale_to_zero()
        return web.json_response({"function": f.name, "stopped": stopped})

    async def _stats(self, request: web.Request) -> web.Response:
        f = self._lookup(request)
        if isinstance(f, web.Response):
            return f
        return web.json_response({"function": f.name, **self.pools[f.name].stats()})


def scale_to_zero_url(endpoint: str, function: str) -> str:
    return f"{endpoint}/_infergw/functions/{function}/scale-to-zero"


def functions_from_config(items: Mapping[str, Mapping[str, Any]]) -> list[FunctionConfig]:
    """``{name: {handler, memory_mb, timeout_s, reserved_concurrency, ...}}`` -> configs."""
    return [FunctionConfig(name=name, **dict(opts)) for name, opts in items.items()]

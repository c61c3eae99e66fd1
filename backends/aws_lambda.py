"""AWS Lambda through the real Invoke API (aiobotocore: SigV4, RequestResponse, LogType=Tail).

The event is the OIP-shaped JSON our handler (``deploy/lambda/handler.py``) reads.
What Lambda reports is turned into the timing vocabulary: the REPORT line in the
log tail gives ``compute`` (Duration) and ``coldstart`` (Init Duration, cold invokes
only); Billed Duration and memory go into the response parameters for cost. When
the event would exceed the 6 MB synchronous limit, inputs travel through S3
(``offload``); outputs the function put in S3 are fetched and deleted, and no
object of the request survives it, whatever ends it: ``_s3_offload`` cleans up in
a tracked task, after the function returns, so a cancelled request answers at once.

Config (credentials come from the standard AWS chain, never from here)::

    backends:
      lambda:
        kind: lambda
        function_name: infergw-models        # or functions: {minilm: fn-a, yolo: fn-b}
        region: us-east-1
        endpoint_url: http://127.0.0.1:9001  # the local stand-in; absent = real AWS
        s3_bucket: my-offload-bucket         # enables offload; absent = 413 on big events
        s3_prefix: infergw/
        s3_endpoint_url: http://127.0.0.1:9002
        offload_threshold_bytes: 6225920     # default: 6 MB minus 64 KiB headroom
        read_timeout_s: 900                  # the invoke's; a function may run 15 min
        s3_connect_timeout_s: 5              # S3 connect/read timeouts: a hung S3 fails fast
        s3_read_timeout_s: 30                #   (offload I/O also stays inside the deadline)
        s3_sweep_interval_s: 600             # orphan sweep (crashes); 0 = off
        s3_orphan_age_s: 3600                # older request objects under s3_prefix go
        retry: {max_retries: 3, base_ms: 50, max_ms: 2000}   # the Retry policy, not this module

A throttled invoke (429 ``TooManyRequestsException``) is ``Throttled``, tried once
here: retrying it with backoff is the ``Retry`` policy's job (``retry:`` above).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infergw.backends._s3_offload import (
    DEFAULT_ORPHAN_AGE_S,
    DEFAULT_SWEEP_INTERVAL_S,
    Offload,
    OffloadSession,
)
from infergw.gateway.core.backend import BackendBase
from infergw.gateway.core.context import RequestContext
from infergw.vocab.errors import (
    BackendError,
    DeadlineExceeded,
    InferGWError,
    InvalidArgument,
    ModelNotFound,
    PayloadTooLarge,
    Throttled,
    Unavailable,
)
from infergw.vocab.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    Tensor,
)
from infergw.wire import lambda_event

INVOKE_LIMIT_BYTES = 6_291_456
DEFAULT_THRESHOLD = INVOKE_LIMIT_BYTES - 64 * 1024
METADATA_TIMEOUT_S = 120.0
OPTIONS = frozenset(
    {
        "function_name",
        "functions",
        "region",
        "endpoint_url",
        "s3_bucket",
        "s3_prefix",
        "s3_endpoint_url",
        "offload_threshold_bytes",
        "read_timeout_s",
        "s3_connect_timeout_s",
        "s3_read_timeout_s",
        "s3_sweep_interval_s",
        "s3_orphan_age_s",
    }
)


@dataclass(frozen=True, slots=True)
class LambdaReport:
    request_id: str
    duration_ms: float
    billed_ms: float
    memory_mb: int
    max_memory_mb: int
    init_ms: float | None = None


_REPORT_FIELD = re.compile(r"^\s*([A-Za-z ]+):\s*(\S+)")


def parse_report(log: str) -> LambdaReport | None:
    """The last REPORT line of a Lambda log tail (tab-separated ``Key: value unit``)."""
    lines = [ln for ln in log.splitlines() if ln.startswith("REPORT RequestId:")]
    if not lines:
        return None
    fields: dict[str, str] = {}
    for part in lines[-1][len("REPORT ") :].split("\t"):
        m = _REPORT_FIELD.match(part)
        if m:
            fields[m.group(1).strip()] = m.group(2)
    try:
        return LambdaReport(
            request_id=fields["RequestId"],
            duration_ms=float(fields["Duration"]),
            billed_ms=float(fields["Billed Duration"]),
            memory_mb=int(fields["Memory Size"]),
            max_memory_mb=int(fields["Max Memory Used"]),
            init_ms=float(fields["Init Duration"]) if "Init Duration" in fields else None,
        )
    except (KeyError, ValueError):
        return None


def map_aws_error(exc: BaseException, backend: str) -> InferGWError:
    """botocore/aiohttp/timeouts -> the gateway's tree. The one place this happens."""
    from botocore import exceptions as bx

    where = f"backend {backend!r}"
    if isinstance(exc, TimeoutError | bx.ReadTimeoutError):
        return DeadlineExceeded(f"{where}: AWS did not answer within the deadline")
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return Unavailable(f"{where}: no AWS credentials found in the standard chain")
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        op = exc.operation_name
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "TooManyRequestsException" or status == 429:
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            try:
                hint = max(0.0, float(headers["retry-after"])) if "retry-after" in headers else None
            except ValueError:
                hint = None
            return Throttled(f"{where}: Lambda throttled the invoke ({message})", hint)
        if code == "RequestEntityTooLargeException" or status == 413:
            return PayloadTooLarge(f"{where}: Lambda invoke payload", None, INVOKE_LIMIT_BYTES)
        if status >= 500 or status in (401, 403, 404) or code == "NoSuchBucket":
            # 403/404: credentials, permissions or the function/bucket name: config, not request
            return Unavailable(f"{where}: {op} failed: {code}: {message}")
        return BackendError(f"{where}: {op} failed: {code}: {message}")
    if isinstance(exc, bx.BotoCoreError | OSError) or type(exc).__module__.startswith("aiohttp"):
        return Unavailable(f"{where}: cannot reach AWS: {exc}")
    return BackendError(f"{where}: unexpected {type(exc).__name__}")


class LambdaBackend(BackendBase):
    native_deadline = True  # infer runs inside asyncio.timeout(ctx.remaining()), S3 included
    scales_to_zero = True

    def __init__(
        self,
        name: str,
        *,
        function_name: str | None = None,
        functions: Mapping[str, str] | None = None,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        s3_bucket: str | None = None,
        s3_prefix: str = "infergw/",
        s3_endpoint_url: str | None = None,
        offload_threshold_bytes: int = DEFAULT_THRESHOLD,
        read_timeout_s: float = 900.0,
        s3_connect_timeout_s: float = 5.0,
        s3_read_timeout_s: float = 30.0,
        s3_sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S,
        s3_orphan_age_s: float = DEFAULT_ORPHAN_AGE_S,
    ) -> None:
        self.name = name
        self.function_name = function_name
        self.functions = dict(functions or {})
        self.region = region
        self.endpoint_url = endpoint_url
        self.s3_bucket = s3_bucket
        self.s3_prefix = s3_prefix
        self.s3_endpoint_url = s3_endpoint_url
        self.offload_threshold = offload_threshold_bytes
        self.read_timeout_s = read_timeout_s
        self.s3_timeouts = (s3_connect_timeout_s, s3_read_timeout_s)
        self._offload = (
            None
            if not s3_bucket
            else Offload(
                lambda: self._client("s3"),
                s3_bucket,
                s3_prefix,
                sweep_interval_s=s3_sweep_interval_s,
                orphan_age_s=s3_orphan_age_s,
            )
        )
        self._clients: dict[str, Any] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock: asyncio.Lock | None = None

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> LambdaBackend:
        unknown = set(options) - OPTIONS
        if unknown:
            raise InvalidArgument(f"backend {name!r}: unknown options {sorted(unknown)}")
        if not options.get("function_name") and not options.get("functions"):
            raise InvalidArgument(f"backend {name!r}: 'function_name' or 'functions' is required")
        if "functions" in options and not isinstance(options["functions"], Mapping):
            raise InvalidArgument(f"backend {name!r}: 'functions' maps model -> function name")
        prefix = str(options.get("s3_prefix", "infergw/"))
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(
            name,
            function_name=options.get("function_name"),
            functions=options.get("functions"),
            region=str(options.get("region", "us-east-1")),
            endpoint_url=options.get("endpoint_url"),
            s3_bucket=options.get("s3_bucket"),
            s3_prefix=prefix,
            s3_endpoint_url=options.get("s3_endpoint_url"),
            offload_threshold_bytes=int(options.get("offload_threshold_bytes", DEFAULT_THRESHOLD)),
            read_timeout_s=float(options.get("read_timeout_s", 900.0)),
            s3_connect_timeout_s=float(options.get("s3_connect_timeout_s", 5.0)),
            s3_read_timeout_s=float(options.get("s3_read_timeout_s", 30.0)),
            s3_sweep_interval_s=float(options.get("s3_sweep_interval_s", DEFAULT_SWEEP_INTERVAL_S)),
            s3_orphan_age_s=float(options.get("s3_orphan_age_s", DEFAULT_ORPHAN_AGE_S)),
        )

    @property
    def offload(self) -> Offload | None:
        """The S3 offload space (None without ``s3_bucket``): pending cleanups, the sweep."""
        return self._offload

    async def _client(self, service: str) -> Any:
        """One aiobotocore client per service, created lazily in the running loop."""
        if service in self._clients:
            return self._clients[service]
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if service not in self._clients:
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                if self._stack is None:
                    self._stack = contextlib.AsyncExitStack()
                # Lambda: no botocore retries; the Retry policy retries throttling in the deadline.
                attempts = 1 if service == "lambda" else 2
                connect, read = (5.0, self.read_timeout_s)
                if service == "s3":
                    connect, read = self.s3_timeouts
                config = AioConfig(
                    retries={"mode": "standard", "total_max_attempts": attempts},
                    connect_timeout=connect,
                    read_timeout=read,
                    max_pool_connections=64,
                )
                endpoint = self.endpoint_url if service == "lambda" else self.s3_endpoint_url
                creator = get_session().create_client(
                    service, region_name=self.region, endpoint_url=endpoint, config=config
                )
                self._clients[service] = await self._stack.enter_async_context(creator)
        return self._clients[service]

    def _function(self, model: str) -> str:
        function = self.functions.get(model, self.function_name)
        if not function:
            raise ModelNotFound(model)
        return function

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        function = self._function(request.model)
        session: OffloadSession | None = None
        failed = True
        try:
            # Everything, offload I/O included, inside the deadline (native_deadline).
            async with asyncio.timeout(ctx.remaining()):
                if self._offload is not None:
                    session = await self._offload.session()
                event = await self._event(request, session)
                reply = await self._invoke(function, event, session)
                response = await self._response(request, function, reply, session, ctx)
            failed = False
            return response
        except InferGWError:
            raise
        except Exception as exc:
            raise map_aws_error(exc, self.name) from exc
        finally:
            if session is not None:
                await self._release(session, failed, ctx)

    async def _release(self, session: OffloadSession, failed: bool, ctx: RequestContext) -> None:
        """Hand the request's objects to a tracked cleanup, and wait for it within what is
        left of the deadline, so the bucket is clean when the answer leaves. A cancelled
        request does not wait: its cleanup may have to outwait the function."""
        assert self._offload is not None
        cleanup = self._offload.release(session, failed=failed)
        task = asyncio.current_task()
        if cleanup is not None and not (task is not None and task.cancelling()):
            left = None if ctx.deadline is None else max(0.0, ctx.deadline - time.monotonic())
            await asyncio.wait({cleanup}, timeout=left)  # never cancels the cleanup
        if session.calls:
            ctx.timings.add("offload", session.elapsed_ms, f"backend={self.name}")

    async def _event(self, request: InferRequest, offload: OffloadSession | None) -> bytes:
        if offload is None:  # nowhere to offload: Lambda itself refuses an event too large
            return lambda_event.encode_event(_infer_event(request, request.inputs, None))
        # Largest inputs go to S3 first, until what is left fits inline.
        to_s3 = lambda_event.plan_offload(request.inputs, self.offload_threshold)
        inputs: list[lambda_event.EventTensor] = []
        for t in request.inputs:
            if t.name in to_s3:
                ref = lambda_event.S3Ref(**await offload.put_input(t.name, t.data))
                inputs.append(lambda_event.S3Tensor(t.name, t.datatype, t.shape, ref))
            else:
                inputs.append(t)
        target = lambda_event.S3Prefix(**offload.output_target)
        return lambda_event.encode_event(_infer_event(request, inputs, target))

    async def _invoke(
        self, function: str, event: bytes, session: OffloadSession | None = None
    ) -> dict[str, Any]:
        """One synchronous invoke (throttling raises; never retried here); the caller
        bounds it. With offload, the invoke is a task the session keeps: a request that
        gives up on it leaves it running, so its cleanup can wait for the function."""
        call = self._invoke_once(function, event)
        if session is None:
            return await call
        session.invoke = asyncio.ensure_future(call)
        return await asyncio.shield(session.invoke)

    async def _invoke_once(self, function: str, event: bytes) -> dict[str, Any]:
        client = await self._client("lambda")
        reply: dict[str, Any] = await client.invoke(
            FunctionName=function,
            InvocationType="RequestResponse",
            LogType="Tail",
            Payload=event,
        )
        reply["Body"] = await reply["Payload"].read()
        return reply

    async def _response(
        self,
        request: InferRequest,
        function: str,
        reply: dict[str, Any],
        offload: OffloadSession | None,
        ctx: RequestContext,
    ) -> InferResponse:
        report = parse_report(_decode_log(reply.get("LogResult")))
        params: dict[str, str | int | float] = {}
        if report is not None:
            ctx.timings.add("compute", report.duration_ms, f"backend={self.name}")
            if report.init_ms is not None:
                ctx.timings.add("coldstart", report.init_ms, f"backend={self.name}")
            params.update(
                {
                    "lambda.request_id": report.request_id,
                    "lambda.duration_ms": report.duration_ms,
                    "lambda.billed_ms": report.billed_ms,
                    "lambda.memory_mb": report.memory_mb,
                    "lambda.max_memory_mb": report.max_memory_mb,
                }
            )
        if reply.get("FunctionError"):
            raise _function_error(function, reply["Body"])
        try:
            body = lambda_event.decode_reply(reply["Body"])
        except InvalidArgument as exc:  # a bad reply is the function's fault, not the client's
            raise BackendError(f"Lambda function {function!r}: bad reply: {exc.message}") from exc
        outputs = [await self._output(t, offload) for t in body.outputs]
        return InferResponse(
            model=request.model,
            version=body.model_version,
            id=request.id if body.id is None else body.id,
            outputs=tuple(outputs),
            parameters=params,
        )

    async def _output(
        self, output: lambda_event.EventTensor, offload: OffloadSession | None
    ) -> Tensor:
        if not isinstance(output, lambda_event.S3Tensor):
            return output
        name = output.name
        if offload is None:
            raise BackendError(f"function returned output {name!r} via S3, not configured")
        ref = {"bucket": output.ref.bucket, "key": output.ref.key}
        data = await offload.get_output(offload.check_output_ref(ref, name))
        try:
            return output.with_data(data)
        except InvalidArgument as exc:
            raise BackendError(f"function returned a malformed output {name!r}: {exc}") from exc

    async def ready(self) -> bool:
        return True  # serverless: there is nothing to be ready; invokes start environments

    async def model_ready(self, model: str, version: str = "") -> bool:
        return model in self.functions or bool(self.function_name)

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        function = self._function(model)
        event = lambda_event.encode_event(lambda_event.MetadataEvent(model))
        try:
            async with asyncio.timeout(METADATA_TIMEOUT_S):  # may pay a cold start, not forever
                reply = await self._invoke(function, event)
        except Exception as exc:
            raise map_aws_error(exc, self.name) from exc
        if reply.get("FunctionError"):
            raise _function_error(function, reply["Body"])
        try:
            return lambda_event.decode_metadata(reply["Body"], model)
        except InvalidArgument as exc:
            raise BackendError(f"Lambda function {function!r}: bad reply: {exc.message}") from exc

    async def close(self) -> None:
        if self._offload is not None:
            await self._offload.close()  # pending cleanups still need the S3 client
        stack, self._stack = self._stack, None
        self._clients.clear()
        if stack is not None:
            await stack.aclose()


def _decode_log(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    try:
        return base64.b64decode(value).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return ""


def _infer_event(
    request: InferRequest,
    inputs: Sequence[lambda_event.EventTensor],
    output_s3: lambda_event.S3Prefix | None,
) -> lambda_event.InferEvent:
    return lambda_event.InferEvent(
        model=request.model,
        inputs=tuple(inputs),
        id=request.id,
        outputs=tuple(o.name for o in request.outputs),
        output_s3=output_s3,
    )


def _function_error(function: str, payload: bytes) -> InferGWError:
    """X-Amz-Function-Error: the function's own message, which is what the user needs."""
    error = lambda_event.decode_function_error(payload)
    if error.is_input_error:
        return InvalidArgument(error.message)
    if error.error_type == "Sandbox.Timedout" or "Task timed out after" in error.message:
        return DeadlineExceeded(f"Lambda function {function!r}: {error.message}")
    return BackendError(
        f"Lambda function {function!r} failed ({error.error_type}): {error.message}"
    )

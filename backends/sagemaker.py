"""SageMaker Serverless Inference through SageMaker Runtime's InvokeEndpoint (aiobotocore).

The request travels as OIP REST JSON, or (``binary: true``, the default) as the binary
tensor extension in SageMaker-Triton's content type, with the model named in the
JSON header (``wire/sagemaker.py``); our container (``deploy/sagemaker``)
answers in kind and reports ``compute`` (and ``coldstart`` after a scale from zero)
in ``CustomAttributes``, which is all this backend adds to the timings: SageMaker
itself reports neither.

Serverless limits are checked here so the client gets a clear error instead of the
service's: the body may not exceed 4 MB. botocore's own retries are off (retrying is
a gateway policy); the call is bounded by the request's deadline.

Config::

    backends:
      sagemaker:
        kind: sagemaker
        endpoint_name: infergw          # or endpoints: {minilm: infergw-minilm, ...}
        region: us-east-1
        endpoint_url: http://127.0.0.1:8085   # the local stand-in; omit for AWS
        binary: true
        memory_mb: 6144                 # the endpoint's MemorySizeInMB (cost reporting)

Credentials come from botocore's usual chain (environment, profile, instance role).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import Any

from infergw.gateway.core.backend import BackendBase
from infergw.gateway.core.context import RequestContext
from infergw.vocab.errors import (
    BackendError,
    DeadlineExceeded,
    InferGWError,
    InvalidArgument,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    Unavailable,
    Unimplemented,
)
from infergw.vocab.timing import BACKEND_REPORTED
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata
from infergw.wire import sagemaker as wire
from infergw.wire.oip_json import decode_infer_response, encode_infer_request
from infergw.wire.server_timing import select_entries

SERVERLESS_MAX_PAYLOAD = 4 * 1024 * 1024  # InvokeEndpoint body limit on serverless endpoints
MEMORY_SIZES_MB = range(1024, 6145, 1024)  # ServerlessConfig.MemorySizeInMB
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 70.0  # AWS: containers get 60 s; set the socket timeout to 70 s
THROTTLE_RETRY_AFTER_S = 1.0
AUTH_ERRORS = frozenset(
    {
        "MissingAuthenticationTokenException",
        "IncompleteSignatureException",
        "InvalidSignatureException",
        "UnrecognizedClientException",
        "ExpiredTokenException",
        "AccessDeniedException",
    }
)
OPTIONS = frozenset({"endpoint_name", "endpoints", "region", "endpoint_url", "binary", "memory_mb"})


class SageMakerBackend(BackendBase):
    scales_to_zero = True  # Serverless Inference

    def __init__(
        self,
        name: str,
        *,
        endpoints: Mapping[str, str] | None = None,
        endpoint_name: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        binary: bool = True,
        memory_mb: int | None = None,
    ) -> None:
        self.name = name
        self.endpoints = dict(endpoints or {})
        self.endpoint_name = endpoint_name
        self.region = region
        self.endpoint_url = endpoint_url
        self.binary = binary
        self.memory_mb = memory_mb
        self.max_payload_bytes = SERVERLESS_MAX_PAYLOAD
        self.accept = wire.BINARY_CONTENT_TYPE if binary else wire.JSON_CONTENT_TYPE
        self._client: Any = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._client_lock = asyncio.Lock()

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> SageMakerBackend:
        def bad(message: str) -> InvalidArgument:
            return InvalidArgument(f"backend {name!r}: {message}")

        unknown = set(options) - OPTIONS
        if unknown:
            raise bad(f"unknown options {sorted(unknown)}")
        endpoints = options.get("endpoints") or {}
        endpoint_name = options.get("endpoint_name")
        if not isinstance(endpoints, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in endpoints.items()
        ):
            raise bad("'endpoints' must map model names to endpoint names")
        if not endpoints and not endpoint_name:
            raise bad("'endpoint_name' or 'endpoints' is required")
        for key in ("endpoint_name", "region", "endpoint_url"):
            if options.get(key) is not None and not isinstance(options[key], str):
                raise bad(f"{key!r} must be a string")
        binary = options.get("binary", True)
        if not isinstance(binary, bool):
            raise bad("'binary' must be true or false")
        memory_mb = options.get("memory_mb")
        if memory_mb is not None and memory_mb not in MEMORY_SIZES_MB:
            raise bad("'memory_mb' must be 1024-6144 in steps of 1024 (MemorySizeInMB)")
        return cls(
            name,
            endpoints=endpoints,
            endpoint_name=endpoint_name,
            region=options.get("region"),
            endpoint_url=options.get("endpoint_url"),
            binary=binary,
            memory_mb=memory_mb,
        )

    def endpoint_for(self, model: str) -> str:
        endpoint = self.endpoints.get(model, self.endpoint_name)
        if endpoint is None:
            raise ModelNotFound(model)
        return endpoint

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        endpoint = self.endpoint_for(request.model)
        body, content_type = self._encode(request, endpoint)
        try:
            client = await self._get_client()
            async with asyncio.timeout(ctx.remaining()):
                reply = await client.invoke_endpoint(
                    EndpointName=endpoint, Body=body, ContentType=content_type, Accept=self.accept
                )
                async with reply["Body"] as stream:
                    payload = await stream.read()
        except InferGWError:
            raise
        except Exception as exc:
            raise map_error(exc, self.name, endpoint) from exc
        reported = wire.parse_timing_attribute(reply.get("CustomAttributes"), timed_only=True)
        for entry in select_entries(reported, BACKEND_REPORTED):  # what the container measured
            ctx.timings.add(entry.name, entry.duration_ms, entry.description)
        try:
            length = wire.header_length(reply.get("ContentType"), len(payload))
        except InvalidArgument as exc:
            raise BackendError(f"malformed response from endpoint {endpoint!r}: {exc}") from exc
        return decode_infer_response(payload, length)

    def _encode(self, request: InferRequest, endpoint: str) -> tuple[bytes, str]:
        """Body and Content-Type, refused here if the service would refuse it for size."""
        body, header_length = encode_infer_request(request, self.binary, self.binary)
        body, header_length = wire.with_model_name(body, header_length, request.model)
        if len(body) > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"SageMaker serverless request body for endpoint {endpoint!r}",
                len(body),
                self.max_payload_bytes,
            )
        return body, wire.content_type(header_length)

    async def _get_client(self) -> Any:
        """The sagemaker-runtime client, created on first use inside the running loop."""
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                try:
                    from aiobotocore.config import AioConfig
                    from aiobotocore.session import get_session
                except ImportError as exc:
                    raise Unavailable(
                        f"backend {self.name!r} needs aiobotocore: pip install 'infergw[aws]'"
                    ) from exc

                config = AioConfig(
                    retries={"total_max_attempts": 1},
                    connect_timeout=CONNECT_TIMEOUT_S,
                    read_timeout=READ_TIMEOUT_S,
                    max_pool_connections=64,
                )
                stack = contextlib.AsyncExitStack()
                self._client = await stack.enter_async_context(
                    get_session().create_client(
                        "sagemaker-runtime",
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        config=config,
                    )
                )
                self._exit_stack = stack
            return self._client

    async def ready(self) -> bool:
        """Serverless endpoints scale from zero on demand: there is nothing to probe."""
        return True

    async def model_ready(self, model: str, version: str = "") -> bool:
        return model in self.endpoints or self.endpoint_name is not None

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        raise Unimplemented(
            f"backend {self.name!r}: a SageMaker endpoint exposes only /invocations, "
            "not model metadata"
        )

    async def close(self) -> None:
        stack, self._exit_stack, self._client = self._exit_stack, None, None
        if stack is not None:
            await stack.aclose()


def map_error(exc: BaseException, backend: str, endpoint: str) -> InferGWError:
    """botocore/aiohttp/timeout errors of one InvokeEndpoint call -> the gateway's tree."""
    from botocore import exceptions as bce

    where = f"SageMaker endpoint {endpoint!r} (backend {backend!r})"
    if isinstance(exc, TimeoutError | bce.ReadTimeoutError | bce.ConnectTimeoutError):
        return DeadlineExceeded(f"{where} did not answer within the deadline")
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return Unavailable(f"{where}: no AWS credentials found")
    if isinstance(exc, bce.NoRegionError):
        return Unavailable(f"{where}: no AWS region configured (set the backend's 'region')")
    if isinstance(exc, bce.ClientError):
        return _map_client_error(exc, where)
    if isinstance(exc, bce.HTTPClientError | bce.ResponseStreamingError | OSError):
        return Unavailable(f"{where} is unreachable: {type(exc).__name__}")
    return BackendError(f"{where} failed: {type(exc).__name__}")


def _map_client_error(exc: Any, where: str) -> InferGWError:
    response = exc.response
    code = response.get("Error", {}).get("Code", "")
    message = response.get("Error", {}).get("Message") or ""
    if code in ("ThrottlingException", "ModelNotReadyException"):
        return QueueFull(
            f"{where} is throttled ({code}; serverless MaxConcurrency reached)",
            retry_after_s=THROTTLE_RETRY_AFTER_S,
        )
    if code == "ValidationError":
        if "oversize body" in message:
            return PayloadTooLarge(f"request body for {where}", None, SERVERLESS_MAX_PAYLOAD)
        if "not found" in message:
            return NotFound(f"{where}: {message}")
        return InvalidArgument(f"{where} rejected the request: {message}")
    if code == "ModelError":
        return _model_error(response, message, where)
    if code in AUTH_ERRORS:
        return Unavailable(f"{where} refused the gateway's credentials ({code}): {message}")
    if code in ("ServiceUnavailable", "InternalFailure", "InternalDependencyException"):
        return Unavailable(f"{where} is unavailable ({code}): {message}")
    return BackendError(f"{where} failed ({code or 'unknown error'}): {message}")


def _model_error(response: Mapping[str, Any], message: str, where: str) -> InferGWError:
    """The container's own error when it sent one; its 4xx are the client's fault."""
    if "timed out" in message:
        return DeadlineExceeded(f"{where}: the container did not answer in time (60 s limit)")
    status = response.get("OriginalStatusCode")
    detail = _container_message(response.get("OriginalMessage")) or message
    if isinstance(status, int) and status == 404:
        return NotFound(detail)
    if isinstance(status, int) and 400 <= status < 500:
        return InvalidArgument(detail)
    return BackendError(f"{where}: model error: {detail}")


def _container_message(original: Any) -> str:
    """Our container answers ``{"error": "..."}``; anything else is passed on as text."""
    if not isinstance(original, str) or not original:
        return ""
    with contextlib.suppress(ValueError):
        doc = json.loads(original)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])
    return original[:500]

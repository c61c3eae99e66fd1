"""The embedded local stack: every backend kind, on this machine, behind one gateway.

- triton: the real ``tritonserver`` (CPU) with the bundled model repository;
- lambda: the Invoke API stand-in, one function per example model, running our real
  handler in real execution environments, with moto's S3 for large payloads;
- sagemaker: the InvokeEndpoint stand-in, one serverless endpoint per model, in front
  of our real container;
- cloudrun: the h2c stand-in in front of our real OIP gRPC container.

Every model routes to Triton by default; ``x-infergw-backend: NAME`` pins another.
``infergw local up`` runs it in the foreground; ``infergw demo`` and the tests use
``LocalStack`` as an async context manager. Every process it starts is stopped on
exit, including when start-up fails half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infergw.deploy.local.cloudrun_standin import CloudRunStandIn
from infergw.deploy.local.lambda_standin import FunctionConfig, LambdaStandIn
from infergw.deploy.local.s3 import MotoS3
from infergw.deploy.local.sagemaker_standin import SageMakerStandIn, ServerlessEndpoint
from infergw.deploy.triton.launcher import TritonServer
from infergw.gateway.app import Gateway
from infergw.gateway.core.config import GatewayConfig, parse_config
from infergw.gateway.lifecycle import AsyncService
from infergw.models.registry import MODELS

log = logging.getLogger(__name__)

EXAMPLE_MODELS = tuple(MODELS)  # identity, identity_int64, minilm, mobilenet, yolo
BACKENDS = ("triton", "lambda", "sagemaker", "cloudrun")
BUCKET = "infergw-offload"
READY_TIMEOUT_S = 120.0
# Every model process (Triton's stubs, functions, containers) gets the same BLAS
# threading, as the launcher gives Triton: comparisons between backends stay fair and
# several model processes do not oversubscribe the cores.
ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# The stand-ins check that requests are SigV4-signed, so botocore needs some credentials;
# these are used only when the environment provides none.
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "infergw-local",
    "AWS_SECRET_ACCESS_KEY": "infergw-local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def local_config(
    triton_grpc: str,
    listen: Mapping[str, Any],
    serverless: Mapping[str, Mapping[str, Any]] | None = None,
) -> GatewayConfig:
    """Every example model routes to Triton and may be pinned to any configured backend."""
    backends: dict[str, Any] = {"triton": {"kind": "triton", "url": triton_grpc}}
    backends.update(serverless or {})
    models: dict[str, Any] = {name: {"backend": "triton"} for name in EXAMPLE_MODELS}
    models["*"] = {"backend": "triton"}
    return parse_config(
        {"listen": {"host": "127.0.0.1", **listen}, "backends": backends, "models": models}
    )


class LocalStack(AsyncService):
    def __init__(
        self,
        listen: Mapping[str, Any] | None = None,
        *,
        backends: Sequence[str] = BACKENDS,
        idle_timeout_s: float = 300.0,
    ) -> None:
        unknown = set(backends) - set(BACKENDS)
        if unknown or "triton" not in backends:
            raise ValueError(f"backends must include triton and be among {BACKENDS}")
        self.listen = dict(listen or {})
        self.kinds = tuple(backends)
        self.idle_timeout_s = idle_timeout_s
        self.triton = TritonServer()
        self.s3: MotoS3 | None = None
        self.lambda_: LambdaStandIn | None = None
        self.sagemaker: SageMakerStandIn | None = None
        self.cloudrun: CloudRunStandIn | None = None
        self.gateway: Gateway | None = None

    async def start(self) -> None:
        try:
            for key, value in {**LOCAL_AWS_ENV, **ONE_BLAS_THREAD}.items():
                os.environ.setdefault(key, value)
            triton_started = asyncio.create_task(asyncio.to_thread(self.triton.start))
            serverless = await self._start_serverless()
            endpoints = await triton_started
            self.gateway = Gateway(local_config(endpoints.grpc, self.listen, serverless))
            await self.gateway.start()
            async with asyncio.timeout(READY_TIMEOUT_S):
                while not await self.gateway.router.ready():  # noqa: ASYNC110 - polling
                    await asyncio.sleep(0.1)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop()
            raise

    async def _start_serverless(self) -> dict[str, dict[str, Any]]:
        """Start the stand-ins that were asked for; returns their gateway backend config."""
        config: dict[str, dict[str, Any]] = {}
        idle = self.idle_timeout_s
        if "lambda" in self.kinds:
            self.s3 = MotoS3(buckets=[BUCKET])
            s3_endpoint = await asyncio.to_thread(self.s3.start)
            env = {
                **{k: os.environ[k] for k in LOCAL_AWS_ENV},
                "AWS_ENDPOINT_URL_S3": s3_endpoint,
            }
            functions = {model: f"infergw-{model}" for model in EXAMPLE_MODELS}
            self.lambda_ = LambdaStandIn(
                [
                    FunctionConfig(fn, env={**env, "INFERGW_MODELS": model}, idle_timeout_s=idle)
                    for model, fn in functions.items()
                ]
            )
            await self.lambda_.start()
            config["lambda"] = {
                "kind": "lambda",
                "endpoint_url": self.lambda_.endpoint,
                "functions": functions,
                "function_name": functions["identity"],
                "s3_bucket": BUCKET,
                "s3_endpoint_url": s3_endpoint,
            }
        if "sagemaker" in self.kinds:
            endpoints = {model: f"infergw-{model}" for model in EXAMPLE_MODELS}
            self.sagemaker = SageMakerStandIn(
                [ServerlessEndpoint(ep, (m,), idle_timeout_s=idle) for m, ep in endpoints.items()]
            )
            await self.sagemaker.start()
            config["sagemaker"] = {
                "kind": "sagemaker",
                "endpoint_url": self.sagemaker.endpoint,
                "endpoints": endpoints,
                "endpoint_name": endpoints["identity"],
            }
        if "cloudrun" in self.kinds:
            self.cloudrun = CloudRunStandIn(EXAMPLE_MODELS, idle_timeout_s=idle)
            await self.cloudrun.start()
            config["cloudrun"] = {"kind": "cloudrun", "url": f"h2c://{self.cloudrun.endpoint}"}
        return config

    async def scale_to_zero(self) -> None:
        """Stop every idle serverless instance now, so the next request is a cold start."""
        pools = []
        for standin in (self.lambda_, self.sagemaker):
            if standin is not None:
                pools.extend(standin.pools.values())
        for pool in pools:
            await pool.scale_to_zero()
        if self.cloudrun is not None:
            await self.cloudrun.scale_to_zero()

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
            self.gateway = None
        for standin in (self.cloudrun, self.sagemaker, self.lambda_):
            if standin is not None:
                await standin.stop()
        self.cloudrun = self.sagemaker = self.lambda_ = None
        if self.s3 is not None:
            await asyncio.to_thread(self.s3.stop)
            self.s3 = None
        await asyncio.to_thread(self.triton.stop)

    def endpoints(self) -> dict[str, Any]:
        """The ready-file document (see the core issue and DESIGN.md)."""
        assert self.gateway is not None
        triton = self.triton.endpoints
        backends: dict[str, Any] = {"triton": {"grpc": triton.grpc, "http": triton.http}}
        if self.lambda_ is not None:
            backends["lambda"] = {"endpoint": self.lambda_.endpoint}
        if self.sagemaker is not None:
            backends["sagemaker"] = {"endpoint": self.sagemaker.endpoint}
        if self.cloudrun is not None:
            backends["cloudrun"] = {"grpc": self.cloudrun.endpoint}
        info: dict[str, Any] = {"gateway": dict(self.gateway.addresses), "backends": backends}
        if self.s3 is not None:
            info["s3"] = {"endpoint": self.s3.endpoint, "bucket": BUCKET}
        return info


async def run_local_stack(
    stop: asyncio.Event, ready_file: Path | None, listen: Mapping[str, Any]
) -> None:
    async with LocalStack(listen) as stack:
        info = stack.endpoints()
        if ready_file is not None:
            tmp = ready_file.with_suffix(ready_file.suffix + ".tmp")
            tmp.write_text(json.dumps(info, indent=2))
            tmp.replace(ready_file)  # atomic: readers never see a partial file
        print(json.dumps(info), flush=True)
        log.info("local stack up; Ctrl-C to stop")
        await stop.wait()

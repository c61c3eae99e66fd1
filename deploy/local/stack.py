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
exit, including when start-up fails half-way. While it runs, Triton and moto's S3 are
supervised (``supervisor``): one that exits has its process group reaped and is
restarted on the same ports, with backoff, so the gateway's addresses stay valid.

The serverless kinds are entries of ``SERVERLESS`` (kind -> ``Serverless`` provider):
each starts its stand-in and says what the gateway needs to reach it and what the
ready file tells clients, including one ``scale_to_zero`` admin URL per model, which
is all the load generator needs to force a cold start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from infergw.deploy.local.cloudrun_standin import CloudRunStandIn
from infergw.deploy.local.lambda_standin import FunctionConfig, LambdaStandIn
from infergw.deploy.local.s3 import MotoS3
from infergw.deploy.local.sagemaker_standin import SageMakerStandIn, ServerlessEndpoint
from infergw.deploy.local.supervisor import Child, RestartPolicy, Supervisor
from infergw.deploy.triton.launcher import (
    PORT_ATTEMPTS,
    TritonEndpoints,
    TritonServer,
    TritonStartError,
)
from infergw.gateway.app import Gateway
from infergw.gateway.core.config import GatewayConfig, config_error, parse_config
from infergw.gateway.lifecycle import AsyncService
from infergw.models.registry import MODELS

log = logging.getLogger(__name__)

EXAMPLE_MODELS = tuple(MODELS)  # identity, identity_int64, minilm, mobilenet, yolo, delay
# Decoupled (deploy/triton/model_repository/repeat): only Triton answers it, through its
# stream; the serverless runtimes answer one response per request, so no pinning there.
TRITON_ONLY_MODELS = ("repeat",)
BUCKET = "infergw-offload"
READY_TIMEOUT_S = 120.0
TRACE_EXPORT_DELAY_MS = 100  # Triton's span export batch delay: splits arrive this soon
SPLITS = "splits"  # the ready file's {url: the gateway's /v1/splits origin, receiver: URL}
SCALE_TO_ZERO = "scale_to_zero"  # the ready file's {model: admin URL}, per backend
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


class Serverless(Protocol):
    """One serverless backend of the stack: its stand-in, started and stopped here."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Stop whatever ``start`` got to (it may have failed half-way)."""

    async def scale_to_zero(self) -> None: ...

    def backend_config(self) -> dict[str, Any]:
        """The gateway's ``backends.NAME`` entry for it."""

    def ready_entry(self) -> dict[str, Any]:
        """The ready file's ``backends.NAME``: its endpoints and ``scale_to_zero`` URLs."""

    def shared_endpoints(self) -> dict[str, Any]:
        """Top-level ready-file entries it brings along (the S3 server, for Lambda)."""

    def children(self) -> dict[str, Child]:
        """Its servers that run as processes, to be kept running (by name).

        The stand-ins themselves serve from this process; the instances they start
        are theirs to manage (reaped when idle, replaced when gone).
        """


def _per_model(models: Sequence[str]) -> dict[str, str]:
    """One function / endpoint per example model, named as the SAM template does."""
    return {model: f"infergw-{model}" for model in models}


class LambdaProvider:
    """The Invoke API stand-in, one function per model, with moto's S3 for offload."""

    def __init__(self, models: Sequence[str], idle_timeout_s: float) -> None:
        self.functions = _per_model(models)
        self.idle_timeout_s = idle_timeout_s
        self.s3 = MotoS3(buckets=[BUCKET])
        self.s3_endpoint = ""
        self.standin: LambdaStandIn | None = None

    async def start(self) -> None:
        # Kept: a restarted S3 binds the same port, and is unreachable while down.
        self.s3_endpoint = s3_endpoint = await asyncio.to_thread(self.s3.start)
        env = {**{k: os.environ[k] for k in LOCAL_AWS_ENV}, "AWS_ENDPOINT_URL_S3": s3_endpoint}
        self.standin = LambdaStandIn(
            [
                FunctionConfig(
                    fn, env={**env, "INFERGW_MODELS": model}, idle_timeout_s=self.idle_timeout_s
                )
                for model, fn in self.functions.items()
            ]
        )
        await self.standin.start()

    async def stop(self) -> None:
        if self.standin is not None:
            await self.standin.stop()
            self.standin = None
        await asyncio.to_thread(self.s3.stop)

    async def scale_to_zero(self) -> None:
        assert self.standin is not None
        for pool in self.standin.pools.values():
            await pool.scale_to_zero()

    def backend_config(self) -> dict[str, Any]:
        assert self.standin is not None
        return {
            "kind": "lambda",
            "endpoint_url": self.standin.endpoint,
            "functions": self.functions,
            "function_name": self.functions["identity"],
            "s3_bucket": BUCKET,
            "s3_endpoint_url": self.s3_endpoint,
        }

    def ready_entry(self) -> dict[str, Any]:
        assert self.standin is not None
        urls = {m: self.standin.scale_to_zero_url(fn) for m, fn in self.functions.items()}
        return {"endpoint": self.standin.endpoint, SCALE_TO_ZERO: urls}

    def shared_endpoints(self) -> dict[str, Any]:
        return {"s3": {"endpoint": self.s3_endpoint, "bucket": BUCKET}}

    def children(self) -> dict[str, Child]:
        return {"moto_server": self.s3}


class SageMakerProvider:
    """The InvokeEndpoint stand-in, one serverless endpoint per model."""

    def __init__(self, models: Sequence[str], idle_timeout_s: float) -> None:
        self.endpoints = _per_model(models)
        self.standin = SageMakerStandIn(
            [
                ServerlessEndpoint(ep, (m,), idle_timeout_s=idle_timeout_s)
                for m, ep in self.endpoints.items()
            ]
        )

    async def start(self) -> None:
        await self.standin.start()

    async def stop(self) -> None:
        await self.standin.stop()

    async def scale_to_zero(self) -> None:
        for pool in self.standin.pools.values():
            await pool.scale_to_zero()

    def backend_config(self) -> dict[str, Any]:
        return {
            "kind": "sagemaker",
            "endpoint_url": self.standin.endpoint,
            "endpoints": self.endpoints,
            "endpoint_name": self.endpoints["identity"],
        }

    def ready_entry(self) -> dict[str, Any]:
        urls = {m: self.standin.scale_to_zero_url(ep) for m, ep in self.endpoints.items()}
        return {"endpoint": self.standin.endpoint, SCALE_TO_ZERO: urls}

    def shared_endpoints(self) -> dict[str, Any]:
        return {}

    def children(self) -> dict[str, Child]:
        return {}


class CloudRunProvider:
    """The h2c stand-in: one service serving every model."""

    def __init__(self, models: Sequence[str], idle_timeout_s: float) -> None:
        self.models = tuple(models)
        self.standin = CloudRunStandIn(self.models, idle_timeout_s=idle_timeout_s)

    async def start(self) -> None:
        await self.standin.start()

    async def stop(self) -> None:
        await self.standin.stop()

    async def scale_to_zero(self) -> None:
        await self.standin.scale_to_zero()

    def backend_config(self) -> dict[str, Any]:
        return {"kind": "cloudrun", "url": f"h2c://{self.standin.endpoint}"}

    def ready_entry(self) -> dict[str, Any]:
        url = self.standin.scale_to_zero_url()  # one service: every model's instances
        return {
            "grpc": self.standin.endpoint,
            "admin": self.standin.admin_endpoint,
            SCALE_TO_ZERO: dict.fromkeys(self.models, url),
        }

    def shared_endpoints(self) -> dict[str, Any]:
        return {}

    def children(self) -> dict[str, Child]:
        return {}


SERVERLESS: dict[str, Callable[[Sequence[str], float], Serverless]] = {
    "lambda": LambdaProvider,
    "sagemaker": SageMakerProvider,
    "cloudrun": CloudRunProvider,
}
BACKENDS = ("triton", *SERVERLESS)


def local_config(
    triton_grpc: str,
    listen: Mapping[str, Any],
    serverless: Mapping[str, Mapping[str, Any]] | None = None,
    triton_receiver_port: int | None = None,
    triton_http: str | None = None,
    overrides: StackOverrides | None = None,
) -> GatewayConfig:
    """Every example model routes to Triton and may be pinned to any configured backend.

    With ``triton_receiver_port`` the gateway receives Triton's spans there (per-request
    backend_queue and compute, ``GET /v1/splits`` on the metrics port); with
    ``triton_http`` (Triton's HTTP HOST:PORT) REST control calls reach Triton too.
    ``overrides`` (``infergw local up --config FILE``) replace the routes and add keys to
    the stack's backends (``StackOverrides``).
    """
    triton: dict[str, Any] = {"kind": "triton", "url": triton_grpc}
    if triton_http is not None:
        triton["http_url"] = f"http://{triton_http}"
    backends: dict[str, Any] = {"triton": triton}
    backends.update(serverless or {})
    models: dict[str, Any] = {name: {"backend": "triton"} for name in EXAMPLE_MODELS}
    models["*"] = {"backend": "triton"}
    for name in TRITON_ONLY_MODELS:
        models[name] = {"backend": "triton", "backends": ["triton"]}
    document: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", **listen},
        "backends": backends,
        "models": models,
    }
    if triton_receiver_port is not None:
        receiver = {"host": "127.0.0.1", "port": triton_receiver_port}
        document["tracing"] = {"triton_receiver": receiver}
    if overrides is None:
        return parse_config(document)
    return parse_config(overrides.applied_to(document), overrides.source)


@dataclass(frozen=True)
class StackOverrides:
    """A file for ``infergw local up --config FILE`` (DESIGN.md section 9, a contract):
    its ``models`` replace the stack's routes; each ``backends.NAME`` mapping is merged
    key by key over the stack's own settings for that backend (``max_concurrency``,
    ``timeout_ms``, ``retry``, ``outlier``, ``keep_warm``...), so a file can shrink Triton
    to one slot without knowing its address. The names stay the stack's."""

    source: str
    models: Mapping[str, Any] | None = None
    backends: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> StackOverrides:
        """Read FILE; its shape is checked here, its keys when the gateway's config is."""
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            reason = " ".join(str(exc).split())  # YAML's message is several lines
            raise config_error([f"cannot read config {path}: {reason}"]) from exc
        problems: list[str] = []
        if not isinstance(raw, Mapping):
            raise config_error([f"{path}: the top level must be a mapping"])
        problems += [
            f"{path}: {k}: not read by 'local up' (models, backends)"
            for k in raw
            if k not in ("models", "backends")
        ]
        backends = raw.get("backends") or {}
        if not isinstance(backends, Mapping):
            problems.append(f"{path}: backends: must be a mapping")
            backends = {}
        for name, keys in backends.items():
            if name not in BACKENDS:
                known = ", ".join(BACKENDS)
                problems.append(f"{path}: backends.{name}: not a backend of the stack ({known})")
            elif not isinstance(keys, Mapping):
                problems.append(f"{path}: backends.{name}: must be a mapping")
        models = raw.get("models")
        if models is not None and not isinstance(models, Mapping):
            problems.append(f"{path}: models: must be a mapping")
        if problems:
            raise config_error(problems)
        return cls(str(path), models, backends)

    def applied_to(self, document: Mapping[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {**document, "backends": dict(document["backends"])}
        for name, keys in self.backends.items():
            if name in merged["backends"]:  # a stack started without it ignores its keys
                merged["backends"][name] = {**merged["backends"][name], **keys}
        if self.models is not None:
            merged["models"] = dict(self.models)
        return merged


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free now, held open together so they cannot collide (Triton
    must be told the receiver's URL before the gateway binds it)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


DEFAULT_IDLE_TIMEOUT_S = 300.0  # a serverless stand-in's instance idles out after this


class LocalStack(AsyncService):
    def __init__(
        self,
        listen: Mapping[str, Any] | None = None,
        *,
        backends: Sequence[str] = BACKENDS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        restart_policy: RestartPolicy | None = None,
        triton_splits: bool = True,
        overrides: StackOverrides | None = None,
    ) -> None:
        unknown = set(backends) - set(BACKENDS)
        if unknown or "triton" not in backends:
            raise ValueError(f"backends must include triton and be among {BACKENDS}")
        self.listen = dict(listen or {})
        self.overrides = overrides
        self.kinds = tuple(backends)
        self.idle_timeout_s = idle_timeout_s
        # Triton traces the requests the gateway sends a traceparent with (all of them, once
        # it receives the spans) and exports them to the gateway soon after each response.
        self.triton_splits = triton_splits
        self.receiver_port: int | None = None  # chosen in start(), with Triton's ports
        self.triton = TritonServer(trace_rate=0, trace_export_delay_ms=TRACE_EXPORT_DELAY_MS)
        self.serverless: dict[str, Serverless] = {}
        self.gateway: Gateway | None = None
        self.restart_policy = restart_policy
        self.supervisors: dict[str, Supervisor] = {}
        # Kept across restarts (which bind the same ports), also while Triton is down.
        self._triton_endpoints: TritonEndpoints | None = None

    async def start(self) -> None:
        try:
            for key, value in {**LOCAL_AWS_ENV, **ONE_BLAS_THREAD}.items():
                os.environ.setdefault(key, value)
            if self.triton_splits and self.receiver_port is None:
                self._reserve_receiver_port()
            triton_started = asyncio.create_task(self._start_triton())
            serverless = await self._start_serverless()
            endpoints = self._triton_endpoints = await triton_started
            config = local_config(
                endpoints.grpc,
                self.listen,
                serverless,
                self.receiver_port,
                endpoints.http,
                self.overrides,
            )
            self.gateway = Gateway(config)
            await self.gateway.start()
            async with asyncio.timeout(READY_TIMEOUT_S):
                while not await self.gateway.router.ready():  # noqa: ASYNC110 - polling
                    await asyncio.sleep(0.1)
            self._supervise()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop()
            raise

    def _reserve_receiver_port(self) -> None:
        """The receiver's port and Triton's, picked together so that they cannot collide;
        Triton exports its spans there (the gateway binds it first thing)."""
        self.receiver_port, grpc_port, http_port, metrics_port = free_ports(4)
        self.triton.ports = (grpc_port, http_port, metrics_port)
        self.triton.otlp_traces_url = f"http://127.0.0.1:{self.receiver_port}/v1/traces"

    async def _start_triton(self) -> TritonEndpoints:
        """Triton on the reserved ports, or on new ones when another bind took one of them
        in the meantime (the stand-ins start beside it on ports of the kernel's choice)."""
        attempt = 1
        while True:
            try:
                return await asyncio.to_thread(self.triton.start)
            except TritonStartError as exc:
                if "already in use" not in str(exc) or attempt == PORT_ATTEMPTS:
                    raise
                log.warning("tritonserver lost a reserved port; starting it on new ones")
                self._reserve_receiver_port()
                attempt += 1

    async def _start_serverless(self) -> dict[str, dict[str, Any]]:
        """Start the stand-ins that were asked for; returns their gateway backend config."""
        for kind in self.kinds:
            if kind in SERVERLESS:
                provider = self.serverless[kind] = SERVERLESS[kind](
                    EXAMPLE_MODELS, self.idle_timeout_s
                )
                await provider.start()
        return {kind: p.backend_config() for kind, p in self.serverless.items()}

    def _supervise(self) -> None:
        """Restart Triton and the stand-ins' servers when they exit (on the same ports)."""
        children: dict[str, Child] = {"tritonserver": self.triton}
        for provider in self.serverless.values():
            children.update(provider.children())
        for name, child in children.items():
            supervisor = self.supervisors[name] = Supervisor(name, child, self.restart_policy)
            supervisor.start()

    async def scale_to_zero(self) -> None:
        """Stop every idle serverless instance now, so the next request is a cold start."""
        for provider in self.serverless.values():
            await provider.scale_to_zero()

    async def stop(self) -> None:
        supervisors, self.supervisors = list(self.supervisors.values()), {}
        for supervisor in supervisors:  # first, so that stopping a child is not a crash
            await supervisor.stop()
        if self.gateway is not None:
            await self.gateway.stop()
            self.gateway = None
        providers, self.serverless = list(self.serverless.values()), {}
        for provider in reversed(providers):
            await provider.stop()
        await asyncio.to_thread(self.triton.stop)

    def endpoints(self) -> dict[str, Any]:
        """The ready-file document (see the core issue and DESIGN.md)."""
        assert self.gateway is not None
        assert self._triton_endpoints is not None
        triton = self._triton_endpoints
        backends: dict[str, Any] = {"triton": {"grpc": triton.grpc, "http": triton.http}}
        gateway = dict(self.gateway.addresses)
        receiver = gateway.pop("triton_traces", None)
        info: dict[str, Any] = {"gateway": gateway, "backends": backends}
        if receiver is not None:  # per-request splits for Triton (loadgen/splits.py reads it)
            info[SPLITS] = {"url": f"http://{gateway['metrics']}", "receiver": receiver}
        for kind, provider in self.serverless.items():
            backends[kind] = provider.ready_entry()
            info.update(provider.shared_endpoints())
        return info


async def run_local_stack(
    stop: asyncio.Event,
    ready_file: Path | None,
    listen: Mapping[str, Any],
    overrides: StackOverrides | None = None,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
) -> None:
    async with LocalStack(listen, overrides=overrides, idle_timeout_s=idle_timeout_s) as stack:
        info = stack.endpoints()
        if ready_file is not None:
            tmp = ready_file.with_suffix(ready_file.suffix + ".tmp")
            tmp.write_text(json.dumps(info, indent=2))
            tmp.replace(ready_file)  # atomic: readers never see a partial file
        print(json.dumps(info), flush=True)
        log.info("local stack up; Ctrl-C to stop")
        await stop.wait()

"""The example-model runtime (``infergw.models``) as an in-process backend.

This is what runs *inside* our SageMaker and Cloud Run containers: the container is
an ordinary infergw frontend in front of this backend. Models load on first use
(or eagerly with ``preload``); calls run in a worker thread so the event loop stays
free. It reports ``compute`` per request, and ``coldstart`` once: on the first
request, with the time from process start to the moment the models were ready —
the initialisation that request waited for. Only if it arrived within
``COLDSTART_WINDOW_S`` of readiness: an instance started ahead of demand
(``min_instances``, pre-warming) made nobody wait, and reports nothing.

Config::

    backends:
      local: {kind: runtime, models: [identity, minilm], preload: true}
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from infergw.gateway.core.backend import BackendBase
from infergw.gateway.core.context import RequestContext
from infergw.models.base import Model, ModelInputError, UnknownModelError
from infergw.models.registry import MODELS, load_model
from infergw.vocab.datatypes import tensor_from_numpy, tensor_to_numpy
from infergw.vocab.errors import BackendError, InvalidArgument, ModelNotFound
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata, TensorSpec


def process_age_ms() -> float:
    """Milliseconds since this process started (Linux: /proc/self/stat start time)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime_s = float(f.read().split()[0])
        return (uptime_s - start_ticks / os.sysconf("SC_CLK_TCK")) * 1000.0
    except (OSError, ValueError, IndexError):
        return 0.0


COLDSTART_WINDOW_S = 1.0


class RuntimeBackend(BackendBase):
    def __init__(self, name: str, models: Sequence[str] | None = None) -> None:
        self.name = name
        self.allowed = tuple(models) if models else tuple(MODELS)
        self._models: dict[str, Model] = {}
        self._lock = asyncio.Lock()
        self._init_ms: float | None = None  # reported once, on the first request
        self._ready_at = 0.0

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> RuntimeBackend:
        unknown = set(options) - {"models", "preload"}
        if unknown:
            raise InvalidArgument(f"backend {name!r}: unknown options {sorted(unknown)}")
        backend = cls(name, options.get("models"))
        if options.get("preload"):
            backend.preload()
        return backend

    def preload(self) -> None:
        """Load every allowed model now (a container does this before it says ready)."""
        for model in self.allowed:
            self._models.setdefault(model, load_model(model))
        self._init_ms = process_age_ms()
        self._ready_at = time.monotonic()

    async def _model(self, name: str) -> Model:
        model = self._models.get(name)
        if model is not None:
            return model
        if name not in self.allowed or name not in MODELS:
            raise ModelNotFound(name)
        async with self._lock:
            if name not in self._models:
                self._models[name] = await asyncio.to_thread(load_model, name)
        return self._models[name]

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        model = await self._model(request.model)
        if self._init_ms is not None:
            if time.monotonic() - self._ready_at <= COLDSTART_WINDOW_S:
                ctx.timings.add("coldstart", self._init_ms)
            self._init_ms = None
        arrays = {t.name: tensor_to_numpy(t) for t in request.inputs}
        t0 = time.perf_counter()
        try:
            outputs = await asyncio.to_thread(model.infer, arrays)
        except (ModelInputError, UnknownModelError) as exc:
            raise InvalidArgument(str(exc)) from exc
        except Exception as exc:
            raise BackendError(f"model {request.model!r} failed: {type(exc).__name__}") from exc
        finally:
            ctx.timings.add("compute", (time.perf_counter() - t0) * 1000.0)
        wanted = [o.name for o in request.outputs] or list(outputs)
        missing = [n for n in wanted if n not in outputs]
        if missing:
            raise InvalidArgument(f"model {request.model!r} has no output(s) {missing}")
        return InferResponse(
            model=request.model,
            version="1",
            id=request.id,
            outputs=tuple(tensor_from_numpy(n, np.asarray(outputs[n])) for n in wanted),
        )

    async def ready(self) -> bool:
        return True

    async def model_ready(self, model: str, version: str = "") -> bool:
        return model in self.allowed and model in MODELS

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        m = await self._model(model)

        def specs(items: Any) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in items)

        return ModelMetadata(model, ("1",), "infergw_numpy", specs(m.inputs), specs(m.outputs))

"""Model name -> loader. Hosts look models up here; adding a model is one entry."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from infergw.models.base import Model, UnknownModelError
from infergw.models.delay import Delay
from infergw.models.identity import Identity
from infergw.models.mobilenet import MobileNet
from infergw.models.yolo import Yolo


def _minilm() -> Model:
    from infergw.models.minilm import MiniLM  # loads tokenizers/safetensors on demand

    return MiniLM()


MODELS: dict[str, Callable[[], Model]] = {
    "identity": partial(Identity, "identity", "FP32"),
    "identity_int64": partial(Identity, "identity_int64", "INT64"),
    "minilm": _minilm,
    "mobilenet": MobileNet,  # random weights (numpy only, cheap to import)
    "yolo": Yolo,  # random weights (numpy only, cheap to import)
    "delay": Delay,  # 15 ms of sleep per request: an accelerator slot's service time
}


def load_model(name: str) -> Model:
    """Build the model registered as ``name`` (weights are read now: call once per process)."""
    try:
        loader = MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; available: {sorted(MODELS)}") from None
    return loader()

"""Service-time and cold-start distributions, and the small JSON file that gives them.

The file (all keys optional; times in milliseconds)::

    {"always_on_ms": [12.1, 13.0, ...],                  # samples: drawn with replacement
     "serverless_ms": {"lognormal": {"median_ms": 40, "sigma": 0.4}},
     "coldstart_ms": 2500}                               # one number: a fixed time

Each value is a list of samples (e.g. the latencies a ``bench`` run measured), a number
(fixed), ``{"lognormal": {"median_ms", "sigma"}}`` or ``{"exponential": {"mean_ms"}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("fixed", "empirical", "lognormal", "exponential")


@dataclass(frozen=True)
class Dist:
    """A distribution of durations, in seconds. ``params`` by kind: fixed ``(value,)``,
    empirical the samples, lognormal ``(median, sigma)``, exponential ``(mean,)``."""

    kind: str
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown distribution {self.kind!r} (one of {', '.join(KINDS)})")
        if not self.params or any(not np.isfinite(p) or p < 0 for p in self.params):
            raise ValueError(f"{self.kind}: parameters must be finite and >= 0")

    @classmethod
    def fixed(cls, seconds: float) -> Dist:
        return cls("fixed", (float(seconds),))

    @classmethod
    def empirical(cls, seconds: Any) -> Dist:
        return cls("empirical", tuple(float(x) for x in np.asarray(seconds, dtype=float)))

    @classmethod
    def lognormal(cls, median_s: float, sigma: float) -> Dist:
        return cls("lognormal", (float(median_s), float(sigma)))

    @classmethod
    def exponential(cls, mean_s: float) -> Dist:
        return cls("exponential", (float(mean_s),))

    @property
    def mean(self) -> float:
        """The expected duration: what a gateway's running estimate converges to."""
        if self.kind == "lognormal":
            median, sigma = self.params
            return float(median * np.exp(sigma * sigma / 2))
        return float(np.mean(self.params))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` independent draws, seconds."""
        if self.kind == "fixed":
            return np.full(n, self.params[0])
        if self.kind == "empirical":
            return rng.choice(np.asarray(self.params), size=n, replace=True)
        if self.kind == "exponential":
            return rng.exponential(self.params[0], size=n)
        median, sigma = self.params
        return np.asarray(median * np.exp(sigma * rng.standard_normal(n)))

    def describe(self) -> dict[str, Any]:
        """For the outputs: the kind, the mean and (not the samples) their count."""
        info: dict[str, Any] = {"kind": self.kind, "mean_ms": round(self.mean * 1e3, 3)}
        if self.kind == "empirical":
            info["samples"] = len(self.params)
        else:
            info["params_ms_or_sigma"] = list(self.params)
        return info


# Defaults when no file is given: a warm always-on container about 2x faster at p50 than
# a serverless function (the design brief's published figure), cold starts of seconds.
@dataclass(frozen=True)
class Latencies:
    """What one model's requests take on each backend kind, and a serverless cold start."""

    always_on: Dist = field(default_factory=lambda: Dist.lognormal(0.050, 0.3))
    serverless: Dist = field(default_factory=lambda: Dist.lognormal(0.100, 0.3))
    coldstart: Dist = field(default_factory=lambda: Dist.lognormal(3.0, 0.5))


def parse_dist(value: Any, name: str) -> Dist:
    """One entry of the latencies file (milliseconds) as a :class:`Dist` (seconds)."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return Dist.fixed(value / 1e3)
        if isinstance(value, list):
            if not value:
                raise ValueError("no samples")
            return Dist.empirical(np.asarray(value, dtype=float) / 1e3)
        if isinstance(value, Mapping) and len(value) == 1:
            ((kind, params),) = value.items()
            if kind == "lognormal":
                return Dist.lognormal(params["median_ms"] / 1e3, params["sigma"])
            if kind == "exponential":
                return Dist.exponential(params["mean_ms"] / 1e3)
        raise ValueError("expected samples, a number or {lognormal|exponential: {...}}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from exc


def load_latencies(path: str | Path | None) -> Latencies:
    """The latencies file (see the module docstring); missing keys keep the defaults."""
    base = Latencies()
    if path is None:
        return base
    data = json.loads(Path(path).read_text())
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a JSON object")
    unknown = set(data) - {"always_on_ms", "serverless_ms", "coldstart_ms"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    picked = {k[: -len("_ms")]: parse_dist(v, k) for k, v in data.items()}
    return Latencies(
        **{**{f: getattr(base, f) for f in ("always_on", "serverless", "coldstart")}, **picked}
    )

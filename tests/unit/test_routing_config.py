"""The routing keys of the config: the issue's examples validate, mistakes are refused."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from infergw.gateway.core.routing.config import (
    FallbackConfig,
    HedgeConfig,
    OutlierConfig,
    RetryConfig,
    RoutePolicyConfig,
    SpilloverConfig,
    WeightedConfig,
)

POLICY = TypeAdapter(RoutePolicyConfig)

VALID = [
    (
        {"kind": "spillover", "primary": "triton", "overflow": ["lambda", "cloudrun"],
         "max_queue_wait_ms": 20},
        SpilloverConfig(
            kind="spillover", primary="triton", overflow=("lambda", "cloudrun"),
            max_queue_wait_ms=20.0,
        ),
    ),
    (
        {"kind": "fallback", "order": ["triton", "cloudrun", "lambda"]},
        FallbackConfig(kind="fallback", order=("triton", "cloudrun", "lambda")),
    ),
    (
        {"kind": "weighted", "weights": {"triton": 80, "cloudrun": 20}},
        WeightedConfig(kind="weighted", weights={"triton": 80, "cloudrun": 20}),
    ),
    (
        {"kind": "hedge", "backends": ["lambda", "sagemaker"], "delay_ms": 50},
        HedgeConfig(kind="hedge", backends=("lambda", "sagemaker"), delay_ms=50.0),
    ),
    (
        {"kind": "hedge", "backends": ["lambda", "sagemaker"], "delay_ms": "p95"},
        HedgeConfig(kind="hedge", backends=("lambda", "sagemaker"), delay_ms="p95"),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "expected"), VALID, ids=lambda v: str(v)[:40])
def test_issue_examples_validate(raw: dict[str, object], expected: object) -> None:
    assert POLICY.validate_python(raw) == expected


INVALID = [
    ({"kind": "roundrobin", "order": ["a"]}, "union_tag_invalid"),
    ({"order": ["a"]}, "union_tag_not_found"),
    ({"kind": "fallback", "order": []}, "too_short"),
    ({"kind": "fallback", "order": ["a", "a"]}, "repeated_backend"),
    ({"kind": "fallback", "order": ["a"], "retries": 3}, "extra_forbidden"),
    ({"kind": "fallback", "order": "a"}, "tuple_type"),
    ({"kind": "spillover", "primary": "a", "overflow": ["a"]}, "repeated_backend"),
    ({"kind": "spillover", "primary": "a", "overflow": ["b"], "max_queue_wait_ms": -1},
     "greater_than_equal"),
    ({"kind": "spillover", "primary": "a", "overflow": ["b"], "max_queue_wait_ms": "20"},
     "float_type"),
    ({"kind": "weighted", "weights": {"a": 0, "b": 0}}, "no_weight"),
    ({"kind": "weighted", "weights": {"a": 1.5}}, "int_type"),
    ({"kind": "weighted", "weights": {"a": -1}}, "greater_than_equal"),
    ({"kind": "hedge", "backends": ["a"], "delay_ms": 5}, "too_short"),
    ({"kind": "hedge", "backends": ["a", "b"], "delay_ms": "p99"}, "delay"),
    ({"kind": "hedge", "backends": ["a", "b"], "delay_ms": -5}, "delay"),
    ({"kind": "hedge", "backends": ["a", "b"], "delay_ms": True}, "delay"),
    ({"kind": "hedge", "backends": ["a", "b"]}, "missing"),
    ({"kind": "hedge", "backends": ["a", "b"], "delay_ms": 5, "budget_percent": 101},
     "less_than_equal"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "error"), INVALID, ids=lambda v: str(v)[:50])
def test_mistakes_are_refused(raw: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError) as caught:
        POLICY.validate_python(raw)
    assert error in {e["type"] for e in caught.value.errors()}


def test_defaults_are_envoys_and_the_issues() -> None:
    assert OutlierConfig() == OutlierConfig(
        consecutive_failures=5, base_ejection_s=30.0, max_ejection_s=300.0, max_ejected_percent=10
    )
    retry = RetryConfig()
    assert (retry.max_retries, retry.base_ms, retry.max_ms) == (2, 25.0, 250.0)
    assert (retry.budget_percent, retry.min_concurrent) == (20.0, 3)
    hedge = POLICY.validate_python({"kind": "hedge", "backends": ["a", "b"], "delay_ms": 1})
    assert isinstance(hedge, HedgeConfig) and hedge.budget_percent == 10.0
    spill = POLICY.validate_python({"kind": "spillover", "primary": "a", "overflow": ["b"]})
    assert isinstance(spill, SpilloverConfig) and spill.max_queue_wait_ms == 20.0


@pytest.mark.parametrize(
    ("section", "raw", "error"),
    [
        (OutlierConfig, {"base_ejection_s": 60, "max_ejection_s": 30}, "ejection_cap"),
        (OutlierConfig, {"consecutive_failures": 0}, "greater_than_equal"),
        (OutlierConfig, {"max_ejected_percent": 150}, "less_than_equal"),
        (RetryConfig, {"base_ms": 100, "max_ms": 10}, "retry_cap"),
        (RetryConfig, {"min_concurrent": -1}, "greater_than_equal"),
        (RetryConfig, {"budget_percent": True}, "float_type"),
    ],
)
def test_backend_keys_are_checked(
    section: type[OutlierConfig | RetryConfig], raw: dict[str, object], error: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        section.model_validate(raw)
    assert error in {e["type"] for e in caught.value.errors()}


def test_named_gives_each_backend_with_its_key_path() -> None:
    spill = SpilloverConfig(kind="spillover", primary="t", overflow=("l", "c"))
    assert spill.named() == ((("primary",), "t"), (("overflow", 0), "l"), (("overflow", 1), "c"))
    weighted = WeightedConfig(kind="weighted", weights={"t": 1})
    assert weighted.named() == ((("weights", "t"), "t"),)


def test_sections_are_frozen() -> None:
    policy = FallbackConfig(kind="fallback", order=("a",))
    with pytest.raises(ValidationError):
        policy.order = ("b",)  # type: ignore[misc]

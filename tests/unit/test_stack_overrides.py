"""``infergw local up --config FILE``: models replace the routes, backend keys merge in."""

from __future__ import annotations

from pathlib import Path

import pytest

from infergw.deploy.local.stack import StackOverrides, local_config
from infergw.vocab.errors import InvalidArgument

LISTEN = {"grpc_port": 0, "http_port": 0, "metrics_port": 0}
SERVERLESS = {"lambda": {"kind": "lambda", "function_name": "f", "timeout_ms": 9000}}


def overrides(tmp_path: Path, text: str) -> StackOverrides:
    path = tmp_path / "local.yaml"
    path.write_text(text)
    return StackOverrides.load(path)


def test_models_replace_the_routes_and_backend_keys_merge_over_the_stacks(tmp_path: Path) -> None:
    file = overrides(
        tmp_path,
        """
models:
  minilm: {policy: {kind: spillover, primary: triton, overflow: [lambda], max_queue_wait_ms: 20}}
  "*": {backend: triton}
backends:
  triton: {max_concurrency: 1, outlier: {consecutive_failures: 3}}
  lambda: {keep_warm: {mode: fixed, interval_s: 60}}
""",
    )
    config = local_config("127.0.0.1:1", LISTEN, SERVERLESS, overrides=file)
    assert [r.model for r in config.routes] == ["minilm", "*"]  # replaced, not added to
    backends = {b.name: b for b in config.backends}
    triton = backends["triton"]
    assert triton.max_concurrency == 1 and triton.options["url"] == "127.0.0.1:1"  # kept
    assert triton.outlier is not None and triton.outlier.consecutive_failures == 3
    assert backends["lambda"].timeout_ms == 9000  # the stack's own setting stays
    assert backends["lambda"].keep_warm is not None and backends["lambda"].keep_warm.mode == "fixed"


def test_without_models_the_stack_keeps_its_routes(tmp_path: Path) -> None:
    file = overrides(tmp_path, "backends: {triton: {max_queue: 3}}\n")
    config = local_config("127.0.0.1:1", LISTEN, overrides=file)
    assert "identity" in [r.model for r in config.routes]
    assert config.backends[0].max_queue == 3


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("listen: {grpc_port: 1}\n", "listen: not read by 'local up' (models, backends)"),
        ("backends: {trton: {max_queue: 1}}\n", "backends.trton: not a backend of the stack"),
        ("backends: {triton: 3}\n", "backends.triton: must be a mapping"),
        ("models: [a]\n", "models: must be a mapping"),
        ("- a\n", "the top level must be a mapping"),
        ("models: {a: [\n", "cannot read config"),
    ],
)
def test_the_files_shape_is_checked_before_anything_starts(
    tmp_path: Path, text: str, problem: str
) -> None:
    with pytest.raises(
        InvalidArgument, match=problem.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")
    ):
        overrides(tmp_path, text)


def test_its_keys_are_checked_as_the_gateways_config_naming_the_file(tmp_path: Path) -> None:
    file = overrides(tmp_path, "backends: {triton: {max_concurent: 1}}\nmodels: {m: lambda}\n")
    with pytest.raises(InvalidArgument) as caught:
        local_config("127.0.0.1:1", LISTEN, overrides=file)
    assert str(tmp_path / "local.yaml") in caught.value.message
    assert "models.m.backend: unknown backend 'lambda'" in caught.value.message

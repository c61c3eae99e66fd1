import re
from pathlib import Path
from typing import Any

import pytest

from infergw.gateway.core.config import (
    POLICY_KEYS,
    BackendConfig,
    GatewayConfig,
    RetryConfig,
    RouteConfig,
    load_config,
    parse_config,
)
from infergw.vocab.errors import InvalidArgument

DOC = {
    "listen": {"grpc_port": 9001},
    "backends": {
        "triton": {"kind": "triton", "url": "127.0.0.1:1", "max_concurrency": 4, "timeout_ms": 50}
    },
    "models": {"identity": {"backend": "triton"}, "*": "triton"},
}


def with_backend(**keys: Any) -> dict[str, Any]:
    return {**DOC, "backends": {"triton": {"kind": "triton", **keys}}}


def test_parse_splits_policy_keys_from_backend_options() -> None:
    cfg = parse_config(DOC)
    (backend,) = cfg.backends
    assert backend.options == {"url": "127.0.0.1:1"}
    assert backend.max_concurrency == 4 and backend.timeout_ms == 50
    assert cfg.listen.grpc_port == 9001 and cfg.listen.http_port == 8000
    assert [r.model for r in cfg.routes] == ["identity", "*"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"backends": {}}, "at least one backend"),
        ({"backends": {"t": {"url": "x"}}}, "kind is required"),
        ({**DOC, "models": {"m": {"backend": "nope"}}}, "unknown backend 'nope'"),
        ({**DOC, "listen": {"grpc_prot": 1}}, r"listen\.grpc_prot: unknown key"),
        ({**DOC, "backends": {"t": {"kind": "triton", "max_concurrency": 0}}}, "max_concurrency"),
        ([], "must be a mapping"),
    ],
)
def test_bad_config_is_a_clear_error(doc: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_config(doc)


def test_load_config_reports_unreadable_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.yaml"
    path.write_text("backends: [unclosed")
    with pytest.raises(InvalidArgument, match="cannot read config"):
        load_config(path)


# Each problem is one line: the key path, what was expected, what was given. The first
# four are the defects measured in issue 8 (accepted, coerced, or a traceback before).
BAD = [
    (
        {**DOC, "listen": {"grpc_port": "eight"}},
        "config: listen.grpc_port: must be an integer, got string 'eight'",
    ),
    (
        {**DOC, "allow_backend_pinning": "false"},
        "config: allow_backend_pinning: must be a boolean (true or false), got string 'false'",
    ),
    (
        with_backend(max_queue="5"),
        "config: backends.triton.max_queue: must be an integer, got string '5'",
    ),
    ({**DOC, "backends": "triton"}, "config: backends: must be a mapping, got string 'triton'"),
    (
        {**DOC, "listen": {"grcp_port": 1}},
        "config: listen.grcp_port: unknown key; did you mean 'grpc_port'?",
    ),
    ({**DOC, "backend": {}}, "config: backend: unknown key; did you mean 'backends'?"),
    (
        {**DOC, "models": {"m": {"backnd": "triton"}}},
        "config: models.m.backnd: unknown key; did you mean 'backend'?",
    ),
    ({**DOC, "models": {"m": {}}}, "config: models.m: give either 'backend: NAME' or 'policy:"),
    (
        {
            **DOC,
            "models": {
                "m": {"backend": "triton", "policy": {"kind": "fallback", "order": ["triton"]}}
            },
        },
        "config: models.m: give either 'backend: NAME' or 'policy:",
    ),
    (
        {**DOC, "models": {"m": {"policy": {"kind": "fallback", "order": ["triton", "lamda"]}}}},
        "config: models.m.policy.order[1]: unknown backend 'lamda'",
    ),
    (
        {**DOC, "models": {"m": {"policy": {"kind": "fallbak", "order": ["triton"]}}}},
        "config: models.m.policy.kind: unknown kind 'fallbak'; valid kinds: spillover, fallback",
    ),
    (
        {**DOC, "models": {"m": {"policy": {"order": ["triton"]}}}},
        "config: models.m.policy.kind is required; valid kinds: spillover",
    ),
    (
        {
            **DOC,
            "models": {
                "m": {
                    "policy": {
                        "kind": "spillover",
                        "primary": "triton",
                        "overflow": ["triton2"],
                        "max_queue_wait": 5,
                    }
                }
            },
        },
        "config: models.m.policy.max_queue_wait: unknown key; did you mean 'max_queue_wait_ms'?",
    ),
    (
        {
            **DOC,
            "models": {
                "m": {"policy": {"kind": "hedge", "backends": ["a", "b"], "delay_ms": "p90"}}
            },
        },
        "config: models.m.policy.delay_ms: must be a number (ms) or 'p95', got 'p90'",
    ),
    (
        {**DOC, "models": {"m": {"backend": "tritn"}}},
        "config: models.m.backend: unknown backend 'tritn'; did you mean 'triton'?",
    ),
    (
        {**DOC, "models": {"m": {"backend": "triton", "backends": ["triton", "zzz"]}}},
        "config: models.m.backends[1]: unknown backend 'zzz'; valid backends: triton",
    ),
    (
        {**DOC, "models": {"m": {"backend": "triton", "backends": "triton"}}},
        "config: models.m.backends: must be a list, got string 'triton'",
    ),
    ({**DOC, "models": {"m": 5}}, "config: models.m: must be a mapping, got integer 5"),
    (
        {**DOC, "models": {"m": {"backend": "triton", "model": "x"}}},
        "config: models.m.model: unknown key; valid keys: backend, policy, backends",
    ),
    ({**DOC, "listen": 8001}, "config: listen: must be a mapping, got integer 8001"),
    ({**DOC, "listen": {"grpc_port": 70000}}, "config: listen.grpc_port: must be <= 65535"),
    (
        {**DOC, "listen": {"http_port": -1}},
        "config: listen.http_port: must be >= 0, got integer -1",
    ),
    (
        {**DOC, "listen": {"grpc_port": True}},
        "config: listen.grpc_port: must be an integer, got boolean",
    ),
    (
        {**DOC, "listen": {"grpc_port": 8001.0}},
        "config: listen.grpc_port: must be an integer, got number",
    ),
    (
        {**DOC, "listen": {"drain_grace_s": -1}},
        "config: listen.drain_grace_s: must be >= 0, got integer -1",
    ),
    (
        {**DOC, "listen": {"drain_grace": 5}},
        "config: listen.drain_grace: unknown key; did you mean 'drain_grace_s'?",
    ),
    (
        {**DOC, "listen": {"idle_timeout_s": 0}},
        "config: listen.idle_timeout_s: must be > 0, got integer 0",
    ),
    (
        {**DOC, "listen": {"body_timeout_s": "60s"}},
        "config: listen.body_timeout_s: must be a number, got string '60s'",
    ),
    (
        {**DOC, "listen": {"max_connections": 0}},
        "config: listen.max_connections: must be >= 1, got integer 0",
    ),
    ({**DOC, "limits": {"max_message_bytes": 0}}, "config: limits.max_message_bytes: must be >= 1"),
    ({**DOC, "tracing": {"service_name": ""}}, "config: tracing.service_name: must not be empty"),
    (
        {**DOC, "tracing": {"otlp_endpoint": 4318}},
        "config: tracing.otlp_endpoint: must be a string",
    ),
    (
        with_backend(max_concurrency=0),
        "config: backends.triton.max_concurrency: must be >= 1, got integer 0",
    ),
    (with_backend(max_queue=-1), "config: backends.triton.max_queue: must be >= 0"),
    (
        with_backend(queue_timeout_ms=0),
        "config: backends.triton.queue_timeout_ms: must be > 0, got integer",
    ),
    (
        with_backend(timeout_ms="30s"),
        "config: backends.triton.timeout_ms: must be a number, got string",
    ),
    (with_backend(kind=None), "config: backends.triton.kind: must be a string, got null"),
    (with_backend(name="other"), "config: backends.triton.name: unknown key"),
    (
        with_backend(retry=True),
        "config: backends.triton.retry: must be a mapping, got boolean true",
    ),
    (
        with_backend(retry={"max_retry": 1}),
        "config: backends.triton.retry.max_retry: unknown key; did you mean 'max_retries'?",
    ),
    (
        with_backend(retry={"max_retries": -1}),
        "config: backends.triton.retry.max_retries: must be >= 0",
    ),
    (with_backend(retry={"base_ms": 0}), "config: backends.triton.retry.base_ms: must be > 0"),
    (
        with_backend(retry={"base_ms": 100, "max_ms": 10}),
        "config: backends.triton.retry: max_ms (10) must be >= base_ms (100)",
    ),
    ({**DOC, "backends": {"triton": None}}, "config: backends.triton: must be a mapping, got null"),
    (
        {**DOC, "backends": {1: {"kind": "x"}}},
        "config: backends: keys must be strings, got integer",
    ),
    ({**DOC, "route": {}}, "config: route: unknown key; valid keys: backends, models, listen,"),
    (5, "config: the top level must be a mapping, got integer 5"),
]


@pytest.mark.parametrize(("doc", "expected"), BAD, ids=[e.split("\n")[0] for _, e in BAD])
def test_each_problem_is_one_line_with_path_expected_and_given(doc: object, expected: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_config(doc)
    message = caught.value.message
    assert message.startswith(expected), message
    assert len(message.splitlines()) == len(expected.splitlines())


def test_every_problem_is_listed_on_its_own_line() -> None:
    doc = with_backend(max_queue="5", max_concurrency=0, retry={"base_ms": "x"})
    with pytest.raises(InvalidArgument) as caught:
        parse_config(doc)
    assert caught.value.message.splitlines() == [
        "config: backends.triton.max_concurrency: must be >= 1, got integer 0",
        "config: backends.triton.max_queue: must be an integer, got string '5'",
        "config: backends.triton.retry.base_ms: must be a number, got string 'x'",
    ]


def test_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("backends:\n  triton: {kind: triton, max_queue: '5'}\n")
    with pytest.raises(InvalidArgument, match=re.escape(f"{path}: backends.triton.max_queue")):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "cannot read config {path}: No such file or directory"),
        (
            "backends: [unclosed",
            "cannot read config {path}: line 1, column 20: expected ',' or ']'",
        ),
        ("- triton\n- lambda\n", "{path}: the top level must be a mapping, got a list"),
        ("", "{path}: backends: at least one backend is required"),
    ],
)
def test_unreadable_files_are_one_line(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "gateway.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InvalidArgument) as caught:
        load_config(path)
    assert caught.value.message.startswith(expected.format(path=path)), caught.value.message
    assert "\n" not in caught.value.message


def test_types_are_strict_but_integers_are_numbers() -> None:
    cfg = parse_config(with_backend(queue_timeout_ms=250, timeout_ms=None, retry={"max_ms": 400}))
    (backend,) = cfg.backends
    assert backend.queue_timeout_ms == 250.0 and isinstance(backend.queue_timeout_ms, float)
    assert backend.timeout_ms is None  # null: the client's deadline only
    assert parse_config({**DOC, "allow_backend_pinning": False}).allow_backend_pinning is False


def test_retry_is_a_typed_policy_key_not_a_backend_option() -> None:
    assert POLICY_KEYS == (
        "max_concurrency",
        "max_queue",
        "queue_timeout_ms",
        "timeout_ms",
        "retry",
        "outlier",
        "keep_warm",
        "autoscale",
    )
    (backend,) = parse_config(with_backend(url="x", retry={"max_retries": 3})).backends
    assert backend.retry == RetryConfig(max_retries=3, base_ms=25.0, max_ms=250.0)
    assert backend.options == {"url": "x"}
    (default,) = parse_config(with_backend(url="x")).backends
    assert default.retry is None  # no retry policy unless configured
    (empty,) = parse_config(with_backend(retry={})).backends
    assert empty.retry == RetryConfig()


def test_route_shorthand_and_pinnable_backends() -> None:
    doc = {
        "backends": {"a": {"kind": "x"}, "b": {"kind": "y"}},
        "models": {"m": {"backend": "a", "backends": ["a", "b"]}, "*": "b"},
    }
    cfg = parse_config(doc)
    assert cfg.routes == (
        RouteConfig(model="m", backend="a", backends=("a", "b")),
        RouteConfig(model="*", backend="b"),
    )
    assert [b.name for b in cfg.backends] == ["a", "b"]


def test_config_is_frozen_and_replace_validates() -> None:
    cfg = parse_config(DOC)
    with pytest.raises(ValueError, match="frozen"):
        cfg.listen.grpc_port = 1
    moved = cfg.replace(listen=cfg.listen.replace(grpc_port=0, host="127.0.0.1"))
    assert (moved.listen.grpc_port, moved.listen.host, cfg.listen.grpc_port) == (
        0,
        "127.0.0.1",
        9001,
    )
    assert moved.backends == cfg.backends and moved.routes == cfg.routes
    with pytest.raises(ValueError, match="grpc_port"):
        cfg.listen.replace(grpc_port="8001")
    with pytest.raises(ValueError, match="grcp_port"):
        cfg.listen.replace(grcp_port=1)
    with pytest.raises(ValueError, match="unknown backend"):
        cfg.replace(routes=(RouteConfig(model="m", backend="nope"),))


def test_sections_can_be_built_in_python() -> None:
    backend = BackendConfig(name="echo", kind="echo", max_concurrency=1, max_queue=0)
    assert backend.options == {} and backend.retry is None
    with pytest.raises(ValueError, match="max_queue"):
        BackendConfig(name="echo", kind="echo", max_queue="5")  # type: ignore[arg-type]
    cfg = GatewayConfig(backends=(backend,), routes=(RouteConfig(model="*", backend="echo"),))
    assert cfg.routes[0].backend == "echo"


def test_listen_defaults_drain_like_kubernetes_and_time_out_idle_connections() -> None:
    listen = parse_config(DOC).listen
    assert listen.drain_grace_s == 30.0  # terminationGracePeriodSeconds' default
    assert listen.drain_delay_s == 0.0
    assert listen.idle_timeout_s == 75.0 and listen.body_timeout_s == 60.0
    assert listen.max_connections is None  # a quarter of the open-file limit, at start
    tuned = parse_config(
        {**DOC, "listen": {"drain_grace_s": 5, "drain_delay_s": 1.5, "max_connections": 100}}
    ).listen
    assert (tuned.drain_grace_s, tuned.drain_delay_s, tuned.max_connections) == (5, 1.5, 100)

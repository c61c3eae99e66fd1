import pytest

from infergw.gateway.core.config import load_config, parse_config
from infergw.vocab.errors import InvalidArgument

DOC = {
    "listen": {"grpc_port": 9001},
    "backends": {
        "triton": {"kind": "triton", "url": "127.0.0.1:1", "max_concurrency": 4, "timeout_ms": 50}
    },
    "models": {"identity": {"backend": "triton"}, "*": "triton"},
}


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
        ({**DOC, "listen": {"grpc_prot": 1}}, "unknown keys in listen"),
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

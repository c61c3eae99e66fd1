"""Which backend answers a control call (``core/control.py``), table-driven, no sockets."""

from __future__ import annotations

import asyncio

import pytest

from infergw.gateway.core.config import RouteConfig
from infergw.gateway.core.control import ControlPlane, ControlRouter, HttpCall, HttpReply
from infergw.gateway.core.router import Router
from infergw.vocab.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelNotFound,
    Unavailable,
    Unimplemented,
)
from infergw.vocab.types import ModelStatistics
from tests.fakes import EchoBackend


class FakeTriton(EchoBackend):
    """An echo backend with a control plane that records what it was sent."""

    def __init__(self, name: str, extensions: tuple[str, ...] = ("trace", "logging")) -> None:
        super().__init__(name)
        self._extensions = extensions
        self.sent: list[str] = []

    async def grpc_control(self, method: str, payload: bytes, timeout_s: float | None) -> bytes:
        self.sent.append(method)
        return payload

    async def http_control(self, call: HttpCall) -> HttpReply:
        return HttpReply(200, b"{}")

    @property
    def serves_http(self) -> bool:
        return True

    async def extensions(self) -> tuple[str, ...]:
        if not self._extensions:
            raise Unavailable("down")
        return self._extensions

    async def model_statistics(self, model: str, version: str = "") -> list[ModelStatistics]:
        return [ModelStatistics(m) for m in ("identity", "minilm", "other")]


def control(*routes: tuple[str, str], pinning: bool = True, **backends: object) -> ControlRouter:
    found = {name: b for name, b in backends.items() if isinstance(b, EchoBackend)}
    configured = [RouteConfig(model=m, backend=b) for m, b in routes]
    return ControlRouter(Router(found, configured, allow_pinning=pinning))


def test_a_triton_backend_is_a_control_plane_and_echo_is_not() -> None:
    assert isinstance(FakeTriton("t"), ControlPlane)
    assert not isinstance(EchoBackend(), ControlPlane)


@pytest.mark.parametrize(
    ("model", "pinned", "expected"),
    [
        ("identity", None, "a"),  # by name
        ("minilm", None, "b"),  # through "*"
        ("identity", "b", "b"),  # pinned, as for infer
    ],
)
def test_model_calls_follow_the_route(model: str, pinned: str | None, expected: str) -> None:
    router = control(("identity", "a"), ("*", "b"), a=FakeTriton("a"), b=FakeTriton("b"))
    assert router.for_model(model, pinned, "model configuration").name == expected


@pytest.mark.parametrize(
    ("routes", "model", "error", "text"),
    [
        ([("identity", "t")], "nope", ModelNotFound, "unknown model: 'nope'"),
        ([("identity", "echo")], "identity", Unimplemented, "no Triton control plane"),
        ([("*", "t")], "", InvalidArgument, "a model name is required"),
    ],
)
def test_model_calls_that_cannot_be_routed(
    routes: list[tuple[str, str]], model: str, error: type[Exception], text: str
) -> None:
    router = control(*routes, t=FakeTriton("t"), echo=EchoBackend())
    with pytest.raises(error, match=text):
        router.for_model(model, None, "model configuration")


def test_server_calls_go_to_the_only_control_plane() -> None:
    router = control(("*", "echo"), t=FakeTriton("t"), echo=EchoBackend())
    assert router.for_server(None, "log settings").name == "t"


@pytest.mark.parametrize("pinning", [True, False])
def test_server_calls_with_two_control_planes_name_the_choice(pinning: bool) -> None:
    router = control(("*", "a"), pinning=pinning, a=FakeTriton("a"), b=FakeTriton("b"))
    with pytest.raises(FailedPrecondition, match=r"2 backends can answer it \('a', 'b'\)") as info:
        router.for_server(None, "log settings")
    assert ("choose one with the x-infergw-backend header" in info.value.message) is pinning
    if pinning:
        assert router.for_server("b", "log settings").name == "b"
    else:
        with pytest.raises(InvalidArgument, match="pinning a backend is disabled"):
            router.for_server("b", "log settings")


@pytest.mark.parametrize(
    ("pinned", "error", "text"),
    [(None, Unimplemented, "no configured backend serves it"), ("x", InvalidArgument, "'x'")],
)
def test_server_calls_without_a_control_plane(
    pinned: str | None, error: type[Exception], text: str
) -> None:
    router = control(("*", "echo"), echo=EchoBackend())
    with pytest.raises(error, match=text):
        router.for_server(pinned, "log settings")


def test_model_control_is_off_by_default() -> None:
    router = control(("*", "t"), t=FakeTriton("t"))
    with pytest.raises(FailedPrecondition, match="allow_model_control: true"):
        router.check_model_control("model load")
    router.router.allow_model_control = True
    router.check_model_control("model load")


def test_sources_and_ownership_for_calls_about_every_model() -> None:
    router = control(
        ("identity", "a"), ("minilm", "echo"), ("*", "a"), a=FakeTriton("a"), echo=EchoBackend()
    )
    sources = {s.backend: s for s in router.sources()}
    assert set(sources) == {"a", "echo"}
    assert sources["a"].plane is not None and sources["echo"].plane is None
    assert sources["echo"].routed == ("minilm",)
    assert router.owns("a", "other")  # through "*"
    assert not router.owns("a", "minilm")  # routed by name elsewhere
    stats = asyncio.run(router.contract_statistics(sources["a"]))
    assert [s.name for s in stats] == ["identity", "other"]


def test_extensions_are_ours_then_the_forwarded_ones_of_reachable_backends() -> None:
    router = control(
        ("identity", "a"),
        ("*", "b"),
        a=FakeTriton("a", ("trace", "model_configuration", "not_forwarded")),
        b=FakeTriton("b", ()),  # unreachable: adds nothing, fails nothing
    )
    found = asyncio.run(router.extensions(("binary_tensor_data", "trace")))
    assert found == ("binary_tensor_data", "trace", "model_configuration")

"""SDK units with no sockets: timing arithmetic, error mapping, request building."""

from __future__ import annotations

import dataclasses
import http.client

import aiohttp
import grpc
import grpc.aio
import numpy as np
import pytest

from infergw.clients import GrpcClient, HttpClient, TimingBreakdown, _errors, connect
from infergw.clients._convert import build_request
from infergw.vocab import errors
from infergw.vocab.errors import (
    DeadlineExceeded,
    InferGWError,
    InvalidArgument,
    PayloadTooLarge,
    QueueFull,
    Unavailable,
)
from infergw.vocab.timing import TimingEntry
from tests.fakes import FakeRpcError

# --- TimingBreakdown -----------------------------------------------------------------

SERVER_TIMING = (
    'total;dur=9.5, decode;dur=0.5, queue;dur=1.25, backend;dur=6;desc="backend=b1;attempt=1", '
    "compute;dur=2.5, encode;dur=0.25"
)


def test_protocol_subtracts_only_measured_phases() -> None:
    timing = TimingBreakdown.from_server_timing(20.0, SERVER_TIMING)
    # queue and compute were measured; coldstart and backend_queue were not, so they
    # are not counted as zero but left inside protocol.
    assert timing.protocol_ms == pytest.approx(20.0 - 1.25 - 2.5)
    assert timing.server == {
        "total": 9.5,
        "decode": 0.5,
        "queue": 1.25,
        "backend": 6.0,
        "compute": 2.5,
        "encode": 0.25,
    }
    assert "coldstart" not in timing.server


def test_protocol_subtracts_coldstart_and_backend_queue_when_reported() -> None:
    header = "queue;dur=1, coldstart;dur=100, backend_queue;dur=4, compute;dur=5, backend;dur=120"
    timing = TimingBreakdown.from_server_timing(200.0, header)
    assert timing.protocol_ms == pytest.approx(200.0 - 1 - 100 - 4 - 5)


def test_attempts_are_summed_in_server_but_kept_in_entries() -> None:
    header = (
        'backend;dur=30;desc="backend=lambda;attempt=1", coldstart;dur=20;desc="attempt=1", '
        'backend;dur=8;desc="backend=triton;attempt=2", compute;dur=3;desc="attempt=2", '
        "compute;dur=4;desc=attempt=1, total;dur=40"
    )
    timing = TimingBreakdown.from_server_timing(50.0, header)
    assert timing.server["backend"] == pytest.approx(38.0)
    assert timing.server["compute"] == pytest.approx(7.0)
    backends = [e for e in timing.entries if e.name == "backend"]
    assert [e.description for e in backends] == [
        "backend=lambda;attempt=1",
        "backend=triton;attempt=2",
    ]
    assert timing.backend_attempts == 2
    assert timing.protocol_ms == pytest.approx(50.0 - 20 - 7)


def test_without_server_timing_protocol_is_end_to_end() -> None:
    for header in (None, ""):
        timing = TimingBreakdown.from_server_timing(12.5, header)
        assert timing.entries == ()
        assert timing.server == {}
        assert timing.protocol_ms == 12.5
        assert timing.as_dict() == {"end_to_end_ms": 12.5, "protocol_ms": 12.5}


def test_as_dict_is_flat_and_in_phase_order() -> None:
    timing = TimingBreakdown(
        10.0,
        (
            TimingEntry("compute", 2.0),
            TimingEntry("custom", 0.5),
            TimingEntry("total", 8.0),
            TimingEntry("queue", 1.0),
        ),
    )
    assert list(timing.as_dict().items()) == [
        ("end_to_end_ms", 10.0),
        ("protocol_ms", 7.0),
        ("total_ms", 8.0),
        ("queue_ms", 1.0),
        ("compute_ms", 2.0),
        ("custom_ms", 0.5),
    ]


def test_timing_breakdown_is_frozen_and_hashable() -> None:
    timing = TimingBreakdown.from_server_timing(1.0, "total;dur=1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        timing.end_to_end_ms = 2.0  # type: ignore[misc]
    assert hash(timing) == hash(TimingBreakdown(1.0, (TimingEntry("total", 1.0),)))


# --- error mapping -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.CANCELLED, errors.Cancelled),
        (grpc.StatusCode.UNIMPLEMENTED, errors.Unimplemented),
        (grpc.StatusCode.INTERNAL, errors.InferGWError),
        (grpc.StatusCode.UNKNOWN, errors.InferGWError),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),  # was the base: issue 8
    ],
)
def test_grpc_status_mapping(code: grpc.StatusCode, expected: type[InferGWError]) -> None:
    exc = _errors.from_grpc(FakeRpcError(code, "server says no"))
    assert type(exc) is expected
    assert exc.message == "server says no"


def test_grpc_resource_exhausted_with_retry_after_is_queue_full() -> None:
    rpc_error = FakeRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", (("retry-after", "3"),)
    )
    exc = _errors.from_grpc(rpc_error)
    assert isinstance(exc, QueueFull)
    assert exc.retry_after_s == 3.0
    assert exc.message == "queue full"


@pytest.mark.parametrize(
    ("message", "size", "limit"),
    [
        ("request message of 1440035 bytes exceeds the limit of 1048576 bytes", 1440035, 1048576),
        ("CLIENT: Received message larger than max (5000000 vs. 4194304)", 5000000, 4194304),
    ],
)
def test_grpc_size_limit_is_payload_too_large(message: str, size: int, limit: int) -> None:
    exc = _errors.from_grpc(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, message))
    assert isinstance(exc, PayloadTooLarge)
    assert (exc.message, exc.size, exc.limit) == (message, size, limit)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, errors.InvalidArgument),
        (404, errors.NotFound),
        (413, errors.PayloadTooLarge),
        (429, errors.ResourceExhausted),
        (499, errors.Cancelled),
        (501, errors.Unimplemented),
        (503, errors.Unavailable),
        (504, errors.DeadlineExceeded),
        (500, errors.InferGWError),
        (502, errors.InferGWError),
        (401, errors.Unauthenticated),  # was the base: issue 8 (one table for all)
    ],
)
def test_http_status_mapping(status: int, expected: type[InferGWError]) -> None:
    exc = _errors.from_http(status, b'{"error": "server says no"}', {})
    assert type(exc) is expected
    assert exc.message == "server says no"


def test_http_429_with_retry_after_is_queue_full() -> None:
    exc = _errors.from_http(429, b'{"error": "admission queue full"}', {"Retry-After": "2"})
    assert isinstance(exc, QueueFull)
    assert exc.retry_after_s == 2.0


def test_http_413_keeps_limit_from_core_message() -> None:
    message = PayloadTooLarge("request body", 10_000_000, 6_291_456).message
    exc = _errors.from_http(413, f'{{"error": "{message}"}}'.encode(), {})
    assert isinstance(exc, PayloadTooLarge)
    assert (exc.message, exc.size, exc.limit) == (message, 10_000_000, 6_291_456)


def test_http_413_with_foreign_message_keeps_it_verbatim() -> None:
    exc = _errors.from_http(413, b"<html>Request Entity Too Large</html>", {})
    assert isinstance(exc, PayloadTooLarge)
    assert exc.message == "<html>Request Entity Too Large</html>"
    assert (exc.size, exc.limit) == (-1, -1)


def test_http_error_without_body_names_the_status() -> None:
    assert _errors.from_http(502, b"", {}).message == "HTTP 502"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(111, "refused"), Unavailable),
        (ConnectionResetError(), Unavailable),
        (TimeoutError("timed out"), DeadlineExceeded),
        (aiohttp.ServerTimeoutError("read timeout"), DeadlineExceeded),
        (aiohttp.ServerDisconnectedError(), Unavailable),
        (http.client.RemoteDisconnected("closed"), Unavailable),
    ],
)
def test_transport_error_mapping(exc: BaseException, expected: type[InferGWError]) -> None:
    assert type(_errors.from_transport(exc)) is expected


def test_unsupported_numpy_dtype_fails_before_sending() -> None:
    with pytest.raises(InvalidArgument):
        build_request("identity", {"input": np.ones(2, np.complex64)})


def test_timeout_becomes_microsecond_parameter() -> None:
    request = build_request("identity", {"input": np.ones(2, np.float32)}, timeout=1.5)
    assert request.parameters["timeout"] == 1_500_000


# --- choosing a client by protocol name ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls", "binary"),
    [("grpc", GrpcClient, None), ("rest", HttpClient, False), ("rest-binary", HttpClient, True)],
)
def test_connect_picks_the_client_for_the_protocol(
    name: str, cls: type, binary: bool | None
) -> None:
    client = connect(name, "127.0.0.1:1")
    try:
        assert type(client) is cls
        if binary is not None:
            assert isinstance(client, HttpClient) and client.binary is binary
    finally:
        client.close()


def test_connect_refuses_an_unknown_protocol_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="grpc, rest, rest-binary"):
        connect("http2", "127.0.0.1:1")

"""The one error <-> status table: every code and status both ways, derived from the tree."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import grpc
import pytest

from infergw.vocab import errors
from infergw.vocab.errors import InferGWError
from infergw.wire import status
from infergw.wire.status import (
    ERROR_FOR_GRPC,
    ERROR_FOR_HTTP,
    build_tables,
    error_classes,
    error_from_grpc,
    error_from_http,
    error_from_rpc,
    grpc_status,
)
from tests.fakes import FakeRpcError

# What a client gets for every gRPC code a server can send (OK is not an error).
GRPC_EXPECTED: dict[grpc.StatusCode, type[InferGWError]] = {
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.UNKNOWN: InferGWError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: InferGWError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ABORTED: InferGWError,
    grpc.StatusCode.OUT_OF_RANGE: InferGWError,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
    grpc.StatusCode.INTERNAL: InferGWError,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DATA_LOSS: InferGWError,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
}
HTTP_EXPECTED: dict[int, type[InferGWError]] = {
    400: errors.InvalidArgument,
    401: errors.Unauthenticated,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    413: errors.PayloadTooLarge,
    429: errors.ResourceExhausted,
    499: errors.Cancelled,
    500: InferGWError,
    501: errors.Unimplemented,
    503: errors.Unavailable,
    504: errors.DeadlineExceeded,
    # not in the tree: the base class
    402: InferGWError,
    418: InferGWError,
    502: InferGWError,
}


def test_every_grpc_code_is_listed_here() -> None:
    assert set(GRPC_EXPECTED) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


@pytest.mark.parametrize(("code", "expected"), GRPC_EXPECTED.items(), ids=lambda v: str(v))
def test_grpc_code_to_error(code: grpc.StatusCode, expected: type[InferGWError]) -> None:
    exc = error_from_grpc(code, "server says no")
    assert type(exc) is expected
    assert exc.message == "server says no"


@pytest.mark.parametrize(("status_", "expected"), HTTP_EXPECTED.items())
def test_http_status_to_error(status_: int, expected: type[InferGWError]) -> None:
    message = "server says no"
    exc = error_from_http(status_, message)
    assert type(exc) is expected
    assert exc.message == message


@pytest.mark.parametrize("cls", list(error_classes()), ids=lambda c: c.__name__)
def test_every_class_in_the_tree_is_mapped_both_ways(cls: type[InferGWError]) -> None:
    """Walks the tree: a new subclass with a code or status nobody maps fails here."""
    code = grpc_status(cls)
    assert code.name == cls.grpc_code
    # gRPC keeps the kind: what comes back is the class or one of its ancestors.
    assert issubclass(cls, ERROR_FOR_GRPC[code])
    # HTTP has fewer statuses than the tree has kinds (400: InvalidArgument and
    # FailedPrecondition): what comes back at least answers with the same status.
    assert ERROR_FOR_HTTP[cls.http_status].http_status == cls.http_status


def test_tables_are_the_tree_as_it_is_now() -> None:
    grpc_table, http_table = build_tables()
    assert grpc_table == dict(ERROR_FOR_GRPC)
    assert http_table == dict(ERROR_FOR_HTTP)
    assert set(grpc_table) == {grpc_status(c) for c in error_classes()}
    assert set(http_table) == {c.http_status for c in error_classes()}


def test_frontend_direction_uses_the_class_itself() -> None:
    exc = errors.PayloadTooLarge("request body", 10, 5)
    assert (grpc_status(exc), exc.http_status) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 413)
    assert grpc_status(errors.ModelNotFound("m")) == grpc.StatusCode.NOT_FOUND


@pytest.fixture
def scratch_classes() -> Iterator[list[type[InferGWError]]]:
    """Subclasses a test defines, removed from the tree afterwards."""
    made: list[type[InferGWError]] = []
    yield made
    made.clear()
    gc.collect()  # __subclasses__ holds weak references
    assert all(c.__module__ != __name__ for c in error_classes())


def test_a_new_class_with_its_own_code_is_mapped_without_touching_the_table(
    scratch_classes: list[type[InferGWError]],
) -> None:
    class Aborted(InferGWError):
        grpc_code = "ABORTED"
        http_status = 409

    scratch_classes.append(Aborted)
    grpc_table, http_table = build_tables()
    assert grpc_table[grpc.StatusCode.ABORTED] is Aborted
    assert http_table[409] is Aborted


def test_a_new_class_sharing_a_code_without_a_choice_fails_loudly(
    scratch_classes: list[type[InferGWError]],
) -> None:
    class Conflict(InferGWError):
        grpc_code = "UNAVAILABLE"  # shared with Unavailable, and no choice made
        http_status = 503

    scratch_classes.append(Conflict)
    with pytest.raises(TypeError, match="choose one"):
        build_tables()


def test_a_class_naming_no_grpc_code_fails_loudly(
    scratch_classes: list[type[InferGWError]],
) -> None:
    class Typo(InferGWError):
        grpc_code = "UNAVAILIBLE"

    scratch_classes.append(Typo)
    with pytest.raises(TypeError, match="not a gRPC code"):
        build_tables()


# -- refinements a code alone cannot express --------------------------------------------


def test_resource_exhausted_with_retry_after_is_queue_full() -> None:
    exc = error_from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", (("retry-after", b"3"),))
    assert isinstance(exc, errors.QueueFull) and exc.retry_after_s == 3.0
    exc = error_from_http(429, "full", "2")
    assert isinstance(exc, errors.QueueFull) and exc.retry_after_s == 2.0
    exc = error_from_http(429, "full", "Wed, 21 Oct 2015 07:28:00 GMT")
    assert isinstance(exc, errors.QueueFull) and exc.retry_after_s == status.DEFAULT_RETRY_AFTER_S


@pytest.mark.parametrize(
    ("message", "size", "limit"),
    [
        ("request message of 1440035 bytes exceeds the limit of 1048576 bytes", 1440035, 1048576),
        ("CLIENT: Received message larger than max (5000000 vs. 4194304)", 5000000, 4194304),
    ],
)
def test_grpc_size_limit_is_payload_too_large(message: str, size: int, limit: int) -> None:
    exc = error_from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
    assert isinstance(exc, errors.PayloadTooLarge)
    assert (exc.message, exc.size, exc.limit) == (message, size, limit)


def test_http_413_restores_size_and_limit_or_keeps_a_foreign_message() -> None:
    ours = errors.PayloadTooLarge("request body", 10_000_000, 6_291_456).message
    exc = error_from_http(413, ours)
    assert isinstance(exc, errors.PayloadTooLarge)
    assert (exc.message, exc.size, exc.limit) == (ours, 10_000_000, 6_291_456)
    exc = error_from_http(413, "<html>Request Entity Too Large</html>")
    assert isinstance(exc, errors.PayloadTooLarge)
    assert (exc.message, exc.size, exc.limit) == ("<html>Request Entity Too Large</html>", -1, -1)


# -- a failed call, as the SDK and as a backend see it ------------------------------------


@pytest.mark.parametrize(("code", "expected"), GRPC_EXPECTED.items(), ids=lambda v: str(v))
def test_rpc_error_for_a_client_is_the_table(
    code: grpc.StatusCode, expected: type[InferGWError]
) -> None:
    exc = error_from_rpc(FakeRpcError(code, "server says no"))
    assert type(exc) is expected and exc.message == "server says no"


BACKEND_EXPECTED: dict[grpc.StatusCode, tuple[type[InferGWError], str]] = {
    grpc.StatusCode.UNKNOWN: (errors.BackendError, "boom"),
    grpc.StatusCode.INTERNAL: (errors.BackendError, "boom"),
    grpc.StatusCode.DATA_LOSS: (errors.BackendError, "boom"),
    grpc.StatusCode.UNAVAILABLE: (errors.Unavailable, "backend 'tri' is unavailable: boom"),
    grpc.StatusCode.UNAUTHENTICATED: (
        errors.Unavailable,
        "backend 'tri' refused the gateway's credentials: boom",
    ),
    grpc.StatusCode.PERMISSION_DENIED: (
        errors.Unavailable,
        "backend 'tri' refused the gateway's credentials: boom",
    ),
    grpc.StatusCode.FAILED_PRECONDITION: (errors.FailedPrecondition, "boom"),
    grpc.StatusCode.NOT_FOUND: (errors.NotFound, "boom"),
    grpc.StatusCode.INVALID_ARGUMENT: (errors.InvalidArgument, "boom"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (errors.DeadlineExceeded, "boom"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (errors.ResourceExhausted, "boom"),
}


@pytest.mark.parametrize(("code", "expected"), BACKEND_EXPECTED.items(), ids=lambda v: str(v))
def test_rpc_error_from_a_backend_keeps_the_backends_context(
    code: grpc.StatusCode, expected: tuple[type[InferGWError], str]
) -> None:
    exc = error_from_rpc(FakeRpcError(code, "boom"), backend="tri")
    assert (type(exc), exc.message) == expected


def test_rpc_error_without_details_names_the_code() -> None:
    assert error_from_rpc(FakeRpcError(grpc.StatusCode.INTERNAL, "")).message == "INTERNAL"
    exc = error_from_rpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, ""), backend="tri")
    assert exc.message == "backend 'tri' is unavailable: UNAVAILABLE"


def test_rpc_error_that_is_not_a_call_is_the_base_class() -> None:
    exc = error_from_rpc(grpc.RpcError("no call"))
    assert type(exc) is InferGWError and exc.message == "no call"

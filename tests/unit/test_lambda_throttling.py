"""Lambda's 429 becomes ``Throttled`` (retryable by the Retry policy), with its Retry-After."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from infergw.backends.aws_lambda import OPTIONS, LambdaBackend, map_aws_error
from infergw.vocab.errors import InvalidArgument, QueueFull, Throttled


def too_many_requests(headers: dict[str, str]) -> ClientError:
    response = {
        "Error": {"Code": "TooManyRequestsException", "Message": "Rate Exceeded."},
        "ResponseMetadata": {"HTTPStatusCode": 429, "HTTPHeaders": headers},
    }
    return ClientError(response, "Invoke")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "hint", "retry_after"),
    [({}, None, 1.0), ({"retry-after": "3"}, 3.0, 3.0), ({"retry-after": "soon"}, None, 1.0)],
    ids=["no-header", "header", "unparsable"],
)
def test_throttled_invoke_is_throttled_with_its_hint(
    headers: dict[str, str], hint: float | None, retry_after: float
) -> None:
    err = map_aws_error(too_many_requests(headers), "lambda")
    assert isinstance(err, Throttled) and isinstance(err, QueueFull)
    assert err.http_status == 429 and err.grpc_code == "RESOURCE_EXHAUSTED"
    assert err.retry_after_hint_s == hint and err.retry_after_s == retry_after
    assert "throttled" in err.message


def test_retry_options_moved_to_the_retry_policy() -> None:
    assert {"retry_throttled", "max_retries"}.isdisjoint(OPTIONS)
    options = {"function_name": "f", "retry_throttled": True}
    with pytest.raises(InvalidArgument, match="retry_throttled"):
        LambdaBackend.from_config("lambda", options)

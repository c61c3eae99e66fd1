"""Cloud Run: CloudRunBackend -> local stand-in (h2c front) -> our container processes.

Every container is a real ``python -m infergw.deploy.cloudrun.server`` process; each
stand-in is stopped (and its processes with it) at the end of its fixture or test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as tritongrpc

from infergw.backends.cloudrun import CloudRunBackend, IdTokenCache
from infergw.deploy.local.cloudrun_standin import CloudRunStandIn, scale_to_zero
from infergw.gateway.core.context import RequestContext
from infergw.models.registry import load_model
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.datatypes import serialize_bytes, tensor_to_numpy
from infergw.vocab.errors import DeadlineExceeded, Unavailable
from infergw.vocab.types import InferRequest, InferResponse, Tensor
from infergw.wire import oip_proto
from infergw.wire.grpc_channel import parse_target_url as parse_url

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

MODELS = ("identity", "minilm")
SLOW_TEXT = [b"the quick brown fox jumps over the lazy dog " * 20] * 8  # ~0.7 s of minilm


def identity_request(array: np.ndarray) -> InferRequest:
    tensor = Tensor("input", "FP32", array.shape, array.tobytes())
    return InferRequest(model="identity", inputs=(tensor,))


def minilm_request(texts: list[bytes]) -> InferRequest:
    tensor = Tensor("text", "BYTES", (len(texts),), serialize_bytes(texts))
    return InferRequest(model="minilm", inputs=(tensor,))


def outputs(response: InferResponse) -> dict[str, np.ndarray]:
    return {t.name: tensor_to_numpy(t) for t in response.outputs}


def ctx(timeout_s: float | None = 30.0) -> RequestContext:
    c = RequestContext(protocol="test")
    c.with_timeout(timeout_s)
    return c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def standin() -> AsyncIterator[CloudRunStandIn]:
    run = CloudRunStandIn(MODELS, concurrency=4, max_instances=2, queue_timeout_s=10.0)
    await run.start()
    try:
        yield run
    finally:
        await run.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(standin: CloudRunStandIn) -> AsyncIterator[CloudRunBackend]:
    b = CloudRunBackend.from_config("cloudrun", {"url": f"h2c://{standin.endpoint}"})
    try:
        yield b
    finally:
        await b.close()


async def test_identity_and_minilm_match_the_model(backend: CloudRunBackend) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = outputs(await backend.infer(identity_request(array), ctx()))
    np.testing.assert_array_equal(got["output"], array)

    texts = [b"a sentence about cats", b"gRPC over HTTP/2"]
    got = outputs(await backend.infer(minilm_request(texts), ctx()))
    want = load_model("minilm").infer({"text": np.array(texts, dtype=object)})
    np.testing.assert_allclose(got["embedding"], want["embedding"], rtol=1e-5, atol=1e-6)

    raw_ctx = ctx()
    raw_ctx.accepts_raw = oip_proto.ENCODING  # the fast path: the response is not decoded
    raw = await backend.infer(identity_request(array), raw_ctx)
    assert raw.raw is not None and not raw.outputs
    decoded = oip_proto.response_from_proto(pb.ModelInferResponse.FromString(raw.raw.payload))
    np.testing.assert_array_equal(outputs(decoded)["output"], array)
    assert raw_ctx.timings.get("compute") is not None


async def test_first_request_after_scale_to_zero_carries_coldstart(
    standin: CloudRunStandIn, backend: CloudRunBackend
) -> None:
    await backend.infer(identity_request(np.zeros((1, 1), np.float32)), ctx())  # warm
    assert await scale_to_zero(standin.scale_to_zero_url()) >= 1  # admin route, as bench does
    assert standin.stats()["instances"] == 0
    first, second = ctx(), ctx()
    await backend.infer(identity_request(np.ones((1, 4), np.float32)), first)
    await backend.infer(identity_request(np.ones((1, 4), np.float32)), second)
    coldstart = first.timings.get("coldstart")
    assert coldstart is not None and coldstart > 100  # a process start plus model loading
    assert second.timings.get("coldstart") is None
    names = {e.name for e in first.timings.entries}
    assert names == {"coldstart", "compute"}  # only what the container reported
    assert second.timings.get("compute") is not None


async def test_deadline_is_passed_through(
    standin: CloudRunStandIn, backend: CloudRunBackend
) -> None:
    await backend.infer(identity_request(np.zeros((1, 1), np.float32)), ctx())  # warm
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await backend.infer(minilm_request(SLOW_TEXT), ctx(0.1))
    assert time.monotonic() - t0 < 1.0
    async with asyncio.timeout(5):  # the stand-in gave its instance slot back: it saw the end
        while standin.stats()["busy"]:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.02)


async def test_unmodified_tritonclient_works_against_the_standin(standin: CloudRunStandIn) -> None:
    def run() -> np.ndarray:
        client = tritongrpc.InferenceServerClient(standin.endpoint)
        try:
            assert client.is_server_ready() and client.is_model_ready("identity")
            meta = client.get_model_metadata("identity")
            assert meta.inputs[0].name == "input"
            data = np.random.default_rng(0).random((2, 3), dtype=np.float32)
            inp = tritongrpc.InferInput("input", [2, 3], "FP32")
            inp.set_data_from_numpy(data)
            result = client.infer("identity", [inp], client_timeout=30)
            np.testing.assert_array_equal(result.as_numpy("output"), data)
            return data
        finally:
            client.close()

    await asyncio.to_thread(run)


async def test_at_max_instances_extra_requests_wait_then_get_429() -> None:
    async with CloudRunStandIn(MODELS, concurrency=1, max_instances=1, queue_timeout_s=0.3) as run:
        backend = CloudRunBackend("cr", run.endpoint)
        try:
            await backend.infer(identity_request(np.zeros((1, 1), np.float32)), ctx())  # warm
            slow = asyncio.create_task(backend.infer(minilm_request(SLOW_TEXT), ctx()))
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            extra = await asyncio.gather(
                *(
                    backend.infer(identity_request(np.zeros((1, 1), np.float32)), ctx())
                    for _ in range(2)
                ),
                return_exceptions=True,
            )
            waited = time.monotonic() - t0
            assert all(isinstance(e, Unavailable) and "429" in e.message for e in extra), extra
            assert 0.25 <= waited < 2.0
            assert outputs(await slow)["embedding"].shape == (8, 384)
            assert run.stats()["instances"] == 1
        finally:
            await backend.close()


async def test_instance_killed_mid_request_is_unavailable_then_recovers() -> None:
    async with CloudRunStandIn(MODELS, concurrency=4, max_instances=1) as run:
        backend = CloudRunBackend("cr", f"h2c://{run.endpoint}")
        try:
            await backend.infer(identity_request(np.zeros((1, 1), np.float32)), ctx())  # warm
            victim = run.pool.instances[0]
            slow = asyncio.create_task(backend.infer(minilm_request(SLOW_TEXT), ctx()))
            await asyncio.sleep(0.2)
            victim.process.kill()
            with pytest.raises(Unavailable, match="connection to the instance had an error"):
                await slow
            nxt = ctx()
            got = await backend.infer(identity_request(np.ones((2, 2), np.float32)), nxt)
            np.testing.assert_array_equal(outputs(got)["output"], np.ones((2, 2), np.float32))
            assert nxt.timings.get("coldstart") is not None  # served by a new instance
            assert run.pool.instances[0] is not victim
        finally:
            await backend.close()


# -- the ID token cache (no network: a fake fetcher and a fake clock) ---------------------


def fake_jwt(exp: float, n: int) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part({'exp': exp, 'n': n})}.sig{n}"


class FakeFetcher:
    def __init__(self, clock: list[float], lifetime_s: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime_s = lifetime_s
        self.audiences: list[str] = []
        self.fail = False

    def __call__(self, audience: str) -> str:
        if self.fail:
            raise RuntimeError("metadata server unreachable")
        self.audiences.append(audience)
        time.sleep(0.01)  # runs in a worker thread, like the real blocking fetch
        return fake_jwt(self.clock[0] + self.lifetime_s, len(self.audiences))


async def test_id_token_cache_reuses_then_refreshes_in_background() -> None:
    now = [1_000_000.0]
    fetch = FakeFetcher(now)
    cache = IdTokenCache("https://svc-abc.a.run.app", fetch, clock=lambda: now[0])

    first = await asyncio.gather(*(cache.get() for _ in range(5)))  # one fetch for all
    assert len(set(first)) == 1 and fetch.audiences == ["https://svc-abc.a.run.app"]
    assert await cache.get() == first[0] and len(fetch.audiences) == 1

    now[0] += 3600 - 120  # inside the refresh window: old token now, new one fetched aside
    assert await cache.get() == first[0]
    assert cache._pending is not None
    await cache._pending
    second = await cache.get()
    assert second != first[0] and len(fetch.audiences) == 2

    now[0] += 3600 + 1  # expired: the caller waits for a fresh token
    third = await cache.get()
    assert third not in (first[0], second) and len(fetch.audiences) == 3
    assert third not in repr(cache)

    fetch.fail = True
    now[0] += 7200
    with pytest.raises(RuntimeError):
        await cache.get()


async def test_backend_sends_the_token_and_maps_fetch_failures() -> None:
    now = [1_000_000.0]
    fetch = FakeFetcher(now)
    assert parse_url("https://svc-abc.a.run.app") == (
        "svc-abc.a.run.app:443",
        True,
        "https://svc-abc.a.run.app",
    )
    assert parse_url("127.0.0.1:8080") == ("127.0.0.1:8080", False, "")
    cache = IdTokenCache("https://svc-abc.a.run.app", fetch, clock=lambda: now[0])
    backend = CloudRunBackend("cr", "https://svc-abc.a.run.app", tokens=cache)
    c = ctx()
    c.headers["traceparent"] = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    metadata = dict(await backend._metadata(c) or ())
    assert metadata["authorization"] == f"Bearer {await cache.get()}"
    assert metadata["traceparent"] == c.headers["traceparent"]
    assert await backend.ready()
    # What the native plane gets: the same header, good until 30 s before the expiry.
    credential = await backend.call_credential()
    assert (credential.header, credential.value) == ("authorization", metadata["authorization"])
    assert credential.good_until == cache.expires_at - 30 and cache.expires_at > now[0]
    assert "Bearer" not in repr(credential)

    fetch.fail = True
    now[0] += 7200
    with pytest.raises(Unavailable, match="no Google ID token") as info:
        await backend._metadata(c)
    assert "Bearer" not in info.value.message
    assert "metadata server" not in info.value.message  # the dependency's words: logged
    assert not await backend.ready()
    with pytest.raises(Unavailable, match="h2c service takes no ID token"):
        await CloudRunBackend("local", "127.0.0.1:8080").call_credential()


async def test_container_rejects_bad_input_through_the_standin(
    standin: CloudRunStandIn, backend: CloudRunBackend
) -> None:
    from infergw.vocab.errors import InvalidArgument, NotFound

    bad = InferRequest(model="nope", inputs=(Tensor("input", "FP32", (1,), b"\0" * 4),))
    with pytest.raises(NotFound, match="nope"):
        await backend.infer(bad, ctx())
    wrong = InferRequest(model="identity", inputs=(Tensor("x", "FP32", (1, 1), b"\0" * 4),))
    with pytest.raises(InvalidArgument):
        await backend.infer(wrong, ctx())
    async with grpc.aio.insecure_channel(standin.endpoint) as channel:
        rpc = channel.unary_unary("/inference.GRPCInferenceService/ModelStreamInfer")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rpc(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_request_timeout_cuts_a_long_request_like_cloud_run() -> None:
    async with CloudRunStandIn(MODELS, request_timeout_s=0.2) as run:
        backend = CloudRunBackend("cr", run.endpoint)
        try:
            await backend.infer(identity_request(np.zeros((1, 1), np.float32)), ctx())  # warm
            with pytest.raises(Unavailable, match="upstream request timeout"):
                await backend.infer(minilm_request(SLOW_TEXT), ctx())
        finally:
            await backend.close()


async def test_only_the_containers_phases_with_a_duration_are_taken() -> None:
    backend = CloudRunBackend("cr", "127.0.0.1:8080")
    c = ctx()
    trailers = (("server-timing", "compute, coldstart;dur=5, total;dur=9, backend_queue;dur=x"),)
    backend._on_trailers(grpc.aio.Metadata(*trailers), c)
    assert [(e.name, e.duration_ms) for e in c.timings.entries] == [("coldstart", 5.0)]

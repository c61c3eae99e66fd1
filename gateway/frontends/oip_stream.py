"""ModelStreamInfer through the gateway: one client stream, each request routed on its own.

A request message goes, by its model and the call's ``x-infergw-backend``:

- for a model that needs a stream (``StreamingBackend.needs_stream``: a decoupled model
  on Triton): decoded and validated as a ModelInfer request is, admitted (one admission
  slot per request, held until its last response: a stream of requests weighs what as
  many calls do), then written as its own bytes to an upstream ModelStreamInfer of the
  call's, one per backend and model (Triton 2.51 aborts when one stream mixes decoupled
  and other models). Every response comes back as the backend's bytes, as soon as it
  arrives: a decoupled model's n responses are n messages, with Triton's
  ``triton_final_response`` and per-response ``error_message``;
- anything else (any other model, on Triton too, and Lambda, SageMaker, Cloud Run, or a
  model that cannot be routed): the ModelInfer lifecycle (``InferenceService.serve``),
  one response per request, marked ``triton_final_response: true`` as Triton marks it.
  Up to ``MAX_CALLS`` run at once (the client's messages wait beyond that) and their
  responses go out in request order, as Triton's stream keeps a non-decoupled model's.

Responses are matched to requests by ``id``, which Triton echoes. To see the end of
every request, the gateway asks Triton for the empty final response (Triton's own
``triton_enable_empty_final_response``) and passes it on only to a client that asked
for it too. (A model's own final response with no outputs looks the same: it is not
passed on to a client that did not ask for empty final responses.)

Server-Timing: each response carries a ``server-timing`` parameter: its request's
``decode`` and ``queue``, ``backend`` from the request's write upstream to this
response (``desc="backend=NAME;response=N"``) and ``total`` since the request arrived.
While several requests in flight share an id, their responses carry none (which one
they answer is not known). The call's ``server-timing`` trailer has the call's
``total`` and each phase summed over its requests (concurrent requests overlap).

A client's cancel or deadline ends the call: the upstream streams are cancelled (Triton
then cancels their requests), every slot is released and the requests still in flight
are counted as CANCELLED; no task outlives the call.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from infergw.gateway.core.backend import InferStream, Release, StreamingBackend
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.service import InferenceService
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.errors import InferGWError, ResourceExhausted, Unavailable
from infergw.vocab.timing import PHASES, TimingEntry
from infergw.vocab.types import InferRequest, InferResponse
from infergw.wire import oip_proto, oip_stream
from infergw.wire.protowire import WireError, find_string
from infergw.wire.server_timing import format_server_timing

TIMING_KEY = "server-timing"
# The status of a request the backend answered with an error message: no code travels
# with it in a stream, and UNKNOWN is gRPC's name for exactly that.
BACKEND_ERROR = "UNKNOWN"
# Responses waiting for the client; beyond it upstream reads wait, so gRPC's flow
# control slows the backend instead of the gateway buffering without bound.
OUTBOX_SIZE = 64
MODEL_NAME_PATH = (1,)  # ModelInferRequest.model_name
# ModelInfer calls one stream runs at once (requests that need no stream upstream).
MAX_CALLS = 64
# Upstream streams one call may open (one per backend and model): a client naming a new
# model per message must not make the gateway open thousands of streams to Triton.
MAX_UPSTREAMS = 64

Decode = Callable[[bytes], InferRequest]
Encode = Callable[[InferResponse, InferRequest], pb.ModelStreamInferResponse]


@dataclass(slots=True, eq=False)
class _InFlight:
    """A request written upstream whose last response has not come yet."""

    ctx: RequestContext
    model: str
    id: str
    release: Release
    wants_empty_final: bool
    sent: float = 0.0  # perf_counter when written upstream
    responses: int = 0
    failed: bool = False


class _Upstream:
    """One backend's stream within a client's call, and its requests in flight by id."""

    def __init__(self, backend: StreamingBackend, stream: InferStream) -> None:
        self.backend = backend
        self.stream = stream
        self.in_flight: dict[str, deque[_InFlight]] = {}
        self.task: asyncio.Task[None] | None = None

    def ended(self) -> bool:
        return self.task is None or self.task.done()

    def add(self, request_id: str, request: _InFlight) -> None:
        self.in_flight.setdefault(request_id, deque()).append(request)

    def match(self, request_id: str) -> tuple[_InFlight | None, bool]:
        """The oldest request in flight with this id, and whether others share the id."""
        waiting = self.in_flight.get(request_id)
        if not waiting:
            return None, False
        return waiting[0], len(waiting) > 1

    def remove(self, request_id: str, request: _InFlight) -> None:
        waiting = self.in_flight[request_id]
        waiting.remove(request)
        if not waiting:
            del self.in_flight[request_id]

    def drain(self) -> list[_InFlight]:
        """Every request still in flight; the caller now answers for them."""
        requests = [r for waiting in self.in_flight.values() for r in waiting]
        self.in_flight.clear()
        return requests


class StreamCall:
    """One client's ModelStreamInfer call (see the module docstring).

    ``responses`` runs the call: a reader task takes the client's messages, a task per
    request served as a ModelInfer call and a task per upstream stream produce the
    responses, and the generator hands every response to the transport as it is put.
    """

    def __init__(
        self,
        service: InferenceService,
        protocol: str,
        headers: Mapping[str, str],
        time_remaining: Callable[[], float | None],
        decode: Decode,
        encode: Encode,
    ) -> None:
        self.service = service
        self.protocol = protocol
        self.headers = headers
        self._time_remaining = time_remaining
        self._decode = decode
        self._encode = encode
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._room = asyncio.Semaphore(OUTBOX_SIZE)
        self._upstreams: dict[tuple[str, str], _Upstream] = {}  # by (backend, model)
        self._calls: set[asyncio.Task[None]] = set()  # requests served as ModelInfer calls
        self._last_call: asyncio.Task[None] | None = None  # the next one answers after it
        self._call_room = asyncio.Semaphore(MAX_CALLS)
        self._started = time.perf_counter()
        self._sums: dict[str, float] = {}

    async def responses(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read(requests), name="infergw-stream-reader")
        try:
            while (reply := await self._outbox.get()) is not None:
                self._room.release()
                yield reply
            await reader  # its error, if it failed, ends the call with a status
        finally:
            await self._close(reader)

    def trailer(self) -> str:
        """The call's ``server-timing``: its ``total``, then each phase summed."""
        entries = [TimingEntry("total", (time.perf_counter() - self._started) * 1000.0)]
        entries += [TimingEntry(name, self._sums[name]) for name in PHASES if name in self._sums]
        return format_server_timing(entries)

    # -- the client's side -----------------------------------------------------------------
    async def _read(self, requests: AsyncIterator[bytes]) -> None:
        """Dispatch every message; at the client's half-close, let the upstreams finish."""
        try:
            async for payload in requests:
                ctx = self.service.new_context(self.protocol, self.headers, self._time_remaining())
                backend = await self._streaming_backend(payload, ctx.pinned_backend)
                if backend is None:
                    await self._start_call(ctx, payload)
                else:
                    await self._forward(ctx, payload, backend)
            if self._last_call is not None:
                await asyncio.wait((self._last_call,))  # it answers after all the others
            upstreams = list(self._upstreams.values())
            for upstream in upstreams:
                await upstream.stream.close_sending()
            for upstream in upstreams:
                if upstream.task is not None:
                    await upstream.task
        finally:
            self._outbox.put_nowait(None)  # never blocks: only responses take room

    async def _streaming_backend(
        self, payload: bytes, pinned: str | None
    ) -> StreamingBackend | None:
        """The backend to stream this request to, or None: a ModelInfer call serves it."""
        try:
            model = find_string(payload, MODEL_NAME_PATH) or ""
        except WireError:
            return None  # malformed: the lifecycle answers it in the gateway's words
        backend = self.service.stream_backend(model, pinned)
        if backend is None or backend.encoding != oip_proto.ENCODING:
            return None
        return backend if await backend.needs_stream(model) else None

    async def _start_call(self, ctx: RequestContext, payload: bytes) -> None:
        """Serve one request as a ModelInfer call beside the others; wait for room first."""
        await self._call_room.acquire()
        task = asyncio.get_running_loop().create_task(
            self._serve(ctx, payload, self._last_call), name="infergw-stream-call"
        )
        self._last_call = task
        self._calls.add(task)
        task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._calls.discard(task)
        self._call_room.release()

    async def _serve(
        self, ctx: RequestContext, payload: bytes, previous: asyncio.Task[None] | None
    ) -> None:
        """One request through ModelInfer's lifecycle, answered after ``previous``."""
        result, entries = await self.service.serve(ctx, payload, self._decode, self._encode)
        if isinstance(result, InferGWError):
            reply = pb.ModelStreamInferResponse(error_message=result.message)
        else:
            reply = result
            parameters = reply.infer_response.parameters
            parameters[oip_stream.FINAL].bool_param = True  # its only response, as Triton says
            parameters[TIMING_KEY].string_param = format_server_timing(entries)
        payload_out = reply.SerializeToString()
        if previous is not None:
            await asyncio.wait((previous,))  # request order, whatever ended the one before
        self._add(entries)
        await self._put(payload_out)

    async def _forward(
        self, ctx: RequestContext, payload: bytes, backend: StreamingBackend
    ) -> None:
        """Decode + validate, admit, write upstream; the upstream's task answers it."""
        timings = ctx.timings
        model = request_id = ""
        try:
            try:
                self.service.check_size(len(payload))
                request = self._decode(payload)
                model, request_id = request.model, request.id
                self.service.validate(request)
            finally:
                timings.add_since("decode", timings.started)
            ctx.backend_name = backend.name
            release = await backend.admit(ctx)
        except asyncio.CancelledError:
            self.service.finish(model, ctx, "CANCELLED")
            raise
        except Exception as exc:
            await self._refuse(ctx, model, request_id, exc)
            return
        wants_empty_final = request.parameters.get(oip_stream.EMPTY_FINAL) is True
        in_flight = _InFlight(ctx, model, request_id, release, wants_empty_final)
        try:
            upstream = await self._upstream(backend, model, ctx)
        except BaseException as exc:
            release()
            if not isinstance(exc, Exception):
                self.service.finish(model, ctx, "CANCELLED")
                raise
            await self._refuse(ctx, model, request_id, exc)
            return
        upstream.add(request_id, in_flight)  # from here on, the upstream's bookkeeping owns it
        in_flight.sent = time.perf_counter()
        message = payload if wants_empty_final else oip_stream.with_empty_final(payload)
        if not await upstream.stream.send(message) and upstream.ended():
            # Ended before this request could be answered by it: answer it here.
            await self._fail(upstream, Unavailable(f"backend {backend.name!r} ended the stream"))

    async def _refuse(
        self, ctx: RequestContext, model: str, request_id: str, exc: Exception
    ) -> None:
        """Answer a request the gateway did not send upstream (bad input, queue full...)."""
        error = self.service.error_of(exc, self.protocol, "inference", model)
        self._add(self.service.finish(model, ctx, error.grpc_code))
        await self._put(_error_reply(error.message, request_id))

    async def _upstream(
        self, backend: StreamingBackend, model: str, ctx: RequestContext
    ) -> _Upstream:
        """This call's stream to ``backend`` for ``model``, opened on first use (again if
        it ended)."""
        key = (backend.name, model)
        upstream = self._upstreams.get(key)
        if upstream is not None and not upstream.ended():
            return upstream
        if upstream is None and len(self._upstreams) >= MAX_UPSTREAMS:
            raise ResourceExhausted(
                f"a stream carries requests for at most {MAX_UPSTREAMS} models; open another stream"
            )
        upstream = _Upstream(backend, await backend.open_stream(ctx))
        upstream.task = asyncio.get_running_loop().create_task(
            self._relay(upstream), name="infergw-stream-upstream"
        )
        self._upstreams[key] = upstream
        return upstream

    # -- the backend's side ----------------------------------------------------------------
    async def _relay(self, upstream: _Upstream) -> None:
        """Pass each response on; when the stream ends, answer what it left unanswered."""
        error: InferGWError | None = None
        try:
            async for reply in upstream.stream.responses():
                await self._on_reply(upstream, reply)
        except Exception as exc:
            error = self.service.error_of(exc, self.protocol, "ModelStreamInfer")
        if upstream.in_flight:
            name = upstream.backend.name
            await self._fail(upstream, error or Unavailable(f"backend {name!r} ended the stream"))

    async def _on_reply(self, upstream: _Upstream, reply: bytes) -> None:
        try:
            info = oip_stream.read_reply(reply)
        except WireError:
            await self._put(reply)  # not ours to read: passed on as it came
            return
        in_flight, shared = upstream.match(info.id)
        if in_flight is None:
            await self._put(reply)
            return
        in_flight.failed = in_flight.failed or bool(info.error)
        passed_on = not (info.empty_final and not in_flight.wants_empty_final)
        if passed_on:
            in_flight.responses += 1
            if not shared:
                reply = oip_stream.with_reply_parameter(reply, TIMING_KEY, self._split(in_flight))
        if info.completes:
            upstream.remove(info.id, in_flight)
            self._complete(in_flight)
        if passed_on:
            await self._put(reply)

    def _split(self, in_flight: _InFlight) -> str:
        """One response's Server-Timing: its request's phases, then backend and total."""
        ctx = in_flight.ctx
        desc = f"backend={ctx.backend_name};response={in_flight.responses}"
        backend_ms = (time.perf_counter() - in_flight.sent) * 1000.0
        entries = (
            *ctx.timings.entries,
            TimingEntry("backend", backend_ms, desc),
            TimingEntry("total", ctx.timings.elapsed_ms()),
        )
        return format_server_timing(entries)

    def _complete(self, in_flight: _InFlight) -> None:
        """Its last response came: release its slot, count it."""
        ctx = in_flight.ctx
        ctx.timings.add_since("backend", in_flight.sent, f"backend={ctx.backend_name}")
        in_flight.release()
        status = BACKEND_ERROR if in_flight.failed else "OK"
        self._add(self.service.finish(in_flight.model, ctx, status))

    async def _fail(self, upstream: _Upstream, error: InferGWError) -> None:
        """The stream ended under its requests: each gets ``error`` as its last response."""
        failed = upstream.drain()
        for request in failed:  # slots and counts first: nothing below can leak them
            request.release()
            self._add(self.service.finish(request.model, request.ctx, error.grpc_code))
        for request in failed:
            await self._put(_error_reply(error.message, request.id))

    # -- plumbing ----------------------------------------------------------------------
    async def _put(self, reply: bytes) -> None:
        await self._room.acquire()
        self._outbox.put_nowait(reply)

    def _add(self, entries: tuple[TimingEntry, ...]) -> None:
        sums = self._sums
        for name, duration_ms, _ in entries:
            if name != "total":
                sums[name] = sums.get(name, 0.0) + duration_ms

    async def _close(self, reader: asyncio.Task[None]) -> None:
        """End whatever still runs (the client left, or the call failed); release it all."""
        upstreams = list(self._upstreams.values())
        tasks = [reader, *self._calls, *(u.task for u in upstreams if u.task is not None)]
        for upstream in upstreams:
            upstream.stream.cancel()  # a finished call ignores it
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for upstream in upstreams:
            for request in upstream.drain():
                request.release()
                self.service.finish(request.model, request.ctx, "CANCELLED")


def _error_reply(message: str, request_id: str) -> bytes:
    """An error in the stream, as Triton sends one: the message, and the request's id."""
    reply = pb.ModelStreamInferResponse(error_message=message)
    if request_id:
        reply.infer_response.id = request_id
    return reply.SerializeToString()

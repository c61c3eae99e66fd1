"""S3 offload for payloads too large for a synchronous invoke, and their cleanup.

Every request gets its own key space ``<prefix><uuid>/`` in the gateway's bucket:
inputs go to ``.../in/<name>``, the function may write outputs under ``.../out/``.
References the function returns are honoured only inside that space, so a
function (or whoever controls its response) cannot make the gateway read or
delete anything else. Time spent in S3 is accumulated for ``offload``.

No object outlives its request, whatever ends it (success, error, deadline, a
client's cancel). ``Offload.release`` hands the request's cleanup to a task the
backend tracks, so a cancelled request answers at once and its objects still go:

- the cleanup first waits for the request's invoke, if one was under way: the
  function keeps running after the gateway stops listening and may still write
  outputs, so listing the space before it returns would miss them;
- a cleanup that fails (S3 unreachable or frozen) is retried with backoff;
- ``close`` gives pending cleanups a bounded grace, then cancels them.

What a crash leaves behind is the periodic sweep's: every ``sweep_interval_s`` it
deletes request objects under the prefix older than ``orphan_age_s``. That age
must exceed the longest request (the invoke's read timeout), or the sweep would
delete the objects of a request still in flight; the default, an hour, is four
times Lambda's 15-minute maximum.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from infergw.vocab.errors import BackendError

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_SWEEP_INTERVAL_S = 600.0
DEFAULT_ORPHAN_AGE_S = 3600.0
CLEANUP_ATTEMPTS = 8
CLEANUP_BACKOFF_S = (0.5, 30.0)  # first delay, cap: ~2.5 min of retries in all
CLOSE_GRACE_S = 10.0
# The key of an object in a request's space, relative to the gateway's prefix: the
# sweep touches nothing else under the prefix.
_REQUEST_KEY = re.compile(r"[0-9a-f]{32}/(in|out)/")


class OffloadSession:
    """The S3 objects of one request."""

    def __init__(self, client: Any, bucket: str, base_prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = f"{base_prefix}{uuid.uuid4().hex}/"
        self.created: set[str] = set()
        self.invoke: asyncio.Future[Any] | None = None  # the function may write until it ends
        self.elapsed_ms = 0.0
        self.calls = 0

    @property
    def output_target(self) -> dict[str, str]:
        return {"bucket": self.bucket, "prefix": self.prefix + "out/"}

    async def _timed(self, call: Awaitable[T]) -> T:
        t0 = time.perf_counter()
        try:
            return await call
        finally:
            self.elapsed_ms += (time.perf_counter() - t0) * 1000.0
            self.calls += 1

    async def put_input(self, name: str, data: bytes | memoryview) -> dict[str, str]:
        key = f"{self.prefix}in/{name}"
        self.created.add(key)  # before the call: a timed-out PUT may still land
        await self._timed(self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data)))
        return {"bucket": self.bucket, "key": key}

    def check_output_ref(self, ref: Any, name: str) -> str:
        """The key of an output reference, if it lies in this request's space; else refuse."""
        bucket = ref.get("bucket") if isinstance(ref, dict) else None
        key = ref.get("key") if isinstance(ref, dict) else None
        if bucket != self.bucket or not isinstance(key, str) or not key.startswith(self.prefix):
            raise BackendError(
                f"function returned output {name!r} as an S3 reference outside the gateway's "
                "offload bucket/prefix; refused"
            )
        return key

    async def get_output(self, key: str) -> bytes:
        self.created.add(key)

        async def fetch() -> bytes:
            reply = await self.client.get_object(Bucket=self.bucket, Key=key)
            async with reply["Body"] as body:
                data: bytes = await body.read()
                return data

        return await self._timed(fetch())

    async def cleanup(self, failed: bool) -> bool:
        """Delete every object of this request; True when done, never raises.

        After a failure the space is listed too: the function may have written
        outputs the gateway never heard of.
        """
        try:
            keys = set(self.created)
            if failed:
                keys |= await self._timed(list_keys(self.client, self.bucket, self.prefix))
            if keys:
                await self._timed(delete_keys(self.client, self.bucket, sorted(keys)))
        except Exception as exc:
            log.warning("S3 cleanup of %s failed: %s", self.prefix, type(exc).__name__)
            return False
        return True


class Offload:
    """The gateway's offload space: one session per request, the cleanups still under
    way (tracked, awaited on close) and the periodic orphan sweep."""

    def __init__(
        self,
        client: Callable[[], Awaitable[Any]],
        bucket: str,
        prefix: str,
        *,
        sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S,
        orphan_age_s: float = DEFAULT_ORPHAN_AGE_S,
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self.sweep_interval_s = sweep_interval_s  # <= 0: no sweep
        self.orphan_age_s = orphan_age_s
        self.sweeps = 0  # completed sweep passes (for tests and logs)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    async def session(self) -> OffloadSession:
        if self._sweeper is None and self.sweep_interval_s > 0 and not self._closing.is_set():
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="s3-offload-sweep")
        return OffloadSession(await self._client(), self.bucket, self.prefix)

    def release(self, session: OffloadSession, *, failed: bool) -> asyncio.Future[bool] | None:
        """Start the cleanup of ``session`` in a tracked task (None: nothing to clean).

        The task is independent of the request's: cancelling the request does not
        cancel it, and ``close`` waits for it. The future returned resolves after its
        first attempt (True: all gone), which a request may wait for; retries it need not.
        """
        if not session.created and (not failed or session.invoke is None):
            return None  # nothing uploaded or fetched, and no function that may have written
        first: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        name = f"s3-cleanup {session.prefix}"
        task = asyncio.create_task(self._clean(session, failed, first), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: _settle(first, False))  # cancelled before a try
        return first

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def _clean(
        self, session: OffloadSession, failed: bool, first: asyncio.Future[bool]
    ) -> None:
        invoke = session.invoke
        if invoke is not None and not invoke.done():
            failed = True  # the request gave up on the invoke: outputs may still appear
            with contextlib.suppress(Exception):  # its outcome was the request's business
                await invoke  # (cancelled with this task, on close)
        delay, cap = CLEANUP_BACKOFF_S
        for _ in range(CLEANUP_ATTEMPTS):
            done = await session.cleanup(failed)
            _settle(first, done)
            if done:
                return
            if self._closing.is_set():
                break
            with contextlib.suppress(TimeoutError):  # closing cuts the wait short: one last try
                await asyncio.wait_for(self._closing.wait(), delay)
            delay = min(cap, delay * 2)
        log.warning("S3 cleanup of %s gave up; the orphan sweep will remove it", session.prefix)

    async def sweep(self) -> int:
        """One pass: delete request objects under the prefix older than ``orphan_age_s``;
        the number deleted."""
        client = await self._client()
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.orphan_age_s)
        old = [
            obj["Key"]
            async for obj in _objects(client, self.bucket, self.prefix)
            if _REQUEST_KEY.match(obj["Key"], len(self.prefix)) and obj["LastModified"] < cutoff
        ]
        if old:
            await delete_keys(client, self.bucket, old)
            log.info("S3 sweep removed %d orphaned objects under %s", len(old), self.prefix)
        self.sweeps += 1
        return len(old)

    async def _sweep_forever(self) -> None:
        while not self._closing.is_set():
            try:
                await self.sweep()  # at once, too: what a crash left is oldest at start-up
            except Exception as exc:
                log.warning("S3 sweep of %s failed: %s", self.prefix, type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.sweep_interval_s)

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Stop the sweep; give pending cleanups ``grace_s``, then cancel what is left."""
        self._closing.set()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        tasks = set(self._tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
            log.warning("closed with %d S3 cleanups unfinished; the sweep removes them", len(late))


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


async def _objects(client: Any, bucket: str, prefix: str) -> AsyncIterator[dict[str, Any]]:
    paginator = client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            yield obj


async def list_keys(client: Any, bucket: str, prefix: str) -> set[str]:
    return {obj["Key"] async for obj in _objects(client, bucket, prefix)}


async def delete_keys(client: Any, bucket: str, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": k} for k in keys[i : i + 1000]]
        await client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})

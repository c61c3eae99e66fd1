"""S3 offload for payloads too large for a synchronous invoke, and their cleanup.

Every request gets its own key space ``<prefix><uuid>/`` in the gateway's bucket:
inputs go to ``.../in/<name>``, the function may write outputs under ``.../out/``.
References the function returns are honoured only inside that space, so a
function (or whoever controls its response) cannot make the gateway read or
delete anything else. ``cleanup`` removes every object of the request; after a
failure it also lists the space, because the function may have written outputs
the gateway never heard of. Time spent in S3 is accumulated for ``offload``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

from infergw.vocab.errors import BackendError

log = logging.getLogger(__name__)
T = TypeVar("T")


class OffloadSession:
    """The S3 objects of one request."""

    def __init__(self, client: Any, bucket: str, base_prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = f"{base_prefix}{uuid.uuid4().hex}/"
        self.created: set[str] = set()
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

    async def cleanup(self, failed: bool) -> None:
        """Delete every object of this request; never raises (the lifecycle rule is the
        backstop when S3 itself is unreachable)."""
        try:
            keys = set(self.created)
            if failed:
                keys |= await self._timed(self._list())
            if keys:
                await self._timed(self._delete(sorted(keys)))
        except Exception as exc:
            log.warning("S3 cleanup of %s failed: %s", self.prefix, type(exc).__name__)

    async def _list(self) -> set[str]:
        found: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            found.update(obj["Key"] for obj in page.get("Contents", ()))
        return found

    async def _delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            await self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )

"""The offload cleanup's order and persistence, against an in-memory S3 (no sockets)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from infergw.backends import _s3_offload
from infergw.backends._s3_offload import Offload

BUCKET = "b"


class FakeS3:
    """The calls OffloadSession and Offload make; ``down`` makes every call fail."""

    def __init__(self) -> None:
        self.objects: dict[str, dt.datetime] = {}
        self.down = False
        self.calls: list[str] = []

    def _check(self, op: str) -> None:
        self.calls.append(op)
        if self.down:
            raise ConnectionError("S3 unreachable")

    def put(self, key: str, age_s: float = 0.0) -> None:
        self.objects[key] = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_s)

    async def put_object(self, Bucket: str, Key: str, Body: bytes) -> None:
        self._check("put")
        self.put(Key)

    async def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> None:
        self._check("delete")
        for item in Delete["Objects"]:
            self.objects.pop(item["Key"], None)

    def get_paginator(self, name: str) -> FakeS3:
        assert name == "list_objects_v2"
        return self

    async def paginate(self, Bucket: str, Prefix: str) -> AsyncIterator[dict[str, Any]]:
        self._check("list")
        found = [{"Key": k, "LastModified": t} for k, t in self.objects.items()]
        yield {"Contents": [o for o in found if str(o["Key"]).startswith(Prefix)]}


def offload(s3: FakeS3, **options: Any) -> Offload:
    async def client() -> FakeS3:
        return s3

    return Offload(client, BUCKET, "gw/", sweep_interval_s=0, **options)


async def test_an_abandoned_invoke_is_outwaited_before_the_space_is_listed() -> None:
    s3 = FakeS3()
    space = offload(s3)
    session = await space.session()
    await session.put_input("x", b"1")
    finished = asyncio.Event()

    async def function() -> None:  # still running when the request gives up on it
        await finished.wait()
        s3.put(session.output_target["prefix"] + "late")

    session.invoke = asyncio.ensure_future(function())
    first = space.release(session, failed=True)
    assert first is not None
    await asyncio.sleep(0)
    assert s3.calls == ["put"] and space.pending == 1  # nothing listed while it runs
    finished.set()
    assert await first is True
    assert s3.objects == {} and s3.calls == ["put", "list", "delete"]


async def test_a_failed_cleanup_is_retried_until_s3_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_s3_offload, "CLEANUP_BACKOFF_S", (0.01, 0.02))
    s3 = FakeS3()
    space = offload(s3)
    session = await space.session()
    await session.put_input("x", b"1")
    s3.down = True
    first = space.release(session, failed=False)
    assert first is not None and await first is False  # the request's wait ends here
    s3.down = False
    async with asyncio.timeout(5):
        while space.pending:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert s3.objects == {}


async def test_close_cuts_the_backoff_short_with_one_last_try() -> None:
    s3 = FakeS3()
    space = offload(s3)  # default backoff: the first retry would wait 0.5 s
    session = await space.session()
    await session.put_input("x", b"1")
    s3.down = True
    first = space.release(session, failed=False)
    assert first is not None and await first is False
    s3.down = False
    async with asyncio.timeout(0.4):
        await space.close()
    assert s3.objects == {} and space.pending == 0


async def test_the_sweep_takes_old_request_objects_only() -> None:
    s3 = FakeS3()
    old, fresh = "gw/" + "a" * 32 + "/out/o", "gw/" + "b" * 32 + "/in/i"
    s3.put(old, age_s=120)
    s3.put(fresh, age_s=10)
    s3.put("gw/notes.txt", age_s=120)  # under the prefix, but not a request's object
    s3.put("gw/" + "c" * 32 + "/other", age_s=120)
    s3.put("else/" + "d" * 32 + "/in/i", age_s=120)  # not under the prefix
    assert await offload(s3, orphan_age_s=60).sweep() == 1
    assert old not in s3.objects and len(s3.objects) == 4

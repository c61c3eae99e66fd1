"""The loops run on a frozen heap: the collector's full passes skip what existed before."""

from __future__ import annotations

import gc

from infergw.loadgen import runner
from infergw.loadgen.recorder import Outcome


class CountingSender:
    sent_bytes = 0

    def __init__(self) -> None:
        self.frozen_during: list[int] = []

    async def send(self) -> Outcome:
        self.frozen_during.append(gc.get_freeze_count())
        return (None, None, 0)


async def test_the_heap_is_frozen_during_a_run_and_handed_back_after() -> None:
    keep = [object() for _ in range(1000)]  # objects that predate the run
    sender = CountingSender()
    assert gc.get_freeze_count() == 0
    await runner.closed_loop(sender, concurrency=1, max_requests=3)
    assert sender.frozen_during and min(sender.frozen_during) >= len(keep)
    assert gc.get_freeze_count() == 0


async def test_overlapping_runs_share_one_freeze() -> None:
    # Frozen objects can still die by refcount, so the count may only shrink while frozen.
    with runner.frozen_heap():
        frozen = gc.get_freeze_count()
        young = [[] for _ in range(10_000)]  # tracked objects made after the outer freeze
        with runner.frozen_heap():
            assert gc.get_freeze_count() <= frozen  # the inner run did not freeze again
        assert gc.get_freeze_count() > frozen - len(young)  # nor thaw the outer one
        del young
    assert gc.get_freeze_count() == 0

"""Admission slots resized at run time, and the reactive autoscaler that resizes them."""

import asyncio

import pytest

from infergw.gateway.core.autoscale import Autoscaler
from infergw.gateway.core.config import parse_config
from infergw.gateway.core.router import Router
from infergw.gateway.core.routing.config import AutoscaleConfig
from infergw.vocab.errors import InvalidArgument
from tests.unit.test_policies import REQUEST, GateBackend, admission, ctx, spawn

TRITON = {"kind": "triton", "url": "127.0.0.1:1"}  # never called: nothing is sent


async def test_growing_admits_the_waiters_at_once_and_shrinking_reuses_no_slot() -> None:
    gate = GateBackend()
    policy = admission(gate, limit=1, queue=4)
    calls = [await spawn(lambda: policy.infer(REQUEST, ctx())) for _ in range(3)]
    assert (policy.in_flight, policy.queued) == (1, 2)
    policy.resize(3)
    assert (policy.in_flight, policy.queued) == (3, 0)
    policy.resize(1)
    gate.release.set()
    await asyncio.gather(*calls)
    assert policy.in_flight == 0  # the two extra slots were not passed on, nor leaked
    gate.release.clear()
    held = [await spawn(lambda: policy.infer(REQUEST, ctx())) for _ in range(2)]
    assert (policy.in_flight, policy.queued) == (1, 1)  # one slot again
    gate.release.set()
    await asyncio.gather(*held)


async def test_shrinking_below_in_flight_queues_new_requests_until_enough_finish() -> None:
    gate = GateBackend()
    policy = admission(gate, limit=2, queue=2)
    first = [await spawn(lambda: policy.infer(REQUEST, ctx())) for _ in range(2)]
    policy.resize(1)
    late = await spawn(lambda: policy.infer(REQUEST, ctx()))
    assert (policy.in_flight, policy.queued) == (2, 1)
    gate.release.set()
    await asyncio.gather(*first, late)
    assert (policy.in_flight, policy.queued) == (0, 0)


def test_peak_demand_counts_in_flight_and_queued_and_resets_to_the_current() -> None:
    policy = admission(GateBackend(), limit=1, queue=4)
    assert policy.take_peak_demand() == 0
    with pytest.raises(ValueError):
        policy.resize(0)


async def test_peak_demand_is_the_most_at_once_since_the_last_read() -> None:
    gate = GateBackend()
    policy = admission(gate, limit=1, queue=4)
    calls = [await spawn(lambda: policy.infer(REQUEST, ctx())) for _ in range(3)]
    gate.release.set()
    await asyncio.gather(*calls)
    assert policy.take_peak_demand() == 3
    assert policy.take_peak_demand() == 0  # nothing since, nothing now


class FakeSlots:
    def __init__(self, slots: int) -> None:
        self.max_concurrency = slots
        self.peaks: list[int] = []
        self.sizes: list[int] = []

    def resize(self, max_concurrency: int) -> None:
        self.max_concurrency = max_concurrency
        self.sizes.append(max_concurrency)

    def take_peak_demand(self) -> int:
        return self.peaks.pop(0) if self.peaks else 0


def scaler(slots: FakeSlots, **config: float) -> Autoscaler:
    cfg = AutoscaleConfig.model_validate({"max_slots": 8, **config})
    return Autoscaler("triton", slots, cfg, clock=lambda: 0.0)


def test_ordered_slots_serve_after_the_provisioning_delay_and_are_billed_from_the_order() -> None:
    slots = FakeSlots(1)
    s = scaler(slots, provision_delay_s=10, idle_release_s=30)
    slots.peaks = [5]
    s.step(now=1.0)
    assert (s.ready, len(s.provisioning), slots.sizes) == (1, 4, [])
    s.step(now=10.9)
    assert s.ready == 1  # not yet
    s.step(now=11.0)
    assert (s.ready, slots.sizes) == (5, [5])
    # 1 slot for 1 s, then 5 (1 ready + 4 provisioning) for 10 s, then 5 ready for 4 s.
    assert s.slot_seconds(now=15.0) == pytest.approx(1 + 5 * 10 + 5 * 4)


def test_slots_no_step_wanted_for_the_idle_time_are_released_down_to_the_floor() -> None:
    slots = FakeSlots(2)
    s = scaler(slots, provision_delay_s=0, idle_release_s=5)
    slots.peaks = [6, 3]
    s.step(now=0.0)
    assert slots.sizes == [6]
    s.step(now=1.0)  # wants 3, but 6 were wanted within the last 5 s
    s.step(now=5.0)
    assert s.ready == 6
    s.step(now=6.0)  # 6 wanted at t=0 is out of the window; 3 (t=1) is still in it
    assert (s.ready, slots.sizes) == (3, [6, 3])
    s.step(now=20.0)
    assert (s.ready, slots.sizes[-1]) == (2, 2)  # never below the configured floor


def test_wanted_slots_are_capped_and_scaled_by_the_target_utilization() -> None:
    slots = FakeSlots(1)
    s = scaler(slots, provision_delay_s=0, target_utilization=0.5, max_slots=8)
    slots.peaks = [3, 40]
    s.step(now=0.0)
    assert s.ready == 6
    s.step(now=1.0)
    assert s.ready == 8


def test_an_order_in_flight_is_not_placed_twice() -> None:
    slots = FakeSlots(1)
    s = scaler(slots, provision_delay_s=10)
    slots.peaks = [4, 4, 6]
    s.step(now=0.0)
    s.step(now=1.0)
    assert len(s.provisioning) == 3
    s.step(now=2.0)
    assert len(s.provisioning) == 5  # two more for the higher peak


async def test_the_router_scales_the_configured_backend_and_stops_with_it() -> None:
    config = parse_config(
        {
            "backends": {
                "triton": {
                    **TRITON,
                    "max_concurrency": 1,
                    "autoscale": {"max_slots": 3, "provision_delay_s": 0, "interval_s": 0.01},
                }
            },
            "models": {"identity": "triton"},
        }
    )
    router = Router.from_config(config)
    scaler = router.autoscalers.scalers["triton"]
    await router.start()
    try:
        assert scaler._task is not None and not scaler._task.done()
    finally:
        await router.close()
    assert scaler._task is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"max_concurrency": 4, "autoscale": {"max_slots": 2}}, "must be >= max_concurrency"),
        ({"autoscale": {"max_slots": 4, "target_utilization": 1.5}}, "target_utilization"),
        ({"autoscale": {"provision_delay_s": 3}}, "max_slots"),
    ],
)
def test_bad_autoscale_sections_are_refused_with_the_key(section: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_config({"backends": {"triton": {**TRITON, **section}}, "models": {"m": "triton"}})

"""Reactive autoscaling of an always-on backend's slots: a VM pool, emulated.

``autoscale: {max_slots, provision_delay_s, idle_release_s, interval_s,
target_utilization}`` on an always-on backend makes its admission slots (the backend's
``max_concurrency``, the floor) follow the load the way Spock's VM-only baseline does
(Gunasekaran et al., IEEE CLOUD'19): capacity is ordered when demand exceeds it and
serves only after a provisioning delay; it is released after it was not needed for an
idle time. On the local stack one Triton process stands for the pool, so what changes is
how many requests the gateway lets in at once — the capacity a pool of that many slots
would have, not new processes. Say so wherever its figures are shown.

Every ``interval_s`` a control step reads the peak demand since the last step (requests
in flight plus queued, ``Admission.take_peak_demand``), wants
``ceil(peak / target_utilization)`` slots (floor..max_slots), orders what is short of
ready + ordered, and releases ready slots above the most any step wanted within the last
``idle_release_s``. Ordered slots are billed from the order, as a VM is from its launch:
``infergw_backend_slot_seconds_total`` counts ready + provisioning slot-seconds, and
``infergw_backend_slots{state}`` shows both counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infergw.gateway.core.routing.config import AutoscaleConfig
from infergw.gateway.lifecycle import AsyncService

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Slots(Protocol):
    """What the autoscaler drives (``policies.Admission``)."""

    @property
    def max_concurrency(self) -> int: ...

    def resize(self, max_concurrency: int) -> None: ...

    def take_peak_demand(self) -> int: ...


class Autoscaler(AsyncService):
    """One backend's slots, scaled by ``step`` every ``interval_s`` while started."""

    def __init__(
        self,
        backend: str,
        slots: Slots,
        config: AutoscaleConfig,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.backend = backend
        self.slots = slots
        self.config = config
        self.floor = slots.max_concurrency
        self.ready = self.floor
        self.provisioning: deque[float] = deque()  # when each ordered slot joins
        self._clock = clock
        self._sleep = sleep
        self._wanted: deque[tuple[float, int]] = deque()  # (time, slots wanted) per step
        self._billed_s = 0.0  # slot-seconds up to _billed_at
        self._billed_at = clock()
        self._task: asyncio.Task[None] | None = None

    def slot_seconds(self, now: float | None = None) -> float:
        """Ready plus provisioning slot-seconds since the start: what a pool would bill."""
        now = self._clock() if now is None else now
        return self._billed_s + (self.ready + len(self.provisioning)) * (now - self._billed_at)

    def step(self, now: float | None = None) -> None:
        """One control step (the loop calls it every ``interval_s``; tests call it)."""
        now = self._clock() if now is None else now
        self._billed_s = self.slot_seconds(now)
        self._billed_at = now
        joined = 0
        while self.provisioning and self.provisioning[0] <= now:
            self.provisioning.popleft()
            joined += 1
        cfg = self.config
        peak = self.slots.take_peak_demand()
        wanted = min(cfg.max_slots, max(self.floor, math.ceil(peak / cfg.target_utilization)))
        short = wanted - self.ready - joined - len(self.provisioning)
        if short > 0 and cfg.provision_delay_s == 0:
            joined, short = joined + short, 0
        self.provisioning.extend([now + cfg.provision_delay_s] * max(short, 0))
        self._wanted.append((now, wanted))
        while self._wanted and self._wanted[0][0] < now - cfg.idle_release_s:
            self._wanted.popleft()
        needed = max(w for _, w in self._wanted)
        released = max(0, min(self.ready + joined - self.floor, self.ready + joined - needed))
        if joined or released:
            self.ready += joined - released
            self.slots.resize(self.ready)
            log.info(
                "backend %s: %d slots ready (%+d), %d provisioning",
                self.backend,
                self.ready,
                joined - released,
                len(self.provisioning),
            )
        elif short > 0:
            log.info(
                "backend %s: %d slots ordered, ready in %gs",
                self.backend,
                short,
                cfg.provision_delay_s,
            )

    async def start(self) -> None:
        if self._task is None:
            self._billed_at = self._clock()
            self._task = asyncio.create_task(self._run(), name=f"autoscale {self.backend}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await self._sleep(self.config.interval_s)
            try:
                self.step()
            except Exception:  # one bad step must not end the scaling
                log.exception("autoscale step of backend %s failed", self.backend)


class AutoscalerSet(AsyncService):
    """Every autoscaled backend's scaler, by backend name: started and stopped with the
    router, collected for the metrics endpoint."""

    def __init__(self, scalers: Mapping[str, Autoscaler]) -> None:
        self.scalers = dict(scalers)

    async def start(self) -> None:
        for scaler in self.scalers.values():
            await scaler.start()

    async def stop(self) -> None:
        await asyncio.gather(*(scaler.stop() for scaler in self.scalers.values()))

    def collector(self) -> AutoscaleCollector:
        return AutoscaleCollector(self.scalers)


class AutoscaleCollector(Collector):
    def __init__(self, scalers: Mapping[str, Autoscaler]) -> None:
        self.scalers = scalers

    def collect(self) -> Iterator[Metric]:
        slots = GaugeMetricFamily(
            "infergw_backend_slots",
            "Always-on slots of an autoscaled backend: ready, and ordered but provisioning",
            labels=("backend", "state"),
        )
        billed = CounterMetricFamily(
            "infergw_backend_slot_seconds",
            "Slot-seconds an autoscaled backend held (ready + provisioning), as a pool bills",
            labels=("backend",),
        )
        for name, scaler in self.scalers.items():
            slots.add_metric([name, "ready"], scaler.ready)
            slots.add_metric([name, "provisioning"], len(scaler.provisioning))
            billed.add_metric([name], scaler.slot_seconds())
        yield slots
        yield billed

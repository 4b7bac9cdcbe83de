"""Event-loop lag probe: how late a short sleep wakes up is how long something blocked the loop."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import msgspec

__all__ = ["LoopLag", "LoopMonitor"]

_INTERVAL = 0.05
_WINDOW = 60.0


class LoopLag(msgspec.Struct, frozen=True):
    """Lag of the event loop in milliseconds over the last minute."""

    samples: int
    p50: float
    p99: float
    max: float


class LoopMonitor:
    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._probe(), name="loop-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _probe(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(_INTERVAL)
            now = time.perf_counter()
            self._samples.append((now, max(now - before - _INTERVAL, 0.0) * 1000))
            while self._samples and self._samples[0][0] < now - _WINDOW:
                self._samples.popleft()

    def lag(self) -> LoopLag:
        values = sorted(lag for _, lag in self._samples)
        if not values:
            return LoopLag(samples=0, p50=0.0, p99=0.0, max=0.0)

        def pick(q: float) -> float:
            return round(values[min(len(values) - 1, int(q * len(values)))], 2)

        return LoopLag(samples=len(values), p50=pick(0.5), p99=pick(0.99), max=round(values[-1], 2))

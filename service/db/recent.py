"""A database read shared for a moment: answers that poll the database (/health, /status) without
making every request wait on it.

`Recent.get(read)` returns the last value read if it is younger than `max_age` and still `trusted()`;
once it is older than `refresh_after`, one read starts in the background, so under steady traffic no
request waits on the database and the database sees at most one read per `refresh_after`. A caller
that finds no usable value waits for a read, shared with every other caller waiting then; its error
reaches all of them, and the value is dropped. Ages count from the moment the read was sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Recent"]

T = TypeVar("T")


def _always() -> bool:
    return True


class Recent(Generic[T]):
    def __init__(
        self,
        *,
        refresh_after: float,
        max_age: float,
        trusted: Callable[[], bool] = _always,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert 0 <= refresh_after <= max_age
        self._refresh_after = refresh_after
        self._max_age = max_age
        self._trusted = trusted
        self._clock = clock
        self._value: tuple[float, T] | None = None
        self._inflight: asyncio.Future[T] | None = None

    async def get(self, read: Callable[[], Awaitable[T]]) -> T:
        kept = self._value
        if kept is not None and self._trusted():
            age = self._clock() - kept[0]
            if age < self._max_age:
                if age >= self._refresh_after and self._inflight is None:
                    self._start(read)
                return kept[1]
        self._value = None
        inflight = self._inflight if self._inflight is not None else self._start(read)
        # Shielded: a caller that goes away (client disconnect) must not cancel the shared read.
        return await asyncio.shield(inflight)

    @property
    def reading(self) -> bool:
        """Whether a read is in flight."""
        return self._inflight is not None

    def forget(self) -> None:
        """Drop the value: the next caller waits for a read."""
        self._value = None

    async def close(self) -> None:
        """Cancel a read in flight and drop the value."""
        self._value = None
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.wait([self._inflight])

    def _start(self, read: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        sent_at = self._clock()
        inflight = self._inflight = asyncio.ensure_future(read())

        def finished(future: asyncio.Future[T]) -> None:
            if self._inflight is future:
                self._inflight = None
            if future.cancelled():
                return
            if future.exception() is not None:  # retrieved: no "never retrieved" warning
                self._value = None
            else:
                self._value = (sent_at, future.result())

        inflight.add_done_callback(finished)
        return inflight

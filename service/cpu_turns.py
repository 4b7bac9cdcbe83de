"""Pacing CPU-heavy steps (decoding and encoding pages) against the event loop.

A backfill can have twenty pages ready at once; run back to back they hold the loop for tens of
milliseconds and an API request waits behind all of them. A turn is taken like a lock but handed
back on the *next* loop iteration, so at most one heavy step runs per iteration and requests get
in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["CpuTurns"]


class CpuTurns:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold the turn for one CPU-bound step (no awaits inside)."""
        await self._lock.acquire()
        try:
            yield
        finally:
            asyncio.get_running_loop().call_soon(self._lock.release)

"""The live event stream: every task and execution-log change, and every streamed candle (its open
updates at most once a second, and its close), from every process, to every subscriber.

A trigger announces each change on EVENTS_CHANNEL (migration 0007) when its transaction commits, so
a task run by a worker reaches a browser connected to a web process. The hub fans each
notification out to its subscribers' bounded queues; a subscriber that falls behind, or a moment
when notifications may have been lost (the LISTEN connection dropped), gets a `resync` event: read
the current state through the API again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from service.db.listener import EVENTS_CHANNEL
from service.logging import get_logger

__all__ = ["EVENTS_CHANNEL", "RESYNC", "EventHub"]

log = get_logger(__name__)

#: Sent when events may have been missed.
RESYNC: dict[str, Any] = {"type": "resync"}
_QUEUE_SIZE = 1000


class EventHub:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any] | None]] = set()

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def notified(self, payload: str | None) -> None:
        """A notification (None: the connection was reopened, events may have been missed)."""
        if not self._queues:
            return
        if payload is None:
            event = RESYNC
        else:
            try:
                event = json.loads(payload)
            except ValueError:
                log.warning("event_not_json", payload=payload[:200])
                return
        # Streamed candles come several to a notification: one event each.
        events = [{"type": "candle", **c} for c in event["candles"]] if event.get("type") == "candles" else [event]
        for queue in self._queues:
            for one in events:
                if queue.full():  # a slow reader: drop what it has not read, and tell it so
                    while not queue.empty():
                        queue.get_nowait()
                    queue.put_nowait(RESYNC)
                queue.put_nowait(one)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any] | None]]:
        """A queue of events (None: the hub is closing) for as long as the block lasts."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=_QUEUE_SIZE)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def close(self) -> None:
        """End every subscription (shutdown: open streams must not hold the server up)."""
        for queue in self._queues:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)

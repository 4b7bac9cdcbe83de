"""The process's one LISTEN connection (outside the pool: pooled connections are reset and shared).

Parts of the process subscribe to channels before it starts: the task runner (task events wake
it), the event stream (every task and execution-log change). The connection is reopened when it
drops; each subscriber is then called with `None` (anything sent meanwhile was missed: look again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg

from service.db.pool import CONNECTION_LOST, domain_errors, open_connection
from service.errors import DatabaseUnavailableError
from service.logging import get_logger

__all__ = ["EVENTS_CHANNEL", "Listener", "NotificationCallback"]

log = get_logger(__name__)

#: The channel of the live event stream: task and execution-log changes (triggers of migration
#: 0007), and streamed candles (service/db/live.py).
EVENTS_CHANNEL = "kline_collector_events"

#: Called with a notification's payload, or with None when notifications may have been missed.
NotificationCallback = Callable[[str | None], None]

_RETRY_SECONDS = 2.0


class Listener:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._subscribers: dict[str, list[NotificationCallback]] = {}
        self._conn: asyncpg.Connection[Any] | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listening = False

    def subscribe(self, channel: str, callback: NotificationCallback) -> None:
        """Call `callback` for every notification on `channel` (subscribe before `start`)."""
        self._subscribers.setdefault(channel, []).append(callback)

    @property
    def channels(self) -> list[str]:
        return list(self._subscribers)

    @property
    def listening(self) -> bool:
        """True while every channel is listened to on a connection not known to be lost: what is
        cached on the strength of notifications may be kept only then."""
        return self._listening

    def start(self) -> None:
        """Listen in the background, reconnecting after a drop (polling covers the gaps)."""
        if self._task is None and self._subscribers:
            self._task = asyncio.create_task(self._run(), name="listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._close()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen_until_lost()
                log.warning("listener_lost")
            except DatabaseUnavailableError as exc:
                log.debug("listener_unavailable", error=exc.detail)
            await self._close()
            await asyncio.sleep(_RETRY_SECONDS)

    async def _listen_until_lost(self) -> None:
        self._lost.clear()
        self._conn = await open_connection(self._dsn, timeout=10)
        with domain_errors():
            self._conn.add_termination_listener(self._terminated)
            for channel in self._subscribers:
                await self._conn.add_listener(channel, self._notified)
        self._listening = not self._lost.is_set()
        for callbacks in self._subscribers.values():  # anything sent while we were not listening
            for callback in callbacks:
                callback(None)
        await self._lost.wait()

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        for callback in self._subscribers.get(channel, []):
            callback(payload if isinstance(payload, str) else None)

    def _terminated(self, conn: object) -> None:
        self._listening = False
        self._lost.set()

    async def _close(self) -> None:
        self._listening = False
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=2.0)
        except CONNECTION_LOST:  # TimeoutError is an OSError
            conn.terminate()

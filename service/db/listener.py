"""A LISTEN connection of its own (outside the pool: pooled connections are reset and shared)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg

from service.db.pool import CONNECTION_LOST, domain_errors, open_connection

__all__ = ["Listener"]


class Listener:
    def __init__(self, dsn: str, channel: str, on_notify: Callable[[], None]) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_notify = on_notify
        self._conn: asyncpg.Connection[Any] | None = None
        self._lost = asyncio.Event()

    async def listen_until_lost(self) -> None:
        """Connect and listen; `on_notify` is called once listening starts (anything sent before was
        missed) and on every notification. Returns when the connection drops;
        DatabaseUnavailableError if it cannot be opened."""
        self._lost.clear()
        self._conn = await open_connection(self._dsn, timeout=10)
        with domain_errors():
            self._conn.add_termination_listener(self._terminated)
            await self._conn.add_listener(self._channel, self._notified)
        self._on_notify()
        await self._lost.wait()

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._on_notify()

    def _terminated(self, conn: object) -> None:
        self._lost.set()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=2.0)
        except CONNECTION_LOST:  # TimeoutError is an OSError
            conn.terminate()

"""This process's part in live collection: per venue with streams, one process streams them at a time.

For each enabled venue with a stream client, `LiveStreams` watches the venue's live configs (a
short query every LIVE_POLL_SECONDS). While there are some, it tries to take the venue's live lock
(a session advisory lock on a connection of its own, service/db/live.py); the process holding it
runs the venue's `LiveVenue`, follows the configs (subscribing and unsubscribing as they change),
and checks its lock's connection on every poll. A process killed loses the lock with its
connection, and a peer takes the streams over within a poll or two, healing the gap over REST (the
collector resumes at each series' stored end); a process stopping (SIGTERM) releases it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import asyncpg

from service.collection.collector import Collector
from service.collection.live import LiveVenue
from service.db import live as live_db
from service.db.pool import Pool, connection
from service.errors import DatabaseUnavailableError
from service.exchanges.streams import KlineStream
from service.exchanges.venue_set import VenueSet
from service.logging import get_logger
from service.metrics import Metrics

__all__ = ["LIVE_POLL_SECONDS", "LiveStreams"]

log = get_logger(__name__)

#: How often the live configs are read (and the lock's connection checked) while streaming; a
#: config change is followed within this, and so is a peer's death.
LIVE_POLL_SECONDS = 1.0


class LiveStreams:
    """The live venues of this process (those whose lock it holds), started and stopped with it."""

    def __init__(
        self,
        dsn: str,
        pool: Pool,
        venues: VenueSet,
        streams: Mapping[str, KlineStream | None],
        collectors: Mapping[str, Collector],
        session: aiohttp.ClientSession,
        *,
        statement_cache_size: int,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self._venues = venues
        self._streams = streams
        self._collectors = collectors
        self._session = session
        self._statement_cache_size = statement_cache_size
        self._clock = clock
        self._metrics = metrics
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._venue(venue)) for venue in self._streams]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _venue(self, venue: str) -> None:
        """Forever: wait for live configs, take the lock, stream while both last. A process waiting
        for the lock keeps its one connection and asks again on it each poll."""
        lock: asyncpg.Connection[Any] | None = None
        try:
            while True:
                try:
                    if await self._live_pairs(venue):
                        if lock is None:
                            lock = await live_db.open_lock_connection(
                                self._dsn, statement_cache_size=self._statement_cache_size
                            )
                        held = lock
                        if await live_db.take_venue_lock(held, venue):
                            lock = None  # the lock goes with its connection, whatever ends the streaming
                            try:
                                await self._stream(venue, held)
                            finally:
                                with contextlib.suppress(Exception):
                                    await held.close(timeout=2)
                except DatabaseUnavailableError as exc:
                    log.warning("live_paused", exchange=venue, error=str(exc)[:300])
                    if lock is not None:
                        lock.terminate()
                        lock = None
                except Exception:  # a bug must not end live collection for good: logged, then tried again
                    log.exception("live_failed", exchange=venue)
                await asyncio.sleep(LIVE_POLL_SECONDS)
        finally:
            if lock is not None:
                lock.terminate()

    async def _live_pairs(self, venue: str) -> list[tuple[str, str]]:
        async with connection(self._pool) as conn:
            return await live_db.live_series(conn, venue)

    async def _stream(self, venue: str, lock: asyncpg.Connection[Any]) -> None:
        live = LiveVenue(
            venue, self._streams[venue], self._venues[venue], self._session, self._pool, self._collectors[venue],
            clock=self._clock, metrics=self._metrics,
        )
        log.info("live_started", exchange=venue)
        writing = asyncio.create_task(live.run())
        try:
            while not writing.done():
                pairs = await self._live_pairs(venue)
                await live.sync(pairs)
                if not pairs:
                    break  # nothing live any more: leave the lock to whoever gets configs next
                await live_db.check_lock(lock)
                async with connection(self._pool) as conn:
                    await live_db.publish_state(conn, venue, live.snapshot())
                await asyncio.wait([writing], timeout=LIVE_POLL_SECONDS)
            if writing.done():
                writing.result()  # a writer's bug surfaces here
        finally:
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing
            with contextlib.suppress(Exception):  # else it ages out of /api/v1/live within seconds
                async with connection(self._pool) as conn:
                    await live_db.drop_state(conn, venue)
            log.info("live_stopped", exchange=venue)

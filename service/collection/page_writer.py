"""Group commit for a run's pages: the pages of many series written together, one transaction each batch.

Each series writes its pages strictly in order and waits for each write, so a batch holds at most
one page per series. A page handed in while no writer runs goes at once; one handed in while the
writer is busy waits for its next batch (a second writer starts only for a backlog of big pages,
which PostgreSQL then writes in parallel): batching adds no wait, it only gathers what queued up
meanwhile. A run of 300 one-page series thus pays a transaction's round trips
(BEGIN, COPY, ledger, COMMIT) a handful of times rather than 300 times.

A batch the database refuses for a bad value (RowRefusedError) is written again page by page, so
that only the page holding it is refused (its series checks it again and writes the rest).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from service.db import klines as klines_db
from service.errors import RowRefusedError

__all__ = ["PageWriter"]

#: Writes a batch of pages in one transaction (klines.store_pages on a write connection, retried
#: while the database is away); per page, the candles inserted or changed.
StoreBatch = Callable[[list[klines_db.PageWrite]], Awaitable[list[int]]]

# A second writer starts only while at least this many candles wait (two pages of a backfill).
_PARALLEL_WRITE_CANDLES = 2_000
# Candles per batch at most (a page larger than this goes alone): big enough that small pages
# share their round trips, small enough that a batch is a few tens of milliseconds of COPY.
_BATCH_CANDLES = 20_000


class _Queued:
    __slots__ = ("candles", "done", "page")

    def __init__(self, page: klines_db.PageWrite, candles: int, done: asyncio.Future[int]) -> None:
        self.page = page
        self.candles = candles
        self.done = done


class PageWriter:
    """Writes a run's checked pages in batches across series; `write` returns when its page is stored."""

    def __init__(
        self,
        store: StoreBatch,
        *,
        writers: int,
        on_write: Callable[[int, float], None] = lambda pages, seconds: None,
    ) -> None:
        self._store_batch = store
        self._on_write = on_write
        self._writers = writers
        self._queue: list[_Queued] = []
        self._queued_candles = 0
        self._flushers: set[asyncio.Task[None]] = set()

    async def write(self, page: klines_db.PageWrite, candles: int) -> int:
        """Store `page` (holding `candles` candles); how many candles were inserted or changed."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        # Settled after its writer stopped waiting (cancelled): nobody reads it, and that is fine.
        done.add_done_callback(_retrieve)
        self._queue.append(_Queued(page, candles, done))
        self._queued_candles += candles
        # A further writer only for a backlog worth writing in parallel: small pages (many one-page
        # series) gather behind one writer into fewer, larger transactions.
        if not self._flushers or (
            len(self._flushers) < self._writers and self._queued_candles >= _PARALLEL_WRITE_CANDLES
        ):
            self._flushers.add(asyncio.create_task(self._flush(), name="page-writer"))
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            # The caller is stopping: a page not yet taken into a batch is never written. One in a
            # batch under way is committed or rolled back with it (aclose waits for that).
            if not done.done():
                self._queue = [q for q in self._queue if q.done is not done]
                self._queued_candles = sum(q.candles for q in self._queue)
                done.cancel()
            raise

    async def aclose(self) -> None:
        """Stop: pages still queued are dropped, batches under way are cancelled (rolled back)."""
        for queued in self._queue:
            queued.done.cancel()
        self._queue.clear()
        self._queued_candles = 0
        flushers = list(self._flushers)
        for flusher in flushers:
            flusher.cancel()
        await asyncio.gather(*flushers, return_exceptions=True)

    def _take(self) -> list[_Queued]:
        batch: list[_Queued] = []
        candles = 0
        rest: list[_Queued] = []
        series: set[int] = set()
        for queued in self._queue:
            sid = queued.page.encoded.series_id
            fits = not batch or candles + queued.candles <= _BATCH_CANDLES
            if fits and sid not in series and not queued.done.done():
                batch.append(queued)
                series.add(sid)
                candles += queued.candles
            elif not queued.done.done():
                rest.append(queued)
        self._queue = rest
        self._queued_candles = sum(q.candles for q in rest)
        return batch

    async def _flush(self) -> None:
        try:
            while batch := self._take():
                try:
                    await self._store(batch)
                except asyncio.CancelledError:
                    for queued in batch:
                        queued.done.cancel()
                    raise
        finally:
            # Leaves the set in the same step that found the queue empty: a page handed in after
            # this starts a new writer (a done-callback would leave it waiting on a writer that stopped).
            task = asyncio.current_task()
            if task is not None:
                self._flushers.discard(task)

    async def _store(self, batch: list[_Queued]) -> None:
        began = time.perf_counter()
        try:
            written = await self._store_batch([q.page for q in batch])
        except RowRefusedError as exc:
            if len(batch) == 1:
                _settle(batch[0].done, exc)
                return
            for queued in batch:  # again one by one: only the page holding the bad value is refused
                await self._store([queued])
            return
        except Exception as exc:  # the database is away (after retries), or a bug: every page fails
            for queued in batch:
                _settle(queued.done, exc)
            return
        self._on_write(len(batch), time.perf_counter() - began)
        for queued, count in zip(batch, written, strict=True):
            if not queued.done.done():
                queued.done.set_result(count)


def _retrieve(done: asyncio.Future[int]) -> None:
    if not done.cancelled():
        done.exception()


def _settle(done: asyncio.Future[int], exc: BaseException) -> None:
    if not done.done():
        done.set_exception(exc)

"""The group commit of a run's pages: what shares a transaction, what is isolated, what is never written."""

from __future__ import annotations

import asyncio

import pytest

from service.collection.page_writer import PageWriter
from service.db.klines import EncodedPage, PageWrite
from service.errors import DatabaseUnavailableError, RowRefusedError


def page(series_id: int, rows: int = 1) -> PageWrite:
    return PageWrite(EncodedPage(series_id=series_id, overlap=b"", fresh=b"x" * rows, fresh_count=rows))


class Store:
    """A store that holds each batch until released, and records the batches it was given."""

    def __init__(self, refuse: set[int] | None = None, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.refuse = refuse or set()
        self.fail = fail

    async def __call__(self, pages: list[PageWrite]) -> list[int]:
        ids = [p.encoded.series_id for p in pages]
        self.batches.append(ids)
        await self.release.wait()
        if self.fail:
            raise DatabaseUnavailableError("the database connection failed")
        if self.refuse & set(ids):
            raise RowRefusedError("the database refused a row (klines_candle_valid)", constraint="klines_candle_valid")
        return [p.encoded.fresh_count for p in pages]


async def test_pages_handed_in_while_the_writers_are_busy_share_the_next_transaction() -> None:
    """The first pages go at once, one per free writer; those that queue meanwhile go together."""
    store = Store()
    store.release.clear()
    writer = PageWriter(store, writers=2)
    writes = [asyncio.create_task(writer.write(page(1, rows=1), 1))]
    await asyncio.sleep(0.01)
    writes += [asyncio.create_task(writer.write(page(i, rows=i), i)) for i in range(2, 11)]
    await asyncio.sleep(0.01)
    assert store.batches == [[1]]  # the writer is busy; 2..10 wait (too few candles for a second writer)
    store.release.set()
    assert await asyncio.gather(*writes) == list(range(1, 11))
    assert store.batches[1:] == [[2, 3, 4, 5, 6, 7, 8, 9, 10]]


async def test_a_backlog_of_big_pages_is_written_by_two_writers_at_once() -> None:
    """Pages of a backfill (a thousand candles each) waiting behind a busy writer start the second one."""
    store = Store()
    store.release.clear()
    writer = PageWriter(store, writers=2)
    writes = [asyncio.create_task(writer.write(page(1, rows=1000), 1000))]
    await asyncio.sleep(0.01)
    writes += [asyncio.create_task(writer.write(page(i, rows=1000), 1000)) for i in (2, 3)]
    await asyncio.sleep(0.01)
    assert store.batches == [[1], [2, 3]]  # 2,000 candles waiting: a second writer took them
    store.release.set()
    assert await asyncio.gather(*writes) == [1000] * 3


async def test_a_refused_value_fails_only_its_own_page() -> None:
    """A batch the database refuses is written again page by page: only the page holding the bad
    value gets the refusal (its series checks it again), the others are stored."""
    store = Store(refuse={7})
    store.release.clear()
    writer = PageWriter(store, writers=1)
    first = asyncio.create_task(writer.write(page(1), 1))
    await asyncio.sleep(0.01)
    others = {i: asyncio.create_task(writer.write(page(i), 1)) for i in (5, 6, 7, 8)}
    await asyncio.sleep(0.01)
    store.release.set()
    assert await first == 1
    with pytest.raises(RowRefusedError):
        await others[7]
    assert [await others[i] for i in (5, 6, 8)] == [1, 1, 1]
    assert store.batches == [[1], [5, 6, 7, 8], [5], [6], [7], [8]]


async def test_a_database_away_fails_every_page_of_the_batch() -> None:
    store = Store(fail=True)
    writer = PageWriter(store, writers=1)
    results = await asyncio.gather(*(writer.write(page(i), 1) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, DatabaseUnavailableError) for r in results)


async def test_a_page_whose_writer_was_cancelled_before_its_batch_is_never_written() -> None:
    store = Store()
    store.release.clear()
    writer = PageWriter(store, writers=1)
    busy = asyncio.create_task(writer.write(page(1), 1))
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(writer.write(page(2), 1))
    await asyncio.sleep(0.01)
    queued.cancel()
    await asyncio.sleep(0)
    store.release.set()
    assert await busy == 1
    with pytest.raises(asyncio.CancelledError):
        await queued
    await writer.aclose()
    assert store.batches == [[1]]


async def test_a_page_handed_in_just_as_the_last_writer_stops_is_written() -> None:
    """Writers stop when the queue is empty; the next page starts a new one rather than waiting."""
    store = Store()
    writer = PageWriter(store, writers=1)
    for i in range(20):
        assert await asyncio.wait_for(writer.write(page(i), 1), 1.0) == 1
        await asyncio.sleep(0)  # the writer that wrote it is ending now
    assert len(store.batches) == 20


async def test_one_page_per_series_in_a_batch_and_a_size_bound() -> None:
    """Two pages of one series never share a batch (a series writes in order), and a batch holds at
    most about 20,000 candles."""
    store = Store()
    store.release.clear()
    writer = PageWriter(store, writers=1)
    tasks = [asyncio.create_task(writer.write(page(0), 1))]
    await asyncio.sleep(0.01)
    tasks += [asyncio.create_task(writer.write(page(i), 9_000)) for i in (1, 2, 3)]
    tasks.append(asyncio.create_task(writer.write(page(1), 1)))
    await asyncio.sleep(0.01)
    store.release.set()
    await asyncio.gather(*tasks)
    assert store.batches == [[0], [1, 2], [3, 1]]

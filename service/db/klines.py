"""Klines storage: series ids, the write path (COPY, staged upsert) and the reads behind the API.

Write path, per page of candles of one series, in one transaction:
- candles past the series' last stored open_time cannot conflict while one writer owns the series,
  so they go straight into `klines` with COPY;
- candles at or before it (the re-read last candle, a corrected open candle) go through COPY into
  the connection's staging table and one INSERT … ON CONFLICT DO UPDATE that rewrites only rows
  whose values changed;
- if the direct COPY meets a unique violation anyway (another writer), the page's transaction is
  rolled back and the whole page is merged through the staging table instead.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import asyncpg
import msgspec

from service.db import ledger as ledger_db
from service.db import quarantine as quarantine_db
from service.db.pool import Connection
from service.records import Kline, KlinePage, LedgerRange

__all__ = [
    "CANDLE_CHECK",
    "EncodedPage",
    "PageWrite",
    "RunSeries",
    "RunStart",
    "StoredEnd",
    "count_stored",
    "encode_copy_rows",
    "encode_page",
    "fetch_klines_json",
    "latest_prices",
    "run_start",
    "set_grid_offset",
    "store_page",
    "store_pages",
]

_COLUMNS = (
    "series_id", "open_time", "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume", "is_closed",
)
_VALUE_COLUMNS = _COLUMNS[2:]

_UPSERT_FROM_STAGING = f"""
INSERT INTO klines ({", ".join(_COLUMNS)})
SELECT {", ".join(_COLUMNS)} FROM klines_staging
ON CONFLICT (series_id, open_time) DO UPDATE
   SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _VALUE_COLUMNS)}
 WHERE ({", ".join(f"klines.{c}" for c in _VALUE_COLUMNS)})
       IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in _VALUE_COLUMNS)})
   -- A candle stored closed holds final values: an answer that still saw it open (a REST read
   -- older than a stream's close, a venue's stale page) never reopens it.
   AND (EXCLUDED.is_closed OR NOT klines.is_closed)
RETURNING series_id
"""
_UPSERT_FROM_STAGING = (
    f"WITH merged AS ({_UPSERT_FROM_STAGING}) SELECT series_id, count(*) AS n FROM merged GROUP BY series_id"
)

# COPY text format: tab-separated, \N for NULL. The exchange's strings go in as they came;
# the client has already refused bodies with a backslash, so no value can carry a tab or newline.
_ROW = "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n"


def _text(value: str | int | None) -> str:
    return "\\N" if value is None else str(value)


def encode_copy_rows(series_id: int, klines: Sequence[Kline], closed: int) -> bytes:
    """Candles as COPY text rows; the first `closed` of them are stored as closed (final)."""
    lines = [
        _ROW % (
            series_id, k.open_time, k.open, k.high, k.low, k.close, k.volume, k.close_time,
            _text(k.quote_volume), _text(k.trades), _text(k.taker_buy_base_volume),
            _text(k.taker_buy_quote_volume), "t" if i < closed else "f",
        )
        for i, k in enumerate(klines)
    ]
    return "".join(lines).encode()


#: The CHECK constraint on klines' prices and volumes (migration 0008).
CANDLE_CHECK = "klines_candle_valid"


class RunSeries(msgspec.Struct, frozen=True):
    """What a collection run starts from, per series."""

    series_id: int
    listing_start: int | None
    stored: StoredEnd
    grid_offset_ms: int | None = None
    """Where the series' candles open, as learnt from the venue (None: its documented grid, or not learnt)."""


class RunStart(msgspec.Struct, frozen=True):
    series: dict[tuple[str, str], RunSeries]
    """Per (symbol, timeframe)."""
    candle_check_enforced: bool
    """Whether klines has its candle CHECK constraint (an operator could have dropped it, or restored
    a dump without it): the ingest leaves plain candles' prices to it only then."""


_RUN_START = """
WITH wanted AS (
    SELECT u.symbol, u.timeframe FROM unnest($2::text[], $3::text[]) AS u(symbol, timeframe)
), added AS (
    INSERT INTO series (exchange, symbol, timeframe)
    SELECT $1, symbol, timeframe FROM wanted
    ON CONFLICT (exchange, symbol, timeframe) DO NOTHING
    RETURNING id, symbol, timeframe, listing_start, grid_offset_ms
)
SELECT a.id, a.symbol, a.timeframe, a.listing_start, a.grid_offset_ms, NULL::bigint AS newest,
       NULL::bigint AS oldest_open
  FROM added a
 UNION ALL
SELECT s.id, s.symbol, s.timeframe, s.listing_start, s.grid_offset_ms,
       (SELECT k.open_time FROM klines k WHERE k.series_id = s.id ORDER BY k.open_time DESC LIMIT 1),
       -- served by the partial index klines_open (open candles only): no scan of history
       (SELECT k.open_time FROM klines k WHERE k.series_id = s.id AND NOT k.is_closed ORDER BY k.open_time LIMIT 1)
  FROM series s JOIN wanted w ON s.symbol = w.symbol AND s.timeframe = w.timeframe
 WHERE s.exchange = $1
 UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL,
       (SELECT count(*) FROM pg_constraint WHERE conrelid = 'klines'::regclass AND conname = $4)
"""


async def run_start(conn: Connection, exchange: str, pairs: Sequence[tuple[str, str]]) -> RunStart:
    """The series of a run (created where new), where each one's stored candles end, its listing
    start, its learnt grid, and whether klines has its candle CHECK: one round trip, the run's first."""
    wanted = len(set(pairs))
    symbols, timeframes = [p[0] for p in pairs], [p[1] for p in pairs]
    for _ in range(3):
        rows = await conn.fetch(_RUN_START, exchange, symbols, timeframes, CANDLE_CHECK)
        found = {
            (r["symbol"], r["timeframe"]): RunSeries(
                r["id"], r["listing_start"], StoredEnd(newest=r["newest"], oldest_open=r["oldest_open"]),
                r["grid_offset_ms"],
            )
            for r in rows if r["id"] is not None
        }
        if len(found) >= wanted:
            break
        # Another transaction created one of them while this statement ran: the insert waited for it
        # to commit, but the statement's snapshot does not show its row. The next statement's does.
    else:
        raise RuntimeError(f"series of {exchange} {pairs} vanished between creating and reading them")
    # The row without a series carries the CHECK's count (UNION ALL promises no order: found by its null id).
    enforced = any(r["id"] is None and r["oldest_open"] for r in rows)
    return RunStart(series=found, candle_check_enforced=enforced)


class StoredEnd(msgspec.Struct, frozen=True):
    """Where a series' stored candles end, as far as the next run is concerned."""

    newest: int | None
    """Open time (ms) of the newest stored candle; None if the series has none."""
    oldest_open: int | None
    """Open time (ms) of the oldest candle stored as still open; None if every candle is closed."""

    @property
    def resume_at(self) -> int | None:
        """Where the next run must start re-reading: no candle stored as open is ever left behind."""
        return self.oldest_open if self.oldest_open is not None else self.newest


async def set_grid_offset(conn: Connection, series_id: int, offset_ms: int) -> None:
    """Remember where the series' candles open (learnt from the venue's answers)."""
    await conn.execute("UPDATE series SET grid_offset_ms = $2 WHERE id = $1", series_id, offset_ms)


def _count(status: str) -> int:
    # "COPY 42" / "INSERT 0 42"
    return int(status.rsplit(" ", 1)[1])


# Page writes commit without waiting for the WAL flush (see store_pages); BEGIN and SET LOCAL ride
# in the round trip of the transaction's first statement.
_BEGIN = "BEGIN; SET LOCAL synchronous_commit TO off"
_COPY_KLINES = f"COPY klines ({', '.join(_COLUMNS)}) FROM STDIN (FORMAT text)"
_COPY_STAGING = f"COPY klines_staging ({', '.join(_COLUMNS)}) FROM STDIN (FORMAT text)"


async def _copy(conn: Connection, statement: str, rows: bytes) -> int:
    """COPY `rows` (text format) with `statement`, which may begin with other statements of its own
    (BEGIN, SET LOCAL): the server runs them, then reads the rows, in one round trip.

    asyncpg's public copy_to_table builds its own COPY statement; its _copy_in runs ours. A
    memoryview is sent as it is (bytes would be taken for a file name, and a file-like source is
    read through the loop's default executor, a thread pool)."""
    copy_in: Callable[[str, memoryview, float | None], Awaitable[str]] = conn._copy_in  # type: ignore[union-attr]
    return _count(await copy_in(statement, memoryview(rows), None))


# Created in the write transaction that uses it, not once per connection: behind PgBouncer in
# transaction mode, consecutive transactions may run on different server sessions. ON COMMIT DELETE
# ROWS empties it at the end of each transaction; where it exists already this is a no-op.
_CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS klines_staging (LIKE klines INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)


async def _upsert(conn: Connection, rows: bytes, *, begin: bool) -> dict[int, int]:
    """Merge rows through the staging table; per series, how many were inserted or changed.
    `begin`: open the page's transaction in the same round trip."""
    await conn.execute(f"{_BEGIN}; {_CREATE_STAGING}" if begin else _CREATE_STAGING)
    await _copy(conn, _COPY_STAGING, rows)
    return {r["series_id"]: r["n"] for r in await conn.fetch(_UPSERT_FROM_STAGING)}


class EncodedPage(msgspec.Struct, frozen=True):
    """One page of one series as COPY rows, split where the stored series ends."""

    series_id: int
    overlap: bytes
    """Candles at or before the newest stored one: merged through the staging table."""
    fresh: bytes
    """Candles after it: copied straight into klines."""
    fresh_count: int = 0
    """How many candles `fresh` holds (each is inserted: a fresh candle is new)."""


class PageWrite(msgspec.Struct, frozen=True):
    """A page to write, with the ledger ranges it proves and the candles it refused."""

    encoded: EncodedPage
    ranges: Sequence[LedgerRange] = ()
    rejected: Sequence[tuple[Kline, str]] = ()

    @property
    def empty(self) -> bool:
        return not (self.encoded.overlap or self.encoded.fresh or self.ranges or self.rejected)


def _encode_rows(series_id: int, page: KlinePage, start: int, stop: int, closed: int) -> bytes:
    """COPY rows of page.klines[start:stop]; those before index `closed` are stored as closed.

    From the page's copy_fields where the client cut them (joins in C), else candle by candle."""
    if start >= stop:
        return b""
    fields = page.copy_fields
    if fields is None:
        return encode_copy_rows(series_id, page.klines[start:stop], max(closed - start, 0))
    prefix = b"%d" % series_id
    split = min(max(closed, start), stop)
    parts = []
    if split > start:
        parts.append(prefix + (b"\tt\n" + prefix).join(fields[start:split]) + b"\tt\n")
    if stop > split:
        parts.append(prefix + (b"\tf\n" + prefix).join(fields[split:stop]) + b"\tf\n")
    return b"".join(parts)


def encode_page(series_id: int, pages: Sequence[KlinePage], *, stored_until: int | None) -> EncodedPage:
    """The CPU half of a write (no I/O), so the caller can pace it against the event loop.

    `pages` are consecutive answers of the exchange, oldest first, without repeated candles; a
    candle is closed only if it had closed when its own answer was produced. `stored_until` is the
    open_time of the newest candle already stored for the series (None if none).
    """
    overlap: list[bytes] = []
    fresh: list[bytes] = []
    fresh_count = 0
    for page in pages:
        klines, closed = page.klines, page.closed_count()
        split = 0
        if stored_until is not None:
            while split < len(klines) and klines[split].open_time <= stored_until:
                split += 1
        overlap.append(_encode_rows(series_id, page, 0, split, closed))
        fresh.append(_encode_rows(series_id, page, split, len(klines), closed))
        fresh_count += len(klines) - split
    return EncodedPage(series_id=series_id, overlap=b"".join(overlap), fresh=b"".join(fresh), fresh_count=fresh_count)


async def store_page(
    conn: Connection,
    page: EncodedPage,
    *,
    ranges: Sequence[LedgerRange] = (),
    rejected: Sequence[tuple[Kline, str]] = (),
    task_id: uuid.UUID | None = None,
) -> int:
    """Write one encoded page (see store_pages); returns how many candles were inserted or changed."""
    (written,) = await store_pages(conn, [PageWrite(page, ranges, rejected)], task_id=task_id)
    return written


async def store_pages(conn: Connection, pages: Sequence[PageWrite], *, task_id: uuid.UUID | None = None) -> list[int]:
    """Write pages of several series in one transaction: one COPY for all their fresh candles, one
    staged merge for all their others, one statement for the ledger ranges they prove (the
    general merge only where a range meets others), and the candles they refused. Returns, per
    page, how many candles were inserted or changed. At most one page per series.

    Many series' pages in one transaction and one COPY: a run of 300 one-page series pays these
    round trips once per batch, not once per page (the per-page cost that had grown with each feature).

    Pages commit without waiting for the WAL flush (synchronous_commit off, for this transaction
    only): a database crash can lose at most the last fraction of a second of pages, never
    corrupt them, and the next run re-fetches them: it resumes at the last stored candle, and a
    lost page's ledger ranges are lost with it, so the ledger never claims what is not stored.
    Everything else (tasks, logs, configs) keeps the server's durable default.
    """
    live = [p for p in pages if not p.empty]
    if not live:
        return [0] * len(pages)
    assert len({p.encoded.series_id for p in live}) == len(live), "one page per series in a batch"
    overlap = b"".join(p.encoded.overlap for p in live)
    fresh = b"".join(p.encoded.fresh for p in live)

    async def extras() -> None:
        await ledger_db.record_ranges_of_series(conn, [(p.encoded.series_id, r) for p in live for r in p.ranges])
        for p in live:
            await quarantine_db.quarantine(conn, p.encoded.series_id, p.rejected, task_id)

    try:
        async with _page_transaction(conn):
            if overlap:
                changed = await _upsert(conn, overlap, begin=True)
                if fresh:
                    await _copy(conn, _COPY_KLINES, fresh)
            elif fresh:
                changed = {}
                await _copy(conn, f"{_BEGIN}; {_COPY_KLINES}", fresh)
            else:
                changed = {}
                await conn.execute(_BEGIN)
            await extras()
        return [0 if p.empty else p.encoded.fresh_count + changed.get(p.encoded.series_id, 0) for p in pages]
    except asyncpg.UniqueViolationError as exc:
        if exc.table_name != "klines":
            raise
    # Someone stored some of these candles after the pages were split: the transaction rolled
    # back whole, so merge every candle instead.
    async with _page_transaction(conn):
        if overlap or fresh:
            changed = await _upsert(conn, overlap + fresh, begin=True)
        else:
            changed = {}
            await conn.execute(_BEGIN)
        await extras()
    return [0 if p.empty else changed.get(p.encoded.series_id, 0) for p in pages]


@contextlib.asynccontextmanager
async def _page_transaction(conn: Connection) -> AsyncIterator[None]:
    """The page write's transaction: opened by its first statement (`_BEGIN` in front, one round
    trip), committed here, rolled back on any error."""
    try:
        yield
    except BaseException:
        if not conn.is_closed() and conn.is_in_transaction():
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


# Reads for GET /api/v1/klines, with the response body built by PostgreSQL. Encoding thousands of
# candles in Python (a Record, two datetimes and a Struct each, then msgspec) held the event loop
# for milliseconds per thousand candles; PostgreSQL assembles the same bytes on its own CPU.
#
# Every value is written exactly as the API has always written it: prices and volumes as the
# numeric's text, in quotes (that text is digits, '-', '.', 'NaN' or 'Infinity': nothing to
# escape), integers and booleans bare, NULL as null, times as msgspec writes an aware UTC
# datetime. Keys come in the order of the API's Candle struct, without spaces: the body is
# byte-for-byte what msgspec wrote from the stored rows before.


def _json_time(ms: str) -> str:
    """An epoch-ms column as msgspec's JSON for the same UTC datetime.

    "2026-11-24T08:21:00Z" on a whole second, else the milliseconds as six digits:
    "2026-11-24T08:21:59.999000Z" (the floor modulo keeps times before 1970 right too).
    """
    stamp = f"timestamp '1970-01-01' + {ms} * interval '1 millisecond'"
    return (
        f"""'"' || to_char({stamp}, 'YYYY-MM-DD"T"HH24:MI:SS') || CASE WHEN {ms} % 1000 = 0 THEN 'Z"'"""
        f""" ELSE '.' || lpad((({ms} % 1000 + 1000) % 1000)::text, 3, '0') || '000Z"' END"""
    )


def _json_string(column: str) -> str:
    return f"""'"' || {column}::text || '"'"""


def _json_bare(column: str) -> str:
    return f"{column}::text"


_CANDLE_JSON_FIELDS = (
    ("open_time", _json_time("k.open_time")),
    ("open", _json_string("k.open")),
    ("high", _json_string("k.high")),
    ("low", _json_string("k.low")),
    ("close", _json_string("k.close")),
    ("volume", _json_string("k.volume")),
    ("close_time", _json_time("k.close_time")),
    ("quote_volume", _json_string("k.quote_volume")),
    ("trades", _json_bare("k.trades")),
    ("taker_buy_base_volume", _json_string("k.taker_buy_base_volume")),
    ("taker_buy_quote_volume", _json_string("k.taker_buy_quote_volume")),
    ("is_closed", _json_bare("k.is_closed")),
)
# NULL || text is NULL, so each value falls back to null on its own (and a NULL can never drop a
# whole candle from string_agg, which would make "count" disagree with the list).
_CANDLE_JSON = "'{' || " + " || ',' || ".join(
    f"""'"{name}":' || coalesce({value}, 'null')""" for name, value in _CANDLE_JSON_FIELDS
) + " || '}'"

# "No end" as a plain bound rather than `$n IS NULL OR …`, so that even a generic plan can use the
# primary key's range on (series_id, open_time).
_NO_END = 2**63 - 1


def _klines_json_sql(*, from_start: bool) -> str:
    # $4: end, $5: limit, $6: start. The symbol check (listed, or collected before) rides in the
    # same statement: a read under load holds its pool connection for one round trip, not three.
    if from_start:
        page = "k.open_time >= $6 AND k.open_time <= $4 ORDER BY k.open_time"
    else:  # the newest `limit` up to the end
        page = "k.open_time <= $4 ORDER BY k.open_time DESC"
    return f"""
    SELECT CASE WHEN EXISTS (SELECT 1 FROM symbols WHERE exchange = $1 AND symbol = $2)
                  OR EXISTS (SELECT 1 FROM series WHERE exchange = $1 AND symbol = $2)
           THEN convert_to(
               '{{"exchange":' || to_json($1::text)::text || ',"symbol":' || to_json($2::text)::text
               || ',"timeframe":' || to_json($3::text)::text || ',"count":' || count(*)
               || ',"klines":[' || coalesce(string_agg(page.candle, ',' ORDER BY page.open_time), '') || ']}}',
               'UTF8') END
      FROM (SELECT k.open_time, {_CANDLE_JSON} AS candle
              FROM klines k
             WHERE k.series_id = (SELECT s.id FROM series s
                                   WHERE s.exchange = $1 AND s.symbol = $2 AND s.timeframe = $3)
               AND {page}
             LIMIT $5) page
    """


_KLINES_JSON_FROM_START = _klines_json_sql(from_start=True)
_KLINES_JSON_NEWEST = _klines_json_sql(from_start=False)


async def fetch_klines_json(
    conn: Connection,
    exchange: str,
    symbol: str,
    timeframe: str,
    *,
    start_ms: int | None,
    end_ms: int | None,
    limit: int,
) -> bytes | None:
    """The API's Candles body (UTF-8 JSON), oldest first: from `start_ms` on if given, else the
    newest `limit` up to `end_ms`. None if the exchange neither lists the symbol nor has it ever
    been collected."""
    args: list[object] = [exchange, symbol, timeframe, _NO_END if end_ms is None else end_ms, limit]
    if start_ms is None:
        body: bytes | None = await conn.fetchval(_KLINES_JSON_NEWEST, *args)
    else:
        body = await conn.fetchval(_KLINES_JSON_FROM_START, *args, start_ms)
    return body


async def count_stored(conn: Connection, series_id: int, start_ms: int, end_ms: int | None) -> int:
    """Candles of the series with start_ms <= open_time < end_ms (None: no end)."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM klines WHERE series_id = $1 AND open_time >= $2 AND open_time < $3",
        series_id, start_ms, _NO_END if end_ms is None else end_ms,
    )
    return count


async def latest_prices(conn: Connection) -> list[asyncpg.Record]:
    """Per collected symbol, the newest candle of its finest timeframe that has data."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT DISTINCT ON (s.exchange, s.symbol)
               s.exchange, s.symbol, s.timeframe, last.open_time, last.close_time,
               last.close::text AS price, last.is_closed
          FROM series s
          CROSS JOIN LATERAL (
                SELECT k.open_time, k.close_time, k.close, k.is_closed
                  FROM klines k WHERE k.series_id = s.id
                 ORDER BY k.open_time DESC LIMIT 1
          ) last
         ORDER BY s.exchange, s.symbol, last.close_time - last.open_time, last.open_time DESC
        """
    )
    return rows

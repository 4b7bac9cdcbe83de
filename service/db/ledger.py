"""Writing the coverage ledger, and what the collector reads of it to plan: listing starts, ranges.

Ranges are recorded inside the transaction of the page they describe (see klines.store_page), so
ledger and candles never disagree. The merge rules are service/collection/coverage.merge_range;
the exclusion constraint on `coverage` refuses overlaps should the code ever get them wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from service.db.pool import Connection, Row
from service.records import LedgerRange

__all__ = [
    "earliest_start", "ledger_ranges", "merge_range", "range_from_row", "record_range",
    "record_ranges_of_series", "set_listing_start",
]

_RANGE_COLUMNS = "start_time, end_time, kind, checks, checked_at, detail"


def range_from_row(r: Row) -> LedgerRange:
    """A ledger range from a row with the coverage table's columns."""
    return LedgerRange(
        start=r["start_time"], end=r["end_time"], kind=r["kind"], checks=r["checks"],
        checked_at=r["checked_at"], detail=r["detail"],
    )


def merge_range(neighbourhood: Sequence[LedgerRange], new: LedgerRange) -> list[LedgerRange]:
    """The ranges that replace `neighbourhood` (every stored range overlapping or touching `new`)
    once `new` is recorded: `new` wins where it overlaps, older ranges keep what lies outside it,
    and touching ranges of the same kind and checks become one."""
    pieces: list[LedgerRange] = []
    for old in neighbourhood:
        if old.start < new.start:
            pieces.append(msgspec.structs.replace(old, end=min(old.end, new.start)))
        if old.end > new.end:
            pieces.append(msgspec.structs.replace(old, start=max(old.start, new.end)))
    pieces.append(new)
    pieces.sort(key=lambda r: r.start)
    merged: list[LedgerRange] = []
    for piece in pieces:
        if piece.end <= piece.start:
            continue
        last = merged[-1] if merged else None
        if (
            last is not None and last.end == piece.start and last.kind == piece.kind
            and last.checks == piece.checks and last.detail == piece.detail
        ):
            checked = [t for t in (last.checked_at, piece.checked_at) if t is not None]
            merged[-1] = msgspec.structs.replace(last, end=piece.end, checked_at=max(checked) if checked else None)
        else:
            merged.append(piece)
    return merged


async def ledger_ranges(conn: Connection, series_id: int, start: int, end: int) -> list[LedgerRange]:
    """The series' ranges overlapping [start, end), oldest first (not clipped)."""
    rows = await conn.fetch(
        f"""
        SELECT {_RANGE_COLUMNS} FROM coverage
         WHERE series_id = $1 AND start_time < $3 AND end_time > $2
         ORDER BY start_time
        """,
        series_id, start, end,
    )
    return [range_from_row(r) for r in rows]


async def earliest_start(conn: Connection, series_id: int) -> int | None:
    """Where the series' ledger begins (None: nothing recorded)."""
    start: int | None = await conn.fetchval(
        "SELECT start_time FROM coverage WHERE series_id = $1 ORDER BY start_time LIMIT 1", series_id
    )
    return start


async def record_range(conn: Connection, series_id: int, new: LedgerRange) -> None:
    """Record `new` over whatever the ledger said of its range (call inside a transaction).

    The ranges overlapping or touching it are read under lock, merged in Python and written back;
    a series has one writer at a time (one active task per series), so the locks only guard
    against an operator's concurrent edit.
    """
    if await _extend_last(conn, series_id, new):
        return
    rows = await conn.fetch(
        f"""
        SELECT {_RANGE_COLUMNS} FROM coverage
         WHERE series_id = $1 AND start_time <= $3 AND end_time >= $2
         ORDER BY start_time FOR UPDATE
        """,
        series_id, new.start, new.end,
    )
    old = [range_from_row(r) for r in rows]
    merged = merge_range(old, new)
    if old:
        await conn.execute(
            "DELETE FROM coverage WHERE series_id = $1 AND start_time = ANY($2::bigint[])",
            series_id, [r.start for r in old],
        )
    await conn.executemany(
        """
        INSERT INTO coverage (series_id, start_time, end_time, kind, checks, checked_at, detail)
        VALUES ($1, $2, $3, $4, $5, coalesce($6, now()), $7)
        """,
        [(series_id, r.start, r.end, r.kind, r.checks, r.checked_at, r.detail) for r in merged],
    )


async def _extend_last(conn: Connection, series_id: int, new: LedgerRange) -> bool:
    """The common cases in one statement: `new` continues a range of its kind that ends where it
    starts (a backfill's next page), or touches nothing at all (a new series' first page), and
    nothing lies beyond it. False: merge the general way."""
    recorded = await conn.fetchval(
        """
        WITH extended AS (
            UPDATE coverage SET end_time = $3, checked_at = coalesce($5, now())
             WHERE series_id = $1 AND end_time = $2 AND kind = $4 AND checks = $6
               AND detail IS NOT DISTINCT FROM $7
               AND NOT EXISTS (SELECT 1 FROM coverage o
                                WHERE o.series_id = $1 AND o.start_time <= $3 AND o.end_time > $2)
            RETURNING 1
        ), inserted AS (
            INSERT INTO coverage (series_id, start_time, end_time, kind, checks, checked_at, detail)
            SELECT $1, $2, $3, $4, $6, coalesce($5, now()), $7
             WHERE NOT EXISTS (SELECT 1 FROM extended)
               AND NOT EXISTS (SELECT 1 FROM coverage o
                                WHERE o.series_id = $1 AND o.start_time <= $3 AND o.end_time >= $2)
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM extended) + (SELECT count(*) FROM inserted)
        """,
        series_id, new.start, new.end, new.kind, new.checked_at, new.checks, new.detail,
    )
    return bool(recorded)


# _extend_last for many series at once, one range each. Every CTE sees the ledger as it was before
# the statement, so a series' next range goes in the next statement.
_EXTEND_OR_INSERT_MANY = """
WITH new AS (
    SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::text[], $5::smallint[],
                         $6::timestamptz[], $7::text[])
        AS n(series_id, start_time, end_time, kind, checks, checked_at, detail)
), extended AS (
    UPDATE coverage c SET end_time = n.end_time, checked_at = coalesce(n.checked_at, now())
      FROM new n
     WHERE c.series_id = n.series_id AND c.end_time = n.start_time AND c.kind = n.kind
       AND c.checks = n.checks AND c.detail IS NOT DISTINCT FROM n.detail
       AND NOT EXISTS (SELECT 1 FROM coverage o
                        WHERE o.series_id = n.series_id AND o.start_time <= n.end_time AND o.end_time > n.start_time)
    RETURNING n.series_id
), inserted AS (
    INSERT INTO coverage (series_id, start_time, end_time, kind, checks, checked_at, detail)
    SELECT n.series_id, n.start_time, n.end_time, n.kind, n.checks, coalesce(n.checked_at, now()), n.detail
      FROM new n
     WHERE NOT EXISTS (SELECT 1 FROM coverage o
                        WHERE o.series_id = n.series_id AND o.start_time <= n.end_time AND o.end_time >= n.start_time)
    RETURNING series_id
)
SELECT series_id FROM extended UNION ALL SELECT series_id FROM inserted
"""


async def record_ranges_of_series(conn: Connection, ranges: Sequence[tuple[int, LedgerRange]]) -> None:
    """Record (series_id, range) pairs, each series' in their order (call inside a transaction).

    The common cases (a range continuing the last one of its kind, or touching nothing) are
    recorded for many series in one statement: the first range of every series, then the second of
    those that have one, and so on (a page proves one range, most often); the rest go through
    the general merge of record_range."""
    rounds: list[list[tuple[int, LedgerRange]]] = []
    seen: dict[int, int] = {}
    for series_id, new in ranges:
        k = seen.get(series_id, 0)
        seen[series_id] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append((series_id, new))
    for batch in rounds:
        if len(batch) == 1:
            await record_range(conn, *batch[0])
            continue
        rows = await conn.fetch(
            _EXTEND_OR_INSERT_MANY,
            [sid for sid, _ in batch], [r.start for _, r in batch], [r.end for _, r in batch],
            [r.kind for _, r in batch], [r.checks for _, r in batch], [r.checked_at for _, r in batch],
            [r.detail for _, r in batch],
        )
        done_ids = {row["series_id"] for row in rows}
        for series_id, new in batch:
            if series_id not in done_ids:
                await record_range(conn, series_id, new)


async def set_listing_start(conn: Connection, series_id: int, listing_start: int) -> None:
    await conn.execute("UPDATE series SET listing_start = $2 WHERE id = $1", series_id, listing_start)

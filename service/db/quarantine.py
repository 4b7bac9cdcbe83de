"""Candles that failed the ingest checks: kept with the reason and the row, never in klines."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import msgspec

from service.db.pool import Connection
from service.records import Kline

__all__ = ["quarantine"]


async def quarantine(
    conn: Connection, series_id: int, rows: Sequence[tuple[Kline, str]], task_id: uuid.UUID | None
) -> None:
    """Store refused candles, each with why (call inside the page's transaction)."""
    if not rows:
        return
    await conn.executemany(
        "INSERT INTO quarantined_klines (series_id, open_time, reason, raw, task_id) VALUES ($1, $2, $3, $4, $5)",
        # The row as the exchange's fields, in its order (a JSON array, like the exchange sent it).
        [(series_id, kline.open_time, reason, msgspec.to_builtins(kline), task_id) for kline, reason in rows],
    )

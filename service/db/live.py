"""What live collection reads and writes beside the page path: the live configs, and open candles.

Closed candles from a stream go through klines.store_pages like any page (with their ledger range);
the open candle of each streamed series is flushed about once a second, all series in one statement,
and never over a candle already stored closed (a late update must not reopen a final candle).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import msgspec

from service.db.listener import EVENTS_CHANNEL
from service.db.pool import Connection, domain_errors, open_connection
from service.records import Kline, LiveConnectionState

__all__ = [
    "announce_candles", "check_lock", "drop_state", "live_series", "live_states", "open_lock_connection",
    "publish_state", "take_venue_lock", "upsert_open_candles",
]

_states = msgspec.json.Decoder(list[LiveConnectionState])
_encode = msgspec.json.Encoder()


async def publish_state(conn: Connection, exchange: str, state: list[LiveConnectionState]) -> None:
    """The venue's live streams as this process sees them now (for every process's /api/v1/live)."""
    await conn.execute(
        """
        INSERT INTO live_state (exchange, state) VALUES ($1, $2::text::jsonb)
        ON CONFLICT (exchange) DO UPDATE SET state = EXCLUDED.state, updated_at = now()
        """,
        exchange, _encode.encode(state).decode(),
    )


async def drop_state(conn: Connection, exchange: str) -> None:
    await conn.execute("DELETE FROM live_state WHERE exchange = $1", exchange)


async def live_states(conn: Connection, *, max_age_seconds: float) -> list[LiveConnectionState]:
    """Every venue's stream connections, as published within `max_age_seconds` (older: a process gone)."""
    rows = await conn.fetch(
        "SELECT state::text FROM live_state WHERE updated_at > now() - make_interval(secs => $1) ORDER BY exchange",
        max_age_seconds,
    )
    return [conn_state for row in rows for conn_state in _states.decode(row["state"])]

#: A notification's payload must stay under PostgreSQL's 8000 bytes.
_PAYLOAD_BYTES = 7000


async def announce_candles(conn: Connection, candles: Sequence[Mapping[str, Any]]) -> None:
    """Tell every process's event stream of these candles (`candle` events), a few to a notification."""
    batch: list[str] = []
    size = 0
    for candle in candles:
        text = json.dumps(candle, separators=(",", ":"))
        if batch and size + len(text) > _PAYLOAD_BYTES:
            await _notify(conn, batch)
            batch, size = [], 0
        batch.append(text)
        size += len(text) + 1
    if batch:
        await _notify(conn, batch)


async def _notify(conn: Connection, candles: list[str]) -> None:
    await conn.execute(
        "SELECT pg_notify($1, $2)", EVENTS_CHANNEL, '{"type":"candles","candles":[' + ",".join(candles) + "]}"
    )


async def open_lock_connection(dsn: str, *, statement_cache_size: int) -> asyncpg.Connection[Any]:
    """A connection of its own for a venue's live lock (a session lock: it needs a session that is
    this process's alone, so DATABASE_URL must reach PostgreSQL directly, not a transaction pooler)."""
    return await open_connection(dsn, statement_cache_size=statement_cache_size)


async def take_venue_lock(conn: asyncpg.Connection[Any], exchange: str) -> bool:
    """Whether this connection now holds the venue's live lock (a session advisory lock), False
    while another process holds it. The lock ends with the connection: a process killed loses it
    when the server notices, and a peer takes the venue's streams over."""
    with domain_errors():
        taken: bool = await conn.fetchval(
            "SELECT pg_try_advisory_lock(hashtext('live:' || $1))", exchange, timeout=5
        )
    return taken


async def check_lock(conn: asyncpg.Connection[Any]) -> None:
    """DatabaseUnavailableError if the lock's connection no longer answers (the lock is lost with it)."""
    with domain_errors():
        await conn.fetchval("SELECT 1", timeout=5)


async def live_series(conn: Connection, exchange: str) -> list[tuple[str, str]]:
    """(symbol, timeframe) of every enabled live config of `exchange` that is not paused for its listing."""
    rows = await conn.fetch(
        """
        SELECT c.symbol, tf FROM data_collection_configs c, unnest(c.timeframes) AS tf
         WHERE c.exchange = $1 AND c.live AND c.enabled AND c.paused_reason IS NULL
         ORDER BY c.symbol, tf
        """,
        exchange,
    )
    return [(r["symbol"], r["tf"]) for r in rows]


_UPSERT_OPEN = """
INSERT INTO klines AS k (series_id, open_time, open, high, low, close, volume, close_time, quote_volume, trades,
                         taker_buy_base_volume, taker_buy_quote_volume, is_closed)
SELECT u.series_id, u.open_time, u.open::numeric, u.high::numeric, u.low::numeric, u.close::numeric,
       u.volume::numeric, u.close_time, u.quote_volume::numeric, u.trades, u.taker_buy_base_volume::numeric,
       u.taker_buy_quote_volume::numeric, false
  FROM unnest($1::int[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[],
              $9::text[], $10::bigint[], $11::text[], $12::text[])
       AS u(series_id, open_time, open, high, low, close, volume, close_time, quote_volume, trades,
            taker_buy_base_volume, taker_buy_quote_volume)
ON CONFLICT (series_id, open_time) DO UPDATE
   SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
       volume = EXCLUDED.volume, close_time = EXCLUDED.close_time, quote_volume = EXCLUDED.quote_volume,
       trades = EXCLUDED.trades, taker_buy_base_volume = EXCLUDED.taker_buy_base_volume,
       taker_buy_quote_volume = EXCLUDED.taker_buy_quote_volume
 WHERE NOT k.is_closed
"""


async def upsert_open_candles(conn: Connection, candles: Sequence[tuple[int, Kline]]) -> None:
    """Store each (series id, candle) as the series' open candle, unless that slot is stored closed."""
    if not candles:
        return
    ks = [k for _, k in candles]
    await conn.execute(
        _UPSERT_OPEN,
        [sid for sid, _ in candles], [k.open_time for k in ks], [k.open for k in ks], [k.high for k in ks],
        [k.low for k in ks], [k.close for k in ks], [k.volume for k in ks], [k.close_time for k in ks],
        [k.quote_volume for k in ks], [k.trades for k in ks], [k.taker_buy_base_volume for k in ks],
        [k.taker_buy_quote_volume for k in ks],
    )

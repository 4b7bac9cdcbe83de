"""The symbols table: what each exchange lists, filled from its exchange info."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from service.db.pool import Connection
from service.records import SymbolInfo

__all__ = [
    "count_symbols", "find_symbol", "list_symbols", "normalise_symbol_name", "replace_symbols", "resolve_symbols",
]


async def replace_symbols(conn: Connection, exchange: str, symbols: Sequence[SymbolInfo]) -> int:
    """Upsert the exchange's listing; symbols it no longer lists are kept but marked DELISTED."""
    async with conn.transaction():
        await conn.executemany(
            """
            INSERT INTO symbols (exchange, symbol, base_asset, quote_asset, status, updated_at)
            VALUES ($1, $2, $3, $4, $5, now())
            ON CONFLICT (exchange, symbol) DO UPDATE
               SET base_asset = EXCLUDED.base_asset, quote_asset = EXCLUDED.quote_asset,
                   status = EXCLUDED.status, updated_at = now()
            """,
            [(exchange, s.symbol, s.base_asset, s.quote_asset, s.status) for s in symbols],
        )
        await conn.execute(
            """
            UPDATE symbols SET status = 'DELISTED', updated_at = now()
             WHERE exchange = $1 AND status <> 'DELISTED' AND NOT (symbol = ANY($2::text[]))
            """,
            exchange, [s.symbol for s in symbols],
        )
    return len(symbols)


async def count_symbols(conn: Connection, exchange: str) -> int:
    """How many symbols of the exchange are known (any status)."""
    count: int = await conn.fetchval("SELECT count(*) FROM symbols WHERE exchange = $1", exchange)
    return count


async def find_symbol(conn: Connection, exchange: str, name: str) -> asyncpg.Record | None:
    """A symbol by its exchange name ('BTCUSDT') or as BASE/QUOTE ('BTC/USDT'), case-insensitive."""
    name = normalise_symbol_name(name)
    if "/" in name:
        base, _, quote = name.partition("/")
        row: asyncpg.Record | None = await conn.fetchrow(
            """
            SELECT symbol, base_asset, quote_asset, status FROM symbols
             WHERE exchange = $1 AND base_asset = $2 AND quote_asset = $3
             ORDER BY status = 'TRADING' DESC LIMIT 1
            """,
            exchange, base, quote,
        )
        return row
    row = await conn.fetchrow(
        "SELECT symbol, base_asset, quote_asset, status FROM symbols WHERE exchange = $1 AND symbol = $2",
        exchange, name,
    )
    return row


def normalise_symbol_name(name: str) -> str:
    """How a user's spelling is looked up: trimmed and upper-cased ('btc/usdt ' -> 'BTC/USDT')."""
    return name.strip().upper()


async def resolve_symbols(conn: Connection, exchange: str, names: Sequence[str]) -> dict[str, str | None]:
    """Each name ('BTCUSDT' or 'BTC/USDT', any case) mapped to the exchange's symbol, or None if unknown.

    One statement for the whole list, however long: exchange names join the primary key, BASE/QUOTE
    names the assets (the TRADING listing first, as find_symbol does).
    """
    wanted = {name: normalise_symbol_name(name) for name in names}
    plain = sorted({n for n in wanted.values() if "/" not in n})
    pairs = sorted({n.partition("/")[::2] for n in wanted.values() if "/" in n})
    rows = await conn.fetch(
        """
        SELECT s.symbol AS name, s.symbol
          FROM unnest($2::text[]) AS n(name)
          JOIN symbols s ON s.exchange = $1 AND s.symbol = n.name
        UNION ALL
        (SELECT DISTINCT ON (p.base, p.quote) p.base || '/' || p.quote, s.symbol
           FROM unnest($3::text[], $4::text[]) AS p(base, quote)
           JOIN symbols s ON s.exchange = $1 AND s.base_asset = p.base AND s.quote_asset = p.quote
          ORDER BY p.base, p.quote, s.status = 'TRADING' DESC, s.symbol)
        """,
        exchange, plain, [base for base, _ in pairs], [quote for _, quote in pairs],
    )
    found: dict[str, str] = {row["name"]: row["symbol"] for row in rows}
    return {name: found.get(key) for name, key in wanted.items()}


async def list_symbols(conn: Connection, exchange: str, *, trading_only: bool = True) -> list[str]:
    """Symbol names of the exchange, sorted."""
    rows = await conn.fetch(
        "SELECT symbol FROM symbols WHERE exchange = $1 AND (NOT $2 OR status = 'TRADING') ORDER BY symbol",
        exchange, trading_only,
    )
    return [r["symbol"] for r in rows]

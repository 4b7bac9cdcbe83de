"""The symbols table: what each exchange lists, filled from its exchange info."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from service.db.pool import Connection
from service.records import SymbolInfo

__all__ = [
    "VenueListing", "count_symbols", "find_symbol", "list_symbols", "normalise_symbol_name", "replace_symbols",
    "resolve_symbols", "venue_listings",
]


async def replace_symbols(conn: Connection, exchange: str, symbols: Sequence[SymbolInfo]) -> int:
    """Upsert the venue's listing; symbols it no longer lists are kept but marked DELISTED (delisted)."""
    async with conn.transaction():
        await conn.executemany(
            """
            INSERT INTO symbols (exchange, symbol, base_asset, quote_asset, status, state, aliases, settle_asset,
                                 updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
            ON CONFLICT (exchange, symbol) DO UPDATE
               SET base_asset = EXCLUDED.base_asset, quote_asset = EXCLUDED.quote_asset,
                   status = EXCLUDED.status, state = EXCLUDED.state, aliases = EXCLUDED.aliases,
                   settle_asset = EXCLUDED.settle_asset, updated_at = now()
            """,
            [
                (
                    exchange, s.symbol, s.base_asset.upper(), s.quote_asset.upper(), s.status, s.state,
                    [normalise_symbol_name(a) for a in s.aliases],
                    None if s.settle_asset is None else s.settle_asset.upper(),
                )
                for s in symbols
            ],
        )
        await conn.execute(
            """
            UPDATE symbols SET status = 'DELISTED', state = 'delisted', updated_at = now()
             WHERE exchange = $1 AND state <> 'delisted' AND NOT (symbol = ANY($2::text[]))
            """,
            exchange, [s.symbol for s in symbols],
        )
    return len(symbols)


async def count_symbols(conn: Connection, exchange: str) -> int:
    """How many symbols of the venue are known (any state)."""
    count: int = await conn.fetchval("SELECT count(*) FROM symbols WHERE exchange = $1", exchange)
    return count


def normalise_symbol_name(name: str) -> str:
    """How a user's spelling is looked up: trimmed and upper-cased ('btc/usdt ' -> 'BTC/USDT')."""
    return name.strip().upper()


# Any spelling of a symbol, in one statement for a whole list: the venue's own id first, then one of
# its other spellings (Kraken's XBTUSD), then the unified BASE/QUOTE[:SETTLE], then the assets run
# together (BTCUSDT or BTC-USDT on a venue that spells it the other way); a trading listing before
# a paused or delisted one of the same assets.
_RESOLVE = """
SELECT DISTINCT ON (n.name) n.name, s.symbol
  FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS n(name, base, quote, settle, joined)
  JOIN symbols s
    ON s.exchange = $1
   AND (s.symbol = n.name
        OR n.name = ANY(s.aliases)
        OR (s.base_asset = n.base AND s.quote_asset = n.quote AND (n.settle IS NULL OR s.settle_asset = n.settle))
        OR s.base_asset || s.quote_asset = n.joined)
 ORDER BY n.name,
          CASE WHEN s.symbol = n.name THEN 0 WHEN n.name = ANY(s.aliases) THEN 1
               WHEN s.base_asset = n.base THEN 2 ELSE 3 END,
          s.state = 'trading' DESC, s.symbol
"""


def _spelling(name: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(base, quote, settle, joined) of a normalised name: `BTC/USDT:USDT` gives the assets and the
    settle asset; `BTC-USDT` or `BTCUSDT` the assets run together."""
    if "/" in name:
        base, _, rest = name.partition("/")
        quote, _, settle = rest.partition(":")
        return base, quote, settle or None, None
    return None, None, None, name.replace("-", "").replace("_", "")


async def resolve_symbols(conn: Connection, exchange: str, names: Sequence[str]) -> dict[str, str | None]:
    """Each name, in any spelling and case, mapped to the venue's symbol, or None if unknown."""
    wanted = {name: normalise_symbol_name(name) for name in names}
    keys = sorted(set(wanted.values()))
    spellings = [_spelling(key) for key in keys]
    rows = await conn.fetch(
        _RESOLVE, exchange, keys, [s[0] for s in spellings], [s[1] for s in spellings], [s[2] for s in spellings],
        [s[3] for s in spellings],
    )
    found: dict[str, str] = {row["name"]: row["symbol"] for row in rows}
    return {name: found.get(key) for name, key in wanted.items()}


async def find_symbol(conn: Connection, exchange: str, name: str) -> str | None:
    """The venue's symbol for `name` in any spelling, or None if unknown."""
    return (await resolve_symbols(conn, exchange, [name]))[name]


async def list_symbols(conn: Connection, exchange: str, *, trading_only: bool = True) -> list[str]:
    """Symbol names of the venue, sorted."""
    rows = await conn.fetch(
        "SELECT symbol FROM symbols WHERE exchange = $1 AND (NOT $2 OR state = 'trading') ORDER BY symbol",
        exchange, trading_only,
    )
    return [r["symbol"] for r in rows]


class VenueListing(msgspec.Struct, frozen=True):
    """What the symbols table knows of one venue."""

    exchange: str
    symbols: int
    trading: int
    refreshed_at: datetime | None
    """When its listing was last refreshed (the newest row's update)."""


async def venue_listings(conn: Connection) -> dict[str, VenueListing]:
    """Per venue: symbols known, how many trade, and the last refresh."""
    rows = await conn.fetch(
        """
        SELECT exchange, count(*) AS symbols, count(*) FILTER (WHERE state = 'trading') AS trading,
               max(updated_at) AS refreshed_at
          FROM symbols GROUP BY exchange
        """
    )
    return {
        r["exchange"]: VenueListing(r["exchange"], r["symbols"], r["trading"], r["refreshed_at"]) for r in rows
    }

"""Real Binance kline sets replayed through the fake, the collector, PostgreSQL, the API and the view."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.settings import Settings
from tests.conftest import Clock, serve_app
from tests.fakes.binance import FakeBinance

# Copied from shared/real-klines (provenance in its README) so that a clone runs them anywhere.
REAL = Path(__file__).resolve().parents[1] / "data" / "real-klines"
FIELDS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "trades",
    "taker_buy_base_volume", "taker_buy_quote_volume",
)
INTERVAL_MS = {"1m": 60_000, "5m": 300_000}


def raw_rows(name: str) -> list[list[Any]]:
    """The 12-field rows Binance sent (JSON body or data.binance.vision CSV)."""
    path = REAL / name
    if path.suffix == ".csv":
        with path.open() as f:
            return [[int(r[0]), *r[1:6], int(r[6]), r[7], int(r[8]), *r[9:]] for r in csv.reader(f)]
    rows: list[list[Any]] = json.loads(path.read_text())
    return rows


def freqtrade_rows(name: str, timeframe: str) -> list[list[Any]]:
    """freqtrade's [open_time, o, h, l, c, volume] numbers, answered as Binance would (decimal strings)."""
    step = INTERVAL_MS[timeframe]

    def text(x: float) -> str:
        return f"{Decimal(repr(x)):.8f}"

    return [
        [t, text(o), text(h), text(lo), text(c), text(v), t + step - 1, "0", 0, "0", "0", "0"]
        for t, o, h, lo, c, v in json.loads((REAL / name).read_text())
    ]


def numeric(value: Any) -> Decimal | int:
    return value if isinstance(value, int) else Decimal(str(value))


CASES = [
    ("nautilus-binance-spot-BTCUSDT-1m-api-response.json", "BTCUSDT", "BTC", "USDT", "1m", 11),
    ("nautilus-binance-vision-ADABTC-1m-2021-11-27.csv", "ADABTC", "ADA", "BTC", "1m", 11),
    ("freqtrade-binance-XRP_ETH-1m.json", "XRPETH", "XRP", "ETH", "1m", 6),
    ("freqtrade-binance-XRP_ETH-5m.json", "XRPETH", "XRP", "ETH", "5m", 6),
]


@pytest.mark.parametrize(("name", "symbol", "base", "quote", "timeframe", "known_fields"), CASES)
async def test_real_klines_come_back_numerically_equal(
    make_settings: Callable[..., Settings],
    db: asyncpg.Connection[Any],
    name: str,
    symbol: str,
    base: str,
    quote: str,
    timeframe: str,
    known_fields: int,
) -> None:
    """Every value the source has comes back equal from /api/v1/klines and from the market_data view."""
    rows = raw_rows(name) if known_fields == 11 else freqtrade_rows(name, timeframe)
    source = [[numeric(v) for v in row[:known_fields]] for row in rows]
    # "Now" is just after the last candle closed, so every candle is closed.
    clock = Clock(start=(rows[-1][6] + 1) / 1000 + 1)
    async with FakeBinance(now_ms=clock.ms) as fake:
        fake.add_symbol(symbol, base, quote)
        fake.set_klines(symbol, timeframe, rows)
        # History: every source candle plus the (empty) current one.
        settings = make_settings(binance_api_url=fake.url, default_history_candles=len(rows) + 1)
        async with serve_app(settings, clock) as api:
            await api.wait_idle()
            task = await api.wait(await api.start([f"{base}/{quote}"], [timeframe]))
            assert task["result"]["candles_written"] == len(rows), task
            api_rows: list[dict[str, Any]] = []
            start = None
            while len(api_rows) < len(rows):
                params = {"symbol": symbol, "timeframe": timeframe, "limit": "5000"}
                if start:
                    params["start"] = start
                page = (await api.http.get("/api/v1/klines", params=params)).json()["klines"]
                api_rows += page if not api_rows else page[1:]
                start = page[-1]["open_time"]
                if len(page) < 5000:
                    break

    def from_api(k: dict[str, Any]) -> list[Decimal | int]:
        values: list[Decimal | int] = []
        for field in FIELDS[:known_fields]:
            value = k[field]
            if field.endswith("_time"):
                values.append(int(Decimal(str(_epoch_ms(value)))))
            else:
                values.append(numeric(value))
        return values

    assert [from_api(k) for k in api_rows] == source
    assert all(k["is_closed"] for k in api_rows)

    view = await db.fetch(
        """
        SELECT (extract(epoch FROM open_time) * 1000)::bigint AS open_time,
               open, high, low, close, volume,
               (extract(epoch FROM close_time) * 1000)::bigint AS close_time, quote_volume, trades,
               taker_buy_base_volume, taker_buy_quote_volume
          FROM market_data
         WHERE exchange = 'binance' AND symbol = $1 AND timeframe = $2
         ORDER BY open_time
        """,
        symbol, timeframe,
    )
    assert [[r[f] for f in FIELDS[:known_fields]] for r in view] == source


def _epoch_ms(iso: str) -> int:
    from datetime import datetime

    return round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)

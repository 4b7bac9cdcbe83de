"""Ingest checks: every rule rejects with its reason, valid candles pass in order, and PostgreSQL
(numeric input and the klines_candle_valid CHECK constraint) agrees with what passes, and refuses
every bad candle the checks leave to it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest

from service.collection.validation import Rejected, check_klines
from service.db.klines import encode_copy_rows
from service.db.pool import domain_errors
from service.errors import RowRefusedError
from service.exchanges.binance import grid
from service.records import Kline
from tests.fakes.binance import FakeBinance

MIN = 60_000
T0 = 1_699_999_980_000  # a minute boundary (2023-11-14 22:13:00 UTC)
NOW = T0 + 10 * MIN
BASE = Kline(T0, "100.00000000", "110.00000000", "90.00000000", "105.00000000", "12.50000000", T0 + MIN - 1,
             "1300.00000000", 42, "6.00000000", "620.00000000")  # fmt: skip


def ms(year: int, month: int, day: int = 1) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp() * 1000)


def candle(**fields: Any) -> Kline:
    """BASE (a valid 1m candle) with some fields replaced."""
    return msgspec.structs.replace(BASE, **fields)


def reasons(klines: list[Kline], timeframe: str = "1m", now_ms: int = NOW) -> list[str]:
    return [r.reason for r in check_klines(klines, grid(timeframe), now_ms)[1]]


REJECTED: list[tuple[dict[str, Any], str]] = [
    ({"low": "99999999"}, "low above open"),
    # 17 significant digits: a float comparison would see these as equal.
    (
        {"open": "12345678.12345678", "low": "12345678.12345679", "high": "12345679", "close": "12345678.2"},
        "low above open",
    ),
    ({"open": "105", "close": "100", "low": "102"}, "low above close"),
    ({"open": "111"}, "open above high"),
    ({"high": "104"}, "close above high"),
    ({"open": "0", "high": "1", "low": "-1", "close": "0"}, "negative low"),
    ({"volume": "-1"}, "negative volume"),
    ({"quote_volume": "-0.00000001"}, "negative quote_volume"),
    ({"taker_buy_base_volume": "-1e-8"}, "negative taker_buy_base_volume"),
    ({"taker_buy_quote_volume": "-5"}, "negative taker_buy_quote_volume"),
    ({"trades": -1}, "negative trades"),
    ({"trades": 2**63}, "trades out of range"),  # beyond bigint: COPY would refuse the page
    ({"open": "abc"}, "open is not a finite decimal: 'abc'"),
    ({"high": "NaN"}, "high is not a finite decimal: 'NaN'"),
    ({"low": "-Infinity"}, "low is not a finite decimal: '-Infinity'"),
    ({"close": "inf"}, "close is not a finite decimal: 'inf'"),
    ({"close": "sNaN"}, "close is not a finite decimal: 'sNaN'"),
    ({"volume": ""}, "volume is not a finite decimal: ''"),
    ({"volume": "."}, "volume is not a finite decimal: '.'"),
    ({"volume": "1.2.3"}, "volume is not a finite decimal: '1.2.3'"),
    ({"volume": "1_000"}, "volume is not a finite decimal: '1_000'"),  # Python reads it; not worth trusting
    ({"volume": "0x10"}, "volume is not a finite decimal: '0x10'"),
    ({"volume": "1 000"}, "volume is not a finite decimal: '1 000'"),
    ({"volume": "\t1"}, "volume is not a finite decimal: '\\t1'"),  # a tab would split the COPY row
    ({"quote_volume": "١٢"}, "quote_volume is not a finite decimal: '١٢'"),  # Python reads Arabic digits
    ({"quote_volume": "12\u00a0"}, "quote_volume is not a finite decimal: '12\\xa0'"),
    ({"taker_buy_base_volume": "1e1000"}, "taker_buy_base_volume is not a finite decimal: '1e1000'"),
    ({"taker_buy_quote_volume": "1" * 101}, f"taker_buy_quote_volume is not a finite decimal: '{'1' * 40}…'"),
    ({"open_time": T0 + 1, "close_time": T0 + MIN}, "open_time not aligned to 1m"),
    ({"close_time": T0 + MIN}, "close_time is not next open - 1 ms"),
    ({"close_time": T0 + MIN - 2}, "close_time is not next open - 1 ms"),
    ({"open_time": NOW + MIN, "close_time": NOW + 2 * MIN - 1}, "candle in the future"),
]


def test_valid_candles_pass_in_order() -> None:
    """A page of valid candles comes back whole, in its order, with nothing rejected."""
    page = [candle(open_time=T0 + i * MIN, close_time=T0 + (i + 1) * MIN - 1) for i in range(5)]
    assert check_klines(page, grid("1m"), NOW) == (page, [])
    assert check_klines([], grid("1m"), NOW) == ([], [])


def test_optional_fields_may_be_missing() -> None:
    """quote_volume, trades and the taker volumes may be absent (None)."""
    bare = candle(quote_volume=None, trades=None, taker_buy_base_volume=None, taker_buy_quote_volume=None)
    assert check_klines([bare], grid("1m"), NOW) == ([bare], [])


def test_candle_holding_now_passes() -> None:
    """The candle that opened at now (still open) is not "in the future"."""
    assert check_klines([BASE], grid("1m"), T0) == ([BASE], [])


@pytest.mark.parametrize(("fields", "reason"), REJECTED, ids=[r for _, r in REJECTED])
def test_each_rule_rejects_with_its_reason(fields: dict[str, Any], reason: str) -> None:
    """A candle breaking one rule is rejected with that rule's reason; the valid ones around it pass."""
    bad = candle(**fields)
    before = candle(open_time=T0 - MIN, close_time=T0 - 1)
    after = candle(open_time=T0 + MIN, close_time=T0 + 2 * MIN - 1)
    assert check_klines([before, bad, after], grid("1m"), NOW) == ([before, after], [Rejected(bad, reason)])


@pytest.mark.parametrize(("fields", "reason"), REJECTED, ids=[r for _, r in REJECTED])
def test_a_full_page_gives_the_same_answers(fields: dict[str, Any], reason: str) -> None:
    """At the end of a 1000-candle page as the exchange writes it (the fast path), and beside valid
    but unusual values (checked field by field), a bad candle gets the same reason."""
    rows = FakeBinance().generate_klines("BTCUSDT", "1m", T0 - 999 * MIN, 1000, seed=1)
    page = [Kline(*row[:11]) for row in rows]
    page[-1] = bad = candle(**fields)  # the generated candle at T0, replaced
    assert check_klines(page, grid("1m"), NOW) == (page[:-1], [Rejected(bad, reason)])
    page[3] = msgspec.structs.replace(page[3], volume=" 1e2 ")
    page[-2] = msgspec.structs.replace(page[-2], quote_volume="+1.5E3")
    assert check_klines(page, grid("1m"), NOW) == (page[:-1], [Rejected(bad, reason)])


def test_week_alignment_is_monday() -> None:
    """1w candles open on Monday 00:00 UTC (the epoch was a Thursday) and close 7 days later - 1 ms."""
    monday = ms(2024, 1, 1)
    week = 7 * 24 * 60 * MIN
    good = candle(open_time=monday, close_time=monday + week - 1)
    thursday = candle(open_time=monday + 3 * 24 * 60 * MIN, close_time=monday + 3 * 24 * 60 * MIN + week - 1)
    assert check_klines([good, thursday], grid("1w"), ms(2024, 6, 1)) == (
        [good],
        [Rejected(thursday, "open_time not aligned to 1w")],
    )


def test_month_alignment_is_calendar() -> None:
    """1M candles open on the 1st at 00:00 UTC and close at the next 1st - 1 ms (29 days in Feb 2024)."""
    feb, mar = ms(2024, 2, 1), ms(2024, 3, 1)
    good = candle(open_time=feb, close_time=mar - 1)
    thirty_one_days = candle(open_time=feb, close_time=feb + 31 * 24 * 60 * MIN - 1)
    second_of_month = candle(open_time=ms(2024, 2, 2), close_time=ms(2024, 3, 2) - 1)
    upcoming = candle(open_time=mar, close_time=ms(2024, 4, 1) - 1)
    assert check_klines([good, thirty_one_days, second_of_month, upcoming], grid("1M"), ms(2024, 2, 15)) == (
        [good],
        [
            Rejected(thirty_one_days, "close_time is not next open - 1 ms"),
            Rejected(second_of_month, "open_time not aligned to 1M"),
            Rejected(upcoming, "candle in the future"),
        ],
    )


# Valid in both readings, Python's Decimal and PostgreSQL's numeric, though the exchange writes none
# of them: check_klines must pass them and PostgreSQL must then store them.
TRICKY_VALID: list[tuple[str, Kline]] = [
    ("1m", candle(open="1e2", high="1.1E+02", low="9e1", close="1.05e2", volume="1e-3", quote_volume="0E5")),
    ("1m", candle(open=" 100 ", high="110 ", low=" 90", close="  105")),
    ("1m", candle(open="+100", low="-0", volume="-0", quote_volume="+0", taker_buy_base_volume="-0.000")),
    ("1m", candle(open="100.", high="110.5", low=".5", close="105.000000000000000000")),
    ("1m", candle(open="0", high="0", low="0", close="0", volume="0", trades=0)),
    (
        "1m",
        candle(open="12345678.12345678", high="12345678.12345679", low="12345678.12345678", close="12345678.12345679"),
    ),
    ("1m", candle(volume="1" * 50 + "." + "1" * 49, quote_volume="1e999", taker_buy_base_volume="1e-999")),
    ("1m", candle(trades=2**63 - 1)),
    ("1m", candle(quote_volume=None, trades=None, taker_buy_base_volume=None, taker_buy_quote_volume=None)),
    ("1w", candle(open_time=ms(2024, 1, 1), close_time=ms(2024, 1, 8) - 1)),
    ("1M", candle(open_time=ms(2024, 2, 1), close_time=ms(2024, 3, 1) - 1)),
]

# Rejected for a price, volume or trades reason that the CHECK constraint also covers.
REFUSED_BY_CONSTRAINT = [
    fields for fields, reason in REJECTED
    if reason.startswith(("low above", "open above", "close above", "negative"))
    or reason in ("high is not a finite decimal: 'NaN'", "low is not a finite decimal: '-Infinity'",
                  "close is not a finite decimal: 'inf'")
]  # fmt: skip


async def _new_series(db: asyncpg.Connection[Any], symbol: str, timeframe: str) -> int:
    series_id: int = await db.fetchval(
        "INSERT INTO series (exchange, symbol, timeframe) VALUES ('binance', $1, $2) RETURNING id", symbol, timeframe
    )
    return series_id


async def _copy_closed(db: asyncpg.Connection[Any], series_id: int, kline: Kline) -> None:
    """COPY one candle exactly as the write path encodes it."""
    rows = encode_copy_rows(series_id, [kline], closed=1)
    columns = ("series_id", "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume",
               "trades", "taker_buy_base_volume", "taker_buy_quote_volume", "is_closed")  # fmt: skip
    await db.copy_to_table("klines", source=memoryview(rows), columns=columns, format="text")  # type: ignore[arg-type]


async def test_postgres_stores_every_candle_check_klines_accepts(db: asyncpg.Connection[Any]) -> None:
    """Each tricky-but-valid candle passes check_klines, and PostgreSQL stores it (numeric input and
    the klines_candle_valid constraint) with the values Python read."""
    for n, (timeframe, kline) in enumerate(TRICKY_VALID):
        assert check_klines([kline], grid(timeframe), ms(2030, 1, 1)) == ([kline], []), kline
        series_id = await _new_series(db, f"TRICKY{n}", timeframe)
        await _copy_closed(db, series_id, kline)
        stored = await db.fetchrow(
            "SELECT open, high, low, close, volume, quote_volume, trades FROM klines WHERE series_id = $1", series_id
        )
        assert stored is not None
        read: list[Decimal | None] = [
            Decimal(v) for v in (kline.open, kline.high, kline.low, kline.close, kline.volume)
        ]
        read.append(None if kline.quote_volume is None else Decimal(kline.quote_volume))
        assert list(stored) == [*read, kline.trades], kline
    assert await db.fetchval("SELECT count(*) FROM klines") == len(TRICKY_VALID)


@pytest.mark.parametrize("fields", REFUSED_BY_CONSTRAINT)
async def test_constraint_refuses_what_check_klines_rejects(
    db: asyncpg.Connection[Any], fields: dict[str, Any]
) -> None:
    """A candle check_klines rejects for its prices, volumes or trades is refused by the constraint too."""
    bad = candle(**fields)
    assert check_klines([bad], grid("1m"), NOW)[0] == []
    series_id = await _new_series(db, "BTCUSDT", "1m")
    with pytest.raises(asyncpg.CheckViolationError, match="klines_candle_valid"):
        await _copy_closed(db, series_id, bad)
    assert await db.fetchval("SELECT count(*) FROM klines") == 0


# Rejected for a decimal that is all digits and points: with prices_by_database these pass to
# PostgreSQL unread, which must refuse each of them.
LEFT_TO_POSTGRESQL = [
    "low above open", "low above close", "open above high", "close above high",
    "volume is not a finite decimal: ''", "volume is not a finite decimal: '.'",
    "volume is not a finite decimal: '1.2.3'",
]


def test_with_prices_left_to_postgresql_only_plain_decimals_pass_unread() -> None:
    """With prices_by_database, a candle whose decimals are all plain digits and points passes
    without them being read (PostgreSQL reads and orders them); every other rejection stays, with its reason."""
    passed: list[str] = []
    for fields, reason in REJECTED:
        bad = candle(**fields)
        valid, rejected = check_klines([bad], grid("1m"), NOW, prices_by_database=True)
        if valid:
            passed.append(reason)
        else:
            assert rejected == [Rejected(bad, reason)]
    assert sorted(set(passed)) == sorted(LEFT_TO_POSTGRESQL)
    page = [candle(open_time=T0 + i * MIN, close_time=T0 + (i + 1) * MIN - 1) for i in range(120)]
    assert check_klines(page, grid("1m"), NOW + 200 * MIN, prices_by_database=True) == (page, [])


@pytest.mark.parametrize("fields", [fields for fields, reason in REJECTED if reason in LEFT_TO_POSTGRESQL])
async def test_postgresql_refuses_every_candle_left_to_it(db: asyncpg.Connection[Any], fields: dict[str, Any]) -> None:
    """No bad candle gets in by being left to PostgreSQL: each is refused on write as RowRefusedError
    (the collector then checks the page again in full)."""
    bad = candle(**fields)
    assert check_klines([bad], grid("1m"), NOW, prices_by_database=True) == ([bad], [])
    series_id = await _new_series(db, "BTCUSDT", "1m")
    with pytest.raises(RowRefusedError), domain_errors():
        await _copy_closed(db, series_id, bad)
    assert await db.fetchval("SELECT count(*) FROM klines") == 0

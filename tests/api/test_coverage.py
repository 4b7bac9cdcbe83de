"""GET /api/v1/coverage and the coverage summary of the admin status, over a ledger written by SQL:
a verified range, a confirmed exchange gap, a failed range and ranges nobody fetched."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service.settings import Settings
from tests.conftest import Api, Clock, assert_error, running_app

COVERAGE = "/api/v1/coverage"
STATUS = "/api/v1/admin/data-collection/status"
CONFIGS = "/api/v1/admin/data-collection/configs"
# "Now" for the service: 5 s into the 12:00 candle of 2026-11-24 (its clock runs on at wall speed,
# so the current 1h candle stays the 12:00 one for the test's life).
NOW = datetime(2026, 11, 24, 12, 0, 5, tzinfo=UTC)
DAY = datetime(2026, 11, 23, tzinfo=UTC)
LISTING = DAY  # the exchange's first 1h candle of BTCUSDT


def at(hours: float) -> datetime:
    """DAY + `hours`."""
    return DAY + timedelta(hours=hours)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# BTCUSDT 1h from the listing on (hours after DAY):
#   0-6 never fetched | 6-12 verified | 12-14 exchange gap | 14-16 never fetched | 16-17 failed
#   | 17-34 verified | 34-36 (up to now, 11-24 12:00) never fetched
Range = tuple[datetime, datetime, str, int, str | None]  # start, end, kind, checks, detail
LEDGER_1H: list[Range] = [
    (at(6), at(12), "verified", 1, None),
    (at(12), at(14), "exchange_gap", 2, None),
    (at(16), at(17), "failed", 1, "HTTP 503 after 5 attempts"),
    (at(17), at(34), "verified", 1, None),
]


async def add_series(
    db: asyncpg.Connection[Any], symbol: str, timeframe: str, ledger: list[Range], *, listing: datetime | None = None,
) -> int:
    series_id: int = await db.fetchval(
        "INSERT INTO series (exchange, symbol, timeframe, listing_start) VALUES ('binance', $1, $2, $3) RETURNING id",
        symbol, timeframe, None if listing is None else ms(listing),
    )
    await db.executemany(
        "INSERT INTO coverage (series_id, start_time, end_time, kind, checks, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        [(series_id, ms(start), ms(end), kind, checks, detail) for start, end, kind, checks, detail in ledger],
    )
    return series_id


@pytest.fixture
async def admin(make_settings: Callable[..., Settings]) -> AsyncIterator[Api]:
    """The app at NOW, scheduler off."""
    async with running_app(make_settings(scheduler_enabled=False), Clock(start=NOW.timestamp())) as api:
        yield api


@pytest.fixture
async def ledger(admin: Api, db: asyncpg.Connection[Any]) -> None:
    """BTCUSDT 1h (LEDGER_1H, listing known), BTCUSDT 1M (Jan and Feb 2026 verified), ETHUSDT 1h
    (stored before the ledger existed: a series without ranges or listing). The scheduler is off, so
    no symbol refresh ran: BTCUSDT and ETHUSDT are listed here (for BTC/USDT and the configs)."""
    await db.execute(
        "INSERT INTO symbols (exchange, symbol, base_asset, quote_asset, status)"
        " VALUES ('binance', 'BTCUSDT', 'BTC', 'USDT', 'TRADING'), ('binance', 'ETHUSDT', 'ETH', 'USDT', 'TRADING')"
    )
    await add_series(db, "BTCUSDT", "1h", LEDGER_1H, listing=LISTING)
    jan, mar = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)
    await add_series(db, "BTCUSDT", "1M", [(jan, mar, "verified", 1, None)])
    await add_series(db, "ETHUSDT", "1h", [])


async def coverage(api: Api, **params: str) -> dict[str, Any]:
    response = await api.anonymous.get(COVERAGE, params=params)  # a public read
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def hole(start: datetime, end: datetime, candles: int) -> dict[str, Any]:
    return {"start": iso(start), "end": iso(end), "candles": candles}


async def test_the_report_counts_verified_gap_failed_and_unfetched_ranges(admin: Api, ledger: None) -> None:
    """Default window: from the earliest range to the current candle. Failed and never-fetched
    ranges are holes, the exchange gap is not; completeness counts verified and gap candles."""
    body = await coverage(admin, symbol="BTCUSDT", timeframe="1h")
    lag = body.pop("freshness_lag_seconds")
    checked = [r.pop("checked_at") for r in body["ranges"]]
    assert all(c is not None for c in checked)
    assert body == {
        "exchange": "binance", "symbol": "BTCUSDT", "timeframe": "1h", "listing_start": iso(LISTING),
        "window_start": iso(at(6)), "window_end": "2026-11-24T12:00:00Z",
        "candles_expected": 30, "candles_verified": 23, "candles_exchange_gap": 2, "candles_missing": 5,
        "candles_unavailable": 0,
        "completeness_percent": 83.33, "complete": False,
        "ranges": [
            {"start": iso(at(6)), "end": iso(at(12)), "kind": "verified", "candles": 6, "checks": 1, "detail": None},
            {"start": iso(at(12)), "end": iso(at(14)), "kind": "exchange_gap", "candles": 2, "checks": 2,
             "detail": None},
            {"start": iso(at(16)), "end": iso(at(17)), "kind": "failed", "candles": 1, "checks": 1,
             "detail": "HTTP 503 after 5 attempts"},
            {"start": iso(at(17)), "end": iso(at(34)), "kind": "verified", "candles": 17, "checks": 1, "detail": None},
        ],
        # The never-fetched 14-16 and the failed 16-17 are one hole.
        "holes": [hole(at(14), at(17), 3), hole(at(34), at(36), 2)],
    }
    # Now (12:00:05 and running) less the end of the newest verified range (10:00).
    assert 2 * 3600 + 5 <= lag < 2 * 3600 + 65


async def test_the_window_clips_ranges_and_aligns_to_candles(admin: Api, ledger: None) -> None:
    """start and end are aligned up to candle opens (candles opening in [start, end)); ranges are cut to the window."""
    body = await coverage(
        admin, symbol="BTC/USDT", timeframe="1h", start="2026-11-23T07:30:00Z", end="2026-11-23T16:30"
    )
    assert body["symbol"] == "BTCUSDT"
    assert (body["window_start"], body["window_end"]) == (iso(at(8)), iso(at(17)))
    assert [(r["start"], r["end"], r["kind"], r["candles"]) for r in body["ranges"]] == [
        (iso(at(8)), iso(at(12)), "verified", 4),
        (iso(at(12)), iso(at(14)), "exchange_gap", 2),
        (iso(at(16)), iso(at(17)), "failed", 1),
    ]
    assert body["holes"] == [hole(at(14), at(17), 3)]
    assert (body["candles_expected"], body["candles_missing"], body["completeness_percent"]) == (9, 3, 66.66)

    complete = await coverage(admin, symbol="BTCUSDT", timeframe="1h", start=iso(at(17)), end=iso(at(34)))
    assert (complete["complete"], complete["completeness_percent"], complete["holes"]) == (True, 100.0, [])
    assert complete["candles_expected"] == complete["candles_verified"] == 17
    # An end past now is capped at the current candle: nothing still open counts as missing.
    future = await coverage(admin, symbol="BTCUSDT", timeframe="1h", start=iso(at(17)), end="2030-01-01")
    assert future["window_end"] == "2026-11-24T12:00:00Z"


async def test_from_listing_the_time_before_the_first_range_is_a_hole(admin: Api, ledger: None) -> None:
    """start=listing reports from the exchange's first candle: never-fetched history is missing."""
    body = await coverage(admin, symbol="BTCUSDT", timeframe="1h", start="listing")
    assert body["window_start"] == iso(LISTING)
    assert body["holes"] == [hole(at(0), at(6), 6), hole(at(14), at(17), 3), hole(at(34), at(36), 2)]
    assert (body["candles_expected"], body["candles_missing"], body["completeness_percent"]) == (36, 11, 69.44)


async def test_monthly_candles_follow_the_calendar(admin: Api, ledger: None) -> None:
    """1M: windows align to the first of a month and count calendar months."""
    body = await coverage(admin, symbol="BTCUSDT", timeframe="1M", start="2025-12-15", end="2026-06-15")
    assert (body["window_start"], body["window_end"]) == ("2026-01-01T00:00:00Z", "2026-07-01T00:00:00Z")
    assert (body["candles_expected"], body["candles_verified"]) == (6, 2)
    assert body["ranges"][0]["candles"] == 2
    assert body["holes"] == [{"start": "2026-03-01T00:00:00Z", "end": "2026-07-01T00:00:00Z", "candles": 4}]
    assert body["completeness_percent"] == 33.33
    # By default up to the current month (November 2026), which has not closed.
    default = await coverage(admin, symbol="BTCUSDT", timeframe="1M")
    assert (default["window_end"], default["candles_expected"], default["candles_missing"]) == (
        "2026-11-01T00:00:00Z", 10, 8,
    )


async def test_a_series_without_ledger_ranges_reports_an_empty_window(admin: Api, ledger: None) -> None:
    """Collected before the ledger existed: no ranges, nothing verified, no freshness; a given window is all holes."""
    body = await coverage(admin, symbol="ETHUSDT", timeframe="1h")
    assert (body["candles_expected"], body["ranges"], body["freshness_lag_seconds"]) == (0, [], None)
    assert body["window_start"] == body["window_end"] == "2026-11-24T12:00:00Z"
    window = await coverage(admin, symbol="ETHUSDT", timeframe="1h", start=iso(at(30)))
    assert window["holes"] == [hole(at(30), at(36), 6)]
    assert (window["completeness_percent"], window["complete"]) == (0.0, False)


async def test_bad_requests_are_4xx_naming_what_is_wrong(admin: Api, ledger: None) -> None:
    """Unknown timeframe 422, never-collected series 404, start after end 422, a garbled start 422,
    start=listing before the listing is known 422, another exchange 422."""
    http = admin.anonymous
    assert_error(await http.get(COVERAGE, params={"symbol": "BTCUSDT", "timeframe": "2m"}), 422, "2m")
    assert_error(await http.get(COVERAGE, params={"symbol": "XRPETH", "timeframe": "1h"}), 404, "XRPETH")
    assert_error(await http.get(COVERAGE, params={"symbol": "BTCUSDT", "timeframe": "4h"}), 404, "BTCUSDT", "4h")
    assert_error(await http.get(COVERAGE, params={"symbol": "NOSUCH", "timeframe": "1h"}), 404, "NOSUCH")
    assert_error(await http.get(COVERAGE, params={
        "symbol": "BTCUSDT", "timeframe": "1h", "start": iso(at(20)), "end": iso(at(10)),
    }), 422, "end must not be before start")
    assert_error(await http.get(COVERAGE, params={
        "symbol": "BTCUSDT", "timeframe": "1h", "start": "2027-01-01",
    }), 422, "start")
    assert_error(await http.get(COVERAGE, params={"symbol": "BTCUSDT", "timeframe": "1h", "start": "yesterday"}),
                 422, "start", "yesterday")
    assert_error(await http.get(COVERAGE, params={"symbol": "BTCUSDT", "timeframe": "1h", "end": "soon"}), 422, "end")
    assert_error(await http.get(COVERAGE, params={"symbol": "ETHUSDT", "timeframe": "1h", "start": "listing"}),
                 422, "listing")
    assert_error(await http.get(COVERAGE, params={"symbol": "BTCUSDT", "timeframe": "1h", "exchange": "kraken"}),
                 422, "kraken")


async def test_the_admin_status_summarises_every_configured_series(admin: Api, ledger: None) -> None:
    """One entry per config × timeframe, in order: figures from the ledger, or collected=false."""
    for symbol, timeframes in (("BTCUSDT", ["1h", "1M", "4h"]), ("ETHUSDT", ["1d"])):
        body = {"symbol": symbol, "timeframes": timeframes, "interval_minutes": 60, "enabled": False}
        assert (await admin.http.post(CONFIGS, json=body)).status_code == 201
    response = await admin.http.get(STATUS)
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["total_configs"] == 2  # the other fields are still there
    summary = status["coverage"]
    lags = [entry.pop("freshness_lag_seconds") for entry in summary]
    btc, eth = summary[0]["config_id"], summary[3]["config_id"]
    assert summary == [
        {"config_id": btc, "exchange": "binance", "symbol": "BTCUSDT", "timeframe": "1h", "collected": True,
         "window_start": iso(at(6)), "completeness_percent": 83.33, "candles_missing": 5, "holes": 2},
        {"config_id": btc, "exchange": "binance", "symbol": "BTCUSDT", "timeframe": "1M", "collected": True,
         "window_start": "2026-01-01T00:00:00Z", "completeness_percent": 20.0, "candles_missing": 8, "holes": 1},
        {"config_id": btc, "exchange": "binance", "symbol": "BTCUSDT", "timeframe": "4h", "collected": False,
         "window_start": None, "completeness_percent": None, "candles_missing": 0, "holes": 0},
        {"config_id": eth, "exchange": "binance", "symbol": "ETHUSDT", "timeframe": "1d", "collected": False,
         "window_start": None, "completeness_percent": None, "candles_missing": 0, "holes": 0},
    ]
    assert 2 * 3600 + 5 <= lags[0] < 2 * 3600 + 65
    assert lags[2:] == [None, None]
    # The same figures as the series' own report.
    report = await coverage(admin, symbol="BTCUSDT", timeframe="1M")
    assert (report["completeness_percent"], report["candles_missing"]) == (20.0, 8)

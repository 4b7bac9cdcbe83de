"""Complete, verified history through the whole pipeline: ranges from the listing, plans that match
the run, the coverage ledger (verified, exchange gaps, holes), gap repair and quarantined candles.

The fake exchange and the service share one clock frozen at T0 (10:00:30, half a minute into the
10:00 candle); every series below ends in that open candle.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from service.tasks.jobs import CollectionPlan, PlannedSeries
from tests.collection.test_collect import MINUTE, T0, frozen_at, stored
from tests.collection.test_scheduler import create, fast_clock
from tests.conftest import Api, serve_app
from tests.fakes.binance import FakeBinance

OPEN = T0 - 30_000  # the candle open at T0: every one before it has closed
START = "/api/v1/data-collector/start"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def ledger(db: asyncpg.Connection[Any], symbol: str, timeframe: str = "1m") -> list[tuple[int, int, str, int]]:
    rows = await db.fetch(
        """
        SELECT c.start_time, c.end_time, c.kind, c.checks FROM coverage c JOIN series s ON s.id = c.series_id
         WHERE s.symbol = $1 AND s.timeframe = $2 ORDER BY c.start_time
        """,
        symbol, timeframe,
    )
    return [(r["start_time"], r["end_time"], r["kind"], r["checks"]) for r in rows]


async def start(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.http.post(START, json=body)
    assert response.status_code == 202, response.text
    return await api.wait(response.json()["task_id"], timeout=30)


async def repair(api: Api, symbol: str, timeframes: list[str]) -> dict[str, Any]:
    response = await api.http.post("/api/v1/data-collector/repair", json={"symbol": symbol, "timeframes": timeframes})
    assert response.status_code == 202, response.text
    (task_id,) = response.json()["task_ids"]
    return await api.wait(str(task_id), timeout=30)


def klines_requests(fake: FakeBinance) -> list[dict[str, str]]:
    return [r.params for r in fake.requests if r.path == "/api/v3/klines" and r.status == 200]


async def test_a_backfill_from_listing_takes_every_candle_of_a_recently_listed_symbol(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """`start: "listing"` asks the exchange for the first candle (startTime=0), fetches everything from
    it, and the ledger holds the whole history as one verified range up to the open candle."""
    clock = frozen_at(fake, T0)
    listing = OPEN - 2999 * MINUTE  # listed about two days ago: 3,000 candles, far past DEFAULT_HISTORY_CANDLES
    fake.generate_klines("NEWUSDT", "1m", listing, 3000)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        fake.reset_stats()
        task = await start(api, {"symbols": ["NEWUSDT"], "timeframes": ["1m"], "start": "listing"})
    assert task["status"] == "completed", task
    assert task["params"]["start"] == "listing"
    assert task["result"]["candles_written"] == 3000
    rows = await stored(db, "NEWUSDT", "1m")
    assert [r["open_time"] for r in rows] == [listing + i * MINUTE for i in range(3000)]
    assert await ledger(db, "NEWUSDT") == [(listing, OPEN, "verified", 1)]
    assert klines_requests(fake)[0]["startTime"] == "0"  # the listing, asked once
    assert await db.fetchval("SELECT listing_start FROM series WHERE symbol = 'NEWUSDT'") == listing


async def test_a_plan_matches_what_the_run_then_does(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """The plan's candles, requests and weight are what the run fetched; planned again afterwards,
    only the open candle is left (verified ranges are never fetched again)."""
    clock = frozen_at(fake, T0)
    fake.generate_klines("BTCUSDT", "1m", OPEN - 4499 * MINUTE, 4500)
    body = {"symbols": ["BTCUSDT"], "timeframes": ["1m"], "start": iso(OPEN - 3999 * MINUTE)}
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        plan = (await api.http.post("/api/v1/data-collector/plan", json=body)).json()
        fake.reset_stats()
        task = await start(api, body)
        again = (await api.http.post("/api/v1/data-collector/plan", json=body)).json()
    assert task["status"] == "completed", task
    assert (plan["candles_stored"], plan["candles_to_fetch"]) == (0, 4000)
    assert task["result"]["candles_written"] == plan["candles_to_fetch"]
    # 3 full windows, the open-ended one, and its open candle read again
    assert len(klines_requests(fake)) == plan["requests"] == 5
    assert sum(fake.weight_by_window.values()) == plan["request_weight"] == 10
    assert plan["weight_budget_per_minute"] > 0
    assert plan["estimated_seconds"] == 0.0  # this minute's weight budget covers the 10 weight
    (series,) = plan["series"]
    assert series["start"] == iso(OPEN - 3999 * MINUTE) and series["listing_start"] == iso(OPEN - 4499 * MINUTE)
    assert (again["candles_stored"], again["candles_to_fetch"], again["requests"]) == (3999, 1, 1)


async def test_a_start_before_the_listing_begins_at_the_listing(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """A range reaching back before the symbol existed is no hole: it begins at the first candle, and
    an `end` in the past fetches only that range."""
    clock = frozen_at(fake, T0)
    listing = OPEN - 999 * MINUTE
    fake.generate_klines("NEWUSDT", "1m", listing, 1000)
    body = {"symbols": ["NEWUSDT"], "timeframes": ["1m"], "start": "2020-01-01", "end": iso(listing + 500 * MINUTE)}
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        task = await start(api, body)
    assert task["result"]["candles_written"] == 500
    assert await ledger(db, "NEWUSDT") == [(listing, listing + 500 * MINUTE, "verified", 1)]


async def test_a_maintenance_gap_is_an_exchange_gap_a_deleted_range_a_hole_and_repair_fills_only_the_hole(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """The exchange's empty hour is confirmed by a second fetch and recorded as an exchange gap;
    candles deleted from the database become a hole; a repair fetches exactly the hole, never a
    verified range nor the gap, and logs its run as `gap_repair`."""
    clock = frozen_at(fake, T0)
    listing = OPEN - 2999 * MINUTE
    fake.generate_klines("ETHUSDT", "1m", listing, 3000)
    gap = (listing + 1200 * MINUTE, listing + 1260 * MINUTE)
    assert fake.remove_klines("ETHUSDT", "1m", *gap) == 60
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        task = await start(api, {"symbols": ["ETHUSDT"], "timeframes": ["1m"], "start": "listing"})
        assert task["status"] == "completed", task
        assert task["result"]["candles_written"] == 2940
        assert task["result"]["pairs"][0]["exchange_gaps"] == 1
        assert await ledger(db, "ETHUSDT") == [
            (listing, gap[0], "verified", 1), (gap[0], gap[1], "exchange_gap", 2), (gap[1], OPEN, "verified", 1),
        ]

        hole = (listing + 100 * MINUTE, listing + 150 * MINUTE)
        deleted = await db.execute(
            """
            DELETE FROM klines USING series s WHERE s.id = klines.series_id AND s.symbol = 'ETHUSDT'
               AND open_time >= $1 AND open_time < $2
            """,
            *hole,
        )
        assert deleted == "DELETE 50"
        after_delete = await ledger(db, "ETHUSDT")
        assert after_delete[0] == (listing, hole[0], "verified", 1)
        assert after_delete[1][0] > hole[1] - MINUTE and after_delete[1][2] == "verified"  # the rest still verified

        fake.reset_stats()
        repaired = await repair(api, "ETHUSDT", ["1m"])
    assert repaired["status"] == "completed", repaired
    assert repaired["task_type"] == "gap_repair"
    assert repaired["result"]["candles_written"] == 50
    requests = klines_requests(fake)
    assert [(int(r["startTime"]), int(r["endTime"])) for r in requests] == [(hole[0], hole[1] - MINUTE)]
    assert await ledger(db, "ETHUSDT") == [
        (listing, gap[0], "verified", 1), (gap[0], gap[1], "exchange_gap", 2), (gap[1], OPEN, "verified", 1),
    ]
    rows = await stored(db, "ETHUSDT", "1m")
    assert len(rows) == 2940
    logs = await db.fetch("SELECT job_type, job_name, status FROM job_execution_logs WHERE task_id = $1::uuid",
                          repaired["task_id"])
    assert [tuple(r.values()) for r in logs] == [("gap_repair", "gap_repair", "success")]


async def test_an_exchange_gap_is_rechecked_once_and_then_left_alone(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """Past EXCHANGE_GAP_RECHECK_AFTER a repair fetches the gap once more; found empty again it is
    marked re-checked (3 checks) and no later repair asks for it; history the exchange re-publishes
    in a gap is taken on its re-check."""
    clock = frozen_at(fake, T0)
    listing = OPEN - 1999 * MINUTE
    fake.generate_klines("ETHUSDT", "1m", listing, 2000)
    fake.generate_klines("BTCUSDT", "1m", listing, 2000)
    eth_gap = (listing + 500 * MINUTE, listing + 530 * MINUTE)
    btc_gap = (listing + 700 * MINUTE, listing + 710 * MINUTE)
    fake.remove_klines("ETHUSDT", "1m", *eth_gap)
    republished = [row for row in fake.get_klines("BTCUSDT", "1m") if btc_gap[0] <= row[0] < btc_gap[1]]
    fake.remove_klines("BTCUSDT", "1m", *btc_gap)
    async with serve_app(make_settings(exchange_gap_recheck_after=0), clock) as api:
        await api.wait_idle()
        await start(api, {"symbols": ["ETHUSDT", "BTCUSDT"], "timeframes": ["1m"], "start": "listing"})
        fake.add_klines("BTCUSDT", "1m", republished)

        fake.reset_stats()
        first = await repair(api, "ETHUSDT", ["1m"])
        assert first["status"] == "completed", first
        assert [int(r["startTime"]) for r in klines_requests(fake)] == [eth_gap[0], eth_gap[0]]  # fetch, confirm
        assert (eth_gap[0], eth_gap[1], "exchange_gap", 3) in await ledger(db, "ETHUSDT")

        fake.reset_stats()
        await repair(api, "ETHUSDT", ["1m"])
        assert klines_requests(fake) == []

        btc = await repair(api, "BTCUSDT", ["1m"])
    assert btc["result"]["candles_written"] == 10
    assert await ledger(db, "BTCUSDT") == [(listing, OPEN, "verified", 1)]


@pytest.mark.parametrize(
    ("field", "value", "reason", "constraint"),
    [
        ("low", "99999999.00000000", "low above open", True),  # refused by the CHECK constraint, then found here
        ("volume", "1.2.3", "volume is not a finite decimal", True),  # refused by numeric input, then found here
        ("volume", "-1", "negative volume", True),  # not plain digits: found before writing
        ("low", "99999999.00000000", "low above open", False),  # no constraint: the service checks every price
    ],
)
async def test_invalid_candles_are_quarantined_counted_and_left_as_a_hole(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any],
    field: str, value: str, reason: str, constraint: bool,
) -> None:
    """A bad candle never reaches klines, whichever check finds it, also where the klines CHECK
    constraint was dropped: it is kept in quarantine with the reason and the raw row, counted in the
    task result, the execution log and /metrics, its slot stays a hole in the ledger, and the rest of
    its page is written."""
    if not constraint:
        await db.execute("ALTER TABLE klines DROP CONSTRAINT klines_candle_valid")
    clock = frozen_at(fake, T0)
    listing = OPEN - 199 * MINUTE
    fake.generate_klines("BTCUSDT", "1m", listing, 200)
    bad = listing + 100 * MINUTE
    fake.corrupt_kline("BTCUSDT", "1m", bad, **{field: value})
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        task = await start(api, {"symbols": ["BTCUSDT"], "timeframes": ["1m"], "start": "listing"})
        metrics = (await api.http.get("/metrics")).text
    assert task["status"] == "completed", task
    assert task["result"]["candles_quarantined"] == 1
    assert task["result"]["pairs"][0]["candles_quarantined"] == 1
    assert task["result"]["candles_written"] == 199
    assert bad not in [r["open_time"] for r in await stored(db, "BTCUSDT", "1m")]
    (row,) = await db.fetch("SELECT open_time, reason, raw, task_id::text FROM quarantined_klines")
    assert row["open_time"] == bad and row["reason"].startswith(reason)
    raw = json.loads(row["raw"])
    assert raw[0] == bad and value in raw
    assert row["task_id"] == task["task_id"]
    log = await db.fetchrow("SELECT metadata FROM job_execution_logs WHERE task_id = $1::uuid", task["task_id"])
    assert log is not None and json.loads(log["metadata"])["records_quarantined"] == 1
    assert await ledger(db, "BTCUSDT") == [(listing, bad, "verified", 1), (bad + MINUTE, OPEN, "verified", 1)]
    quarantined = {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics) for sample in family.samples
        if sample.name == "kline_candles_quarantined_total"
    }
    assert sum(quarantined.values()) == 1


async def test_under_exchange_faults_the_history_has_no_hole(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """With 5xx answers, dropped connections and garbled bodies sprinkled over the klines requests
    (the faults of the faults tests), a backfill from listing, then a repair of candles lost from the
    database, end complete: every candle, the maintenance gap recorded as such, no hole left."""
    clock = frozen_at(fake, T0)
    listing = OPEN - 29_999 * MINUTE
    rows = fake.generate_klines("SOLUSDT", "1m", listing, 30_000)
    gap = (listing + 13_100 * MINUTE, listing + 13_150 * MINUTE)
    fake.remove_klines("SOLUSDT", "1m", *gap)
    # Applied in turn, each to every n-th klines request: about one request in three fails.
    fake.add_fault("500", count=2, every=3)
    fake.add_fault("502", count=2, every=3)
    fake.add_fault("drop", count=4, every=2)
    fake.add_fault("bad_json", count=2, every=3)
    async with serve_app(make_settings(binance_retry_attempts=8), clock) as api:
        await api.wait_idle()
        task = await start(api, {"symbols": ["SOLUSDT"], "timeframes": ["1m"], "start": "listing"})
        assert task["status"] == "completed", task
        assert {500, 502, 0} <= set(fake.status_counts)
        # Then a repair, under the same faults, of candles lost from the database.
        await db.execute("DELETE FROM klines WHERE open_time >= $1 AND open_time < $2",
                         listing + 20_000 * MINUTE, listing + 22_500 * MINUTE)
        fake.add_fault("500", count=2, every=2)
        fake.add_fault("drop", count=2, every=2)
        fake.add_fault("bad_json", count=1)
        repaired = await repair(api, "SOLUSDT", ["1m"])
        coverage = (await api.http.get(
            "/api/v1/coverage", params={"symbol": "SOLUSDT", "timeframe": "1m", "start": "listing"}
        )).json()
    assert repaired["status"] == "completed", repaired
    assert repaired["result"]["candles_written"] == 2500
    expected = [r[0] for r in rows if not gap[0] <= r[0] < gap[1]]
    assert [r["open_time"] for r in await stored(db, "SOLUSDT", "1m")] == expected
    assert await ledger(db, "SOLUSDT") == [
        (listing, gap[0], "verified", 1), (gap[0], gap[1], "exchange_gap", 2), (gap[1], OPEN, "verified", 1),
    ]
    assert (coverage["complete"], coverage["holes"], coverage["completeness_percent"]) == (True, [], 100.0)
    assert coverage["candles_exchange_gap"] == 50


async def test_a_running_backfill_reports_an_eta_within_a_quarter_of_the_time_it_then_took(
    fake: FakeBinance, settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """While a 40-page backfill runs, every `eta_seconds` it reports between 20 % and 80 % of its
    progress, added to the time elapsed, lands within 25 % of the run's measured duration."""
    clock = frozen_at(fake, T0)
    # An exchange slower than localhost, so that the run lasts seconds (at 25 ms, once pages were
    # written in batches, it lasted about one, and its first second's rate was not yet its own; at
    # 60 ms about two, and a loaded CI machine once put an early estimate 46% off).
    fake.latency_ms = 100
    fake.generate_klines("BTCUSDT", "1m", OPEN - 39_999 * MINUTE, 40_000)
    async with serve_app(settings, clock) as api:
        await api.wait_idle()
        response = await api.http.post(START, json={"symbols": ["BTCUSDT"], "timeframes": ["1m"], "start": "listing"})
        task_id = response.json()["task_id"]
        began = time.monotonic()
        samples: list[tuple[float, float]] = []
        while (body := await api.task(task_id))["status"] in {"pending", "running"}:
            if body["eta_seconds"] is not None and 20 <= body["progress"] <= 80:
                samples.append((time.monotonic() - began, body["eta_seconds"]))
            await asyncio.sleep(0.1)
        took = time.monotonic() - began
    assert body["status"] == "completed", body
    assert body["eta_seconds"] is None  # an ended task has no ETA
    assert len(samples) >= 3, (samples, took)
    misses = [(elapsed, eta) for elapsed, eta in samples if abs(elapsed + eta - took) > 0.25 * took]
    assert misses == [], (misses, took)


async def test_a_config_from_listing_backfills_and_the_scheduled_repair_heals_a_hole(
    fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """A config with `history_start: "listing"` collects the whole history on its first scheduled run;
    candles deleted afterwards are fetched again by the scheduled gap repair (GAP_REPAIR_INTERVAL),
    which logs its runs as `gap_repair`."""
    clock = fast_clock(fake, speed=600)  # one virtual minute per 0.1 s
    listing = OPEN - 2999 * MINUTE
    fake.generate_klines("BTCUSDT", "1m", listing, 3000 + 400)  # and the candles of the minutes to come
    deleted = (listing + 10 * MINUTE, listing + 20 * MINUTE)
    async with serve_app(make_settings(gap_repair_interval=600), clock) as api:
        await api.wait_idle()
        # A day between runs: its own next run (which fills holes too) must not come first.
        config = await create(api, interval_minutes=1440, history_start="listing")
        assert config["history_start"] == "listing"
        async with asyncio.timeout(20):
            while len(await stored(db, "BTCUSDT", "1m")) < 3000:
                await asyncio.sleep(0.05)
        first = (await ledger(db, "BTCUSDT"))[0]
        assert first[0] == listing and first[2] == "verified" and first[1] > listing + 2998 * MINUTE
        await db.execute("DELETE FROM klines WHERE open_time >= $1 AND open_time < $2", *deleted)
        back = "SELECT count(*) FROM klines WHERE open_time >= $1 AND open_time < $2"
        running = "SELECT count(*) FROM job_execution_logs WHERE status = 'running'"
        async with asyncio.timeout(20):  # until a repair has put them back and logged its run
            while await db.fetchval(back, *deleted) < 10 or await db.fetchval(running):
                await asyncio.sleep(0.05)
    opens = [r["open_time"] for r in await stored(db, "BTCUSDT", "1m")]
    assert opens[:3000] == [listing + i * MINUTE for i in range(3000)]
    logs = await db.fetch("SELECT job_type, job_name, status FROM job_execution_logs WHERE task_id IS NOT NULL")
    # The config ran once (a day between runs); everything after it was a repair.
    assert [r["job_type"] for r in logs].count("scheduled_data_collection") == 1
    repairs = [(r["job_name"], r["status"]) for r in logs if r["job_type"] == "gap_repair"]
    assert repairs and set(repairs) == {("gap_repair", "success")}


def test_a_plan_beyond_this_minutes_budget_takes_whole_minutes_of_it() -> None:
    """Weight past what is left this minute waits for the next minutes, a whole budget each: the run
    ends early in the minute that spends its last weight."""
    def plan(weight: int, left: int) -> CollectionPlan:
        series = PlannedSeries(
            symbol="BTCUSDT", timeframe="1m", start_ms=0, end_ms=None, listing_start=0, candles_stored=0,
            candles_to_fetch=weight * 500, requests=weight // 2, request_weight=weight,
        )
        return CollectionPlan(
            series=[series], weight_budget=300, window_seconds=60.0, weight_left_in_window=left,
            seconds_to_next_window=20.0,
        )

    assert plan(100, left=100).estimated_seconds() == 0.0
    assert plan(101, left=100).estimated_seconds() == 20.0
    assert plan(400, left=100).estimated_seconds() == 20.0
    assert plan(1000, left=100).estimated_seconds() == 140.0  # 900 beyond: three more minutes, the last at +140 s
    assert plan(10, left=0).weight_budget_per_minute == 300
    no_budget = msgspec.structs.replace(plan(10, left=0), weight_budget=None)
    assert no_budget.estimated_seconds() is None


def test_a_plan_on_a_sliding_window_takes_whole_windows_of_it() -> None:
    """A venue counting requests in 5 s windows (Bybit): 1,164 requests over a budget of 582 with
    none left now take two more windows after the current one turns."""
    series = PlannedSeries(
        symbol="BTCUSDT", timeframe="1m", start_ms=0, end_ms=None, listing_start=0, candles_stored=0,
        candles_to_fetch=1_164_000, requests=1164, request_weight=1164,
    )
    plan = CollectionPlan(
        series=[series], weight_budget=582, window_seconds=5.0, weight_left_in_window=0, seconds_to_next_window=5.0
    )
    assert plan.estimated_seconds() == 10.0
    assert plan.weight_budget_per_minute == 6984

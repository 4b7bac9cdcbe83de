"""Self-test of the fake Binance: it must answer like the real spot REST API, or the tests built on it lie."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from service.records import Kline
from tests.fakes.binance import JSON_CONTENT_TYPE, FakeBinance

T0 = 1_699_999_980_000  # a minute boundary (2023-11-14 22:13:00 UTC)
MIN = 60_000
ROOT = Path(__file__).resolve().parents[2]
REAL_KLINES = ROOT / "tests/data/real-klines/nautilus-binance-spot-BTCUSDT-1m-api-response.json"


@pytest.fixture
async def binance() -> AsyncIterator[FakeBinance]:
    """A started fake with a frozen clock at T0 and BTCUSDT/ETHUSDT listed."""
    async with FakeBinance(now_ms=lambda: T0) as fake:
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        fake.add_symbol("ETHUSDT", "ETH", "USDT")
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session closed after the test."""
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, fake: FakeBinance, path: str, **params: Any) -> tuple[int, Any, Any]:
    """GET and decode: (status, json body, headers)."""
    async with http.get(fake.url + path, params={k: str(v) for k, v in params.items()}) as resp:
        return resp.status, json.loads(await resp.read()), resp.headers


def opens(rows: list[list[Any]]) -> list[int]:
    """Open times as candle indexes from T0."""
    return [(r[0] - T0) // MIN for r in rows]


async def test_klines_selection(binance: FakeBinance, http: aiohttp.ClientSession) -> None:
    """startTime/endTime/limit pick rows like Binance: forward from startTime, back from endTime, else latest."""
    binance.generate_klines("BTCUSDT", "1m", T0, 10)
    binance.set_time(T0 + 10 * MIN)
    q = {"symbol": "BTCUSDT", "interval": "1m"}
    assert opens((await get(http, binance, "/api/v3/klines", **q))[1]) == list(range(10))
    assert opens((await get(http, binance, "/api/v3/klines", **q, startTime=T0 + 2 * MIN, limit=3))[1]) == [2, 3, 4]
    assert opens((await get(http, binance, "/api/v3/klines", **q, startTime=T0 + 1, limit=2))[1]) == [1, 2]
    assert opens((await get(http, binance, "/api/v3/klines", **q, endTime=T0 + 5 * MIN, limit=2))[1]) == [4, 5]
    both = await get(http, binance, "/api/v3/klines", **q, startTime=T0 + MIN, endTime=T0 + 3 * MIN)
    assert opens(both[1]) == [1, 2, 3]
    assert opens((await get(http, binance, "/api/v3/klines", **q, limit=4))[1]) == [6, 7, 8, 9]
    assert (await get(http, binance, "/api/v3/klines", **q, startTime=T0 + 20 * MIN))[1] == []


@pytest.fixture
def real_rows() -> list[list[Any]]:
    """A recorded raw /api/v3/klines body (10 BTCUSDT 1m rows)."""
    rows: list[list[Any]] = json.loads(REAL_KLINES.read_text())
    return rows


async def test_real_rows_round_trip(
    binance: FakeBinance, http: aiohttp.ClientSession, real_rows: list[list[Any]]
) -> None:
    """Stored 12-field rows come back byte-exact: int times/trades, string prices, compact JSON, Binance headers."""
    rows = real_rows
    binance.set_klines("BTCUSDT", "1m", rows)
    binance.set_time(rows[-1][6] + 1)
    async with http.get(binance.url + "/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m"}) as resp:
        raw = await resp.read()
        assert resp.headers["Content-Type"] == JSON_CONTENT_TYPE
    assert raw == json.dumps(rows, separators=(",", ":")).encode()
    first = json.loads(raw)[0]
    assert [type(v) for v in first] == [int, str, str, str, str, str, int, str, int, str, str, str]
    assert first[11] == "0"


async def test_error_bodies(binance: FakeBinance, http: aiohttp.ClientSession) -> None:
    """Bad requests answer 400 with Binance's codes and messages (-1121, -1120, -1100, -1102, -1130)."""
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"symbol": "NOPEUSDT", "interval": "1m"}, -1121, "Invalid symbol."),
        ({"symbol": "BTCUSDT", "interval": "7m"}, -1120, "Invalid interval."),
        (
            {"symbol": "BTCUSDT", "interval": "1m", "startTime": "abc"},
            -1100,
            "Illegal characters found in parameter 'startTime'; legal range is '^[0-9]{1,20}$'.",
        ),
        (
            {"symbol": "btcusdt", "interval": "1m"},
            -1100,
            "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'.",
        ),
        (
            {"interval": "1m"},
            -1102,
            "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
        ),
        (
            {"symbol": "BTCUSDT", "interval": "1m", "limit": 1001},
            -1130,
            "Data sent for parameter 'limit' is not valid.",
        ),
    ]
    for params, code, msg in cases:
        status, body, _ = await get(http, binance, "/api/v3/klines", **params)
        assert (status, body) == (400, {"code": code, "msg": msg}), params


async def test_weight_headers(binance: FakeBinance, http: aiohttp.ClientSession) -> None:
    """Used weight grows by 1 per ping, 2 per klines, 20 per exchangeInfo, and resets in the next minute."""
    binance.set_time(T0 + 5_000)
    _, _, h = await get(http, binance, "/api/v3/ping")
    assert h["X-MBX-USED-WEIGHT-1M"] == h["X-MBX-USED-WEIGHT"] == "1"
    _, _, h = await get(http, binance, "/api/v3/klines", symbol="BTCUSDT", interval="1m")
    assert h["X-MBX-USED-WEIGHT-1M"] == "3"
    _, info, h = await get(http, binance, "/api/v3/exchangeInfo")
    assert h["X-MBX-USED-WEIGHT-1M"] == "23"
    assert info["rateLimits"][0] == {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                     "limit": 6000}  # fmt: skip
    assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT"]
    assert info["serverTime"] == T0 + 5_000
    binance.advance(MIN)
    _, _, h = await get(http, binance, "/api/v3/klines", symbol="BTCUSDT", interval="1m")
    assert h["X-MBX-USED-WEIGHT-1M"] == "2"
    assert binance.weight_by_window == {T0: 23, T0 + MIN: 2}


async def test_429_after_limit(http: aiohttp.ClientSession) -> None:
    """Going over the minute's limit answers 429 -1003 with Retry-After to the next window, then recovers."""
    async with FakeBinance(weight_limit=5, now_ms=lambda: T0 + 45_000) as fake:
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        for _ in range(2):
            assert (await get(http, fake, "/api/v3/klines", symbol="BTCUSDT", interval="1m"))[0] == 200
        status, body, h = await get(http, fake, "/api/v3/klines", symbol="BTCUSDT", interval="1m")
        assert status == 429
        assert body["code"] == -1003
        assert "current limit is 5 request weight per 1 MINUTE" in body["msg"]
        assert (h["Retry-After"], h["X-MBX-USED-WEIGHT-1M"]) == ("15", "4")
        assert fake.status_counts == {200: 2, 429: 1}
        assert fake.windows[T0].count_429 == 1
        fake.set_time(T0 + MIN)
        assert (await get(http, fake, "/api/v3/klines", symbol="BTCUSDT", interval="1m"))[0] == 200


async def test_ban_418(http: aiohttp.ClientSession) -> None:
    """With ban_after_429s=1 the request after a 429 gets 418 until the ban ends; fake.ban() bans directly."""
    async with FakeBinance(weight_limit=1, ban_after_429s=1, ban_seconds=90, now_ms=lambda: T0) as fake:
        assert (await get(http, fake, "/api/v3/ping"))[0] == 200
        assert (await get(http, fake, "/api/v3/ping"))[0] == 429
        status, body, h = await get(http, fake, "/api/v3/time")
        until = T0 + 90_000
        assert (status, h["Retry-After"]) == (418, "90")
        assert body == {
            "code": -1003,
            "msg": f"Way too much request weight used; IP banned until {until}. "
            "Please use WebSocket Streams for live updates to avoid bans.",
        }
        fake.set_time(until)
        assert (await get(http, fake, "/api/v3/time"))[0] == 200
        fake.ban(30)
        assert (await get(http, fake, "/api/v3/ping"))[0] == 418


async def test_drop_fault(binance: FakeBinance, http: aiohttp.ClientSession) -> None:
    """A dropped connection surfaces as ClientConnectionError; aiohttp retries a GET once, so one drop is hidden."""
    q = {"symbol": "BTCUSDT", "interval": "1m"}
    binance.add_fault("drop", count=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(http, binance, "/api/v3/klines", **q)
    binance.add_fault("drop", count=1)
    assert (await get(http, binance, "/api/v3/klines", **q))[0] == 200
    assert [r.status for r in binance.requests] == [0, 0, 0, 200]
    assert binance.requests[0].fault == "drop"


async def test_bad_json_and_gateway_faults(binance: FakeBinance, http: aiohttp.ClientSession) -> None:
    """bad_json is a 200 that does not parse; a matched 502 is CloudFront HTML without weight headers."""
    binance.add_fault("bad_json")
    async with http.get(binance.url + "/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m"}) as resp:
        assert (resp.status, resp.headers["Content-Type"]) == (200, JSON_CONTENT_TYPE)
        with pytest.raises(ValueError, match="Unterminated"):
            json.loads(await resp.read())
    binance.add_fault("502", match={"symbol": "ETHUSDT"})
    assert (await get(http, binance, "/api/v3/klines", symbol="BTCUSDT", interval="1m"))[0] == 200
    async with http.get(binance.url + "/api/v3/klines", params={"symbol": "ETHUSDT", "interval": "1m"}) as resp:
        assert resp.status == 502
        assert b"502 Bad Gateway" in await resp.read()
        assert "X-MBX-USED-WEIGHT-1M" not in resp.headers


async def test_timeout_fault_and_concurrency(http: aiohttp.ClientSession) -> None:
    """A timeout fault hangs until the client gives up; latency overlaps requests and max_in_flight sees it."""
    async with FakeBinance(latency_ms=50, now_ms=lambda: T0) as fake:
        fake.add_fault("timeout", path="/api/v3/time")
        with pytest.raises(asyncio.TimeoutError):
            async with http.get(fake.url + "/api/v3/time", timeout=aiohttp.ClientTimeout(total=0.15)):
                pass
        results = await asyncio.gather(*(get(http, fake, "/api/v3/ping") for _ in range(5)))
        assert [r[0] for r in results] == [200] * 5
        assert fake.max_in_flight >= 5
        assert fake.in_flight == 0


async def test_open_candle_served_future_not(binance: FakeBinance, http: aiohttp.ClientSession) -> None:
    """The candle holding 'now' is served (and can change); candles opening after now are not."""
    binance.generate_klines("BTCUSDT", "1m", T0, 5)
    binance.set_time(T0 + 2 * MIN + 30_000)
    q = {"symbol": "BTCUSDT", "interval": "1m"}
    rows = (await get(http, binance, "/api/v3/klines", **q))[1]
    assert opens(rows) == [0, 1, 2]
    assert rows[-1][6] == T0 + 3 * MIN - 1 > binance.now_ms()
    binance.update_kline("BTCUSDT", "1m", T0 + 2 * MIN, close="123.45000000", trades=7)
    last = (await get(http, binance, "/api/v3/klines", **q, startTime=T0 + 2 * MIN))[1]
    assert (last[0][4], last[0][8]) == ("123.45000000", 7)
    ticker = (await get(http, binance, "/api/v3/ticker/price", symbol="BTCUSDT"))[1]
    assert ticker == {"symbol": "BTCUSDT", "price": "123.45000000"}


async def test_cli_process() -> None:
    """The CLI prints its URL first, serves generated candles and /__stats, and its CPU seconds on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.binance", "--port", "0", "--symbols", "2", "--timeframes", "1m,5m",
        "--candles", "3", "--weight-limit", "100",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/api/v3/klines", params={"symbol": "ETHUSDT", "interval": "5m"}) as resp:
                assert resp.status == 200
                assert len(await resp.json()) == 3
            async with http.get(url + "/__stats") as resp:
                stats = await resp.json()
        assert stats["requests"] == 1
        assert stats["status_counts"] == {"200": 1}
        assert list(stats["weight_by_minute"].values()) == [2]
    finally:
        proc.send_signal(signal.SIGTERM)
        out = await asyncio.wait_for(proc.stdout.read(), 10)
        await proc.wait()
    assert "fake_cpu_seconds" in json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 0


async def test_maintenance_gap_is_absent(binance: FakeBinance, http: aiohttp.ClientSession) -> None:
    """A gap [start, end) has no candles in any answer; the candles around it are served as before."""
    kept = binance.generate_klines_with_gaps("BTCUSDT", "1m", T0, 10, gaps=[(T0 + 3 * MIN, T0 + 6 * MIN)], seed=7)
    assert opens(kept) == [0, 1, 2, 6, 7, 8, 9]
    binance.set_time(T0 + 10 * MIN)
    q = {"symbol": "BTCUSDT", "interval": "1m"}
    assert (await get(http, binance, "/api/v3/klines", **q))[1] == kept
    inside = await get(http, binance, "/api/v3/klines", **q, startTime=T0 + 3 * MIN, endTime=T0 + 6 * MIN - 1)
    assert inside[1] == []
    # Asked from inside the gap, the exchange answers from the first candle after it.
    after = (await get(http, binance, "/api/v3/klines", **q, startTime=T0 + 4 * MIN, limit=2))[1]
    assert opens(after) == [6, 7]
    assert binance.remove_klines("BTCUSDT", "1m", T0 + 9 * MIN, T0 + 20 * MIN) == 1
    assert binance.remove_klines("BTCUSDT", "1m", T0 + 3 * MIN, T0 + 6 * MIN) == 0
    assert opens((await get(http, binance, "/api/v3/klines", **q))[1]) == [0, 1, 2, 6, 7, 8]


async def test_corrupted_rows_served_as_stored(binance: FakeBinance, http: aiohttp.ClientSession) -> None:
    """Invalid rows set with corrupt_kline/add_raw_kline are served verbatim and still decode as klines."""
    rows = binance.generate_klines("BTCUSDT", "1m", T0, 5)
    binance.set_time(T0 + 10 * MIN)
    binance.corrupt_kline("BTCUSDT", "1m", T0, low="99999999")
    binance.corrupt_kline("BTCUSDT", "1m", T0 + MIN, volume="-1", open="abc")
    binance.corrupt_kline("BTCUSDT", "1m", T0 + 2 * MIN, close_time=T0 + 2 * MIN)
    unaligned = [T0 + 3 * MIN + 30_000, *rows[3][1:6], T0 + 4 * MIN + 29_999, *rows[3][7:]]
    binance.add_raw_kline("BTCUSDT", "1m", unaligned)
    with pytest.raises(ValueError, match="not JSON compliant"):
        binance.corrupt_kline("BTCUSDT", "1m", T0, high=float("nan"))  # not JSON: the client could not decode it

    async with http.get(binance.url + "/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m"}) as resp:
        body = await resp.read()
    served = json.loads(body)
    assert [r[0] for r in served] == [T0, T0 + MIN, T0 + 2 * MIN, T0 + 3 * MIN, unaligned[0], T0 + 4 * MIN]
    assert served[0] == [*rows[0][:3], "99999999", *rows[0][4:]]
    assert (served[1][1], served[1][5]) == ("abc", "-1")
    assert served[2][6] == T0 + 2 * MIN
    assert served[4] == unaligned
    assert all(len(r) == 12 for r in served)
    klines = msgspec.json.decode(body, type=list[Kline])
    assert (klines[0].low, klines[1].open, klines[1].volume) == ("99999999", "abc", "-1")


async def test_symbol_status_change_in_exchange_info(binance: FakeBinance, http: aiohttp.ClientSession) -> None:
    """A symbol listed again with another status (BREAK, then TRADING) shows it in exchangeInfo at once."""

    async def statuses() -> dict[str, str]:
        info = (await get(http, binance, "/api/v3/exchangeInfo"))[1]
        return {s["symbol"]: s["status"] for s in info["symbols"]}

    assert await statuses() == {"BTCUSDT": "TRADING", "ETHUSDT": "TRADING"}
    binance.add_symbol("ETHUSDT", "ETH", "USDT", status="BREAK")
    assert await statuses() == {"BTCUSDT": "TRADING", "ETHUSDT": "BREAK"}
    binance.add_symbol("ETHUSDT", "ETH", "USDT")
    assert await statuses() == {"BTCUSDT": "TRADING", "ETHUSDT": "TRADING"}


async def test_usdm_answers_under_fapi_with_its_own_rules(binance: FakeBinance, http: aiohttp.ClientSession) -> None:
    """/fapi/v1: limit 500 by default and at most 1500 (-1130 above), weight by limit on USD-M's own
    minute (only X-MBX-USED-WEIGHT-1M), no 1s, contracts in exchangeInfo, a non-zero 12th field."""
    binance.add_symbol("BTCUSDT", "BTC", "USDT", product="usdm")
    binance.add_symbol("BTCUSDT_261225", "BTC", "USDT", product="usdm")
    binance.generate_klines("BTCUSDT", "1m", T0 - 1999 * MIN, 2000, product="usdm")
    q = {"symbol": "BTCUSDT", "interval": "1m"}

    status, rows, headers = await get(http, binance, "/fapi/v1/klines", **q)
    assert (status, len(rows), headers["X-MBX-USED-WEIGHT-1M"]) == (200, 500, "5")
    assert "X-MBX-USED-WEIGHT" not in headers
    assert all(r[11] != "0" for r in rows)
    status, rows, headers = await get(http, binance, "/fapi/v1/klines", **q, limit=1500)
    assert (status, len(rows), headers["X-MBX-USED-WEIGHT-1M"]) == (200, 1500, "15")
    status, body, _ = await get(http, binance, "/fapi/v1/klines", **q, limit=1501)
    assert (status, body) == (400, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."})
    status, body, _ = await get(http, binance, "/fapi/v1/klines", symbol="BTCUSDT", interval="1s")
    assert (status, body["code"]) == (400, -1120)
    assert (await get(http, binance, "/api/v3/klines", **q))[1] == []  # spot holds no such candles
    # 5 + 10, and the refused ones weigh too: 10 (limit 1501) + 5 (the default 500)
    assert (binance.used_weight(product="usdm"), binance.used_weight()) == (30, 2)

    status, info, _ = await get(http, binance, "/fapi/v1/exchangeInfo")
    assert [(s["symbol"], s["contractType"], s["marginAsset"]) for s in info["symbols"]] == [
        ("BTCUSDT", "PERPETUAL", "USDT"), ("BTCUSDT_261225", "CURRENT_QUARTER", "USDT"),
    ]  # fmt: skip
    assert info["rateLimits"][0] == {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                     "limit": 2400}  # fmt: skip
    status, price, _ = await get(http, binance, "/fapi/v1/ticker/price", symbol="BTCUSDT")
    latest = binance.get_klines("BTCUSDT", "1m", product="usdm")[-1]
    assert (status, price["price"], price["time"]) == (200, latest[4], T0)

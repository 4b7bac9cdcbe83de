"""The OKX client against the strict fake OKX: paging both candle endpoints, the open candle, exact
decimals, listing starts, symbols, bar codes, the per-endpoint rate limits and refusals."""

from __future__ import annotations

import asyncio
import calendar
import json
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from service.cpu_turns import CpuTurns
from service.exchanges.base import InvalidRequestError
from service.exchanges.okx import OkxClient
from service.exchanges.venues import VENUES, VenueSpec
from service.records import KlinePage, SymbolInfo, TickerPrice
from service.settings import VenueSettings
from tests.fakes.okx import CANDLES, HISTORY_CANDLES, INSTRUMENTS, FakeOkx, bar_open, bar_shift

MIN = 60_000
DAY = 86_400_000
T0 = calendar.timegm((2025, 6, 16, 0, 0, 0)) * 1000  # a Monday, 00:00 UTC
SWAP = VenueSpec(
    id="okx_swap", market="OKX v5 perpetual swaps", family="okx", product="SWAP", default_url="https://www.okx.com",
    perpetual=True,
)  # fmt: skip


class VirtualClock:
    """Time for the client and the fake alike, moved only by the test and by the client's sleeps.

    A sleep first lets every request the client has sent reach the fake (counted through the
    session's trace), so the fake's sliding windows see each request at the instant the client's
    limiter counted it, as they would with a real clock and a fast network.
    """

    def __init__(self, start_ms: int) -> None:
        self.now = start_ms / 1000
        self.sent = 0
        self.answered = 0
        self.slept = 0.0

    def time(self) -> float:
        return self.now

    def ms(self) -> int:
        return round(self.now * 1000)

    def set_ms(self, ms: int) -> None:
        self.now = ms / 1000

    async def sleep(self, seconds: float) -> None:
        while self.answered < self.sent:
            await asyncio.sleep(0.001)
        self.now += max(seconds, 0.0)
        self.slept += max(seconds, 0.0)
        await asyncio.sleep(0)

    def trace(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()

        async def started(*_: Any) -> None:
            self.sent += 1

        async def answered(*_: Any) -> None:
            self.answered += 1

        config.on_request_start.append(started)
        config.on_request_end.append(answered)
        config.on_request_exception.append(answered)
        return config


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(T0)


@pytest.fixture
async def okx(clock: VirtualClock) -> AsyncIterator[FakeOkx]:
    async with FakeOkx(now_ms=clock.ms, limit_now_ms=clock.ms) as fake:
        fake.add_symbol("BTC-USDT")
        yield fake


@pytest.fixture
async def session(clock: VirtualClock) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trace_configs=[clock.trace()]) as http:
        yield http


def make_client(
    okx: FakeOkx, session: aiohttp.ClientSession, clock: VirtualClock, spec: VenueSpec = VENUES["okx"], **settings: Any
) -> OkxClient:
    venue = VenueSettings(api_url=okx.url, timeout=2.0, retry_attempts=3, retry_wait=0.01, **settings)
    return OkxClient(spec, session, venue, cpu=CpuTurns(), clock=clock.time, sleep=clock.sleep)


@pytest.fixture
def client(okx: FakeOkx, session: aiohttp.ClientSession, clock: VirtualClock) -> OkxClient:
    return make_client(okx, session, clock)


def candle_requests(okx: FakeOkx) -> list[Any]:
    return [r for r in okx.requests if r.path in (CANDLES, HISTORY_CANDLES)]


def as_rows(page: KlinePage) -> list[list[str]]:
    """The page's candles in the fake's row form: [ts, o, h, l, c, vol, volCcy (unknown), volCcyQuote]."""
    return [[str(k.open_time), k.open, k.high, k.low, k.close, k.volume, k.quote_volume or ""] for k in page.klines]


def spot_rows(rows: list[list[str]]) -> list[list[str]]:
    """Stored spot rows as the client maps them: vol is the base volume, volCcyQuote the quote volume."""
    return [[*row[:6], row[7]] for row in rows]


async def test_paging_across_the_cap_and_the_reach_returns_every_candle_once(
    client: OkxClient, okx: FakeOkx, clock: VirtualClock
) -> None:
    """2,000 1m candles in pages of 300: the older ones from history-candles, the latest 1,440 from
    candles; each candle once, oldest first, close_time = next open - 1 ms, no request over the cap."""
    first = T0 - 1999 * MIN
    rows = okx.generate_klines("BTC-USDT", "1m", first, 2000)
    clock.set_ms(T0 + 30_000)  # inside the last candle
    got, start = [], first
    while start <= T0:
        page = await client.fetch_klines("BTC-USDT", "1m", start_ms=start, end_ms=None, limit=300)
        assert page.klines, f"an empty page from {start}"
        got.extend(page.klines)
        start = page.klines[-1].open_time + MIN
    assert [k.open_time for k in got] == [first + i * MIN for i in range(2000)]
    assert all(k.close_time == k.open_time + MIN - 1 for k in got)
    assert as_rows(KlinePage(got, 0)) == spot_rows(rows)
    requests = candle_requests(okx)
    assert len(requests) == 7
    assert {r.path for r in requests[:2]} == {HISTORY_CANDLES}  # older than the latest 1,440 slots
    assert {r.path for r in requests[2:]} == {CANDLES}
    assert all(int(r.params["limit"]) <= 300 and r.params["bar"] == "1m" for r in requests)
    assert okx.codes() == ["0"] * 7


async def test_a_window_ends_at_end_ms_inclusive(client: OkxClient, okx: FakeOkx, clock: VirtualClock) -> None:
    """start_ms <= open_time <= end_ms, even when the limit would allow more."""
    okx.generate_klines("BTC-USDT", "1H", T0 - 100 * 60 * MIN, 100)
    start = T0 - 50 * 60 * MIN
    page = await client.fetch_klines("BTC-USDT", "1h", start_ms=start, end_ms=start + 4 * 60 * MIN, limit=300)
    assert [k.open_time for k in page.klines] == [start + i * 60 * MIN for i in range(5)]
    page = await client.fetch_klines("BTC-USDT", "1h", start_ms=start + 1, end_ms=None, limit=2)
    assert [k.open_time for k in page.klines] == [start + 60 * MIN, start + 120 * MIN]


async def test_the_open_candle_is_not_closed_and_becomes_final(
    client: OkxClient, okx: FakeOkx, clock: VirtualClock
) -> None:
    """confirm "0" keeps the newest candle open while its values change; once it has closed the same
    candle comes back final, with its last values."""
    okx.generate_klines("BTC-USDT", "1m", T0 - 2 * MIN, 3)
    clock.set_ms(T0 + 20_000)
    page = await client.fetch_klines("BTC-USDT", "1m", start_ms=T0 - 2 * MIN, end_ms=None, limit=300)
    assert len(page.klines) == 3
    assert page.closed == 2
    assert page.last_is_open()
    okx.update_kline("BTC-USDT", "1m", T0, c="101.5", h="102", vol="7.25", volCcyQuote="736.1")
    clock.set_ms(T0 + 40_000)
    page = await client.fetch_klines("BTC-USDT", "1m", start_ms=T0, end_ms=None, limit=300)
    assert (page.closed, page.klines[0].close) == (0, "101.5")
    clock.set_ms(T0 + MIN + 5_000)
    page = await client.fetch_klines("BTC-USDT", "1m", start_ms=T0, end_ms=None, limit=300)
    assert page.closed == 1
    assert page.closed_count() == 1
    final = page.klines[0]
    assert (final.close, final.high, final.volume, final.quote_volume) == ("101.5", "102", "7.25", "736.1")
    assert okx.requests[0].path == CANDLES


async def test_decimals_come_back_as_the_venues_exact_text(client: OkxClient, okx: FakeOkx) -> None:
    """Short, float-unfriendly and long-precision decimal strings are passed through untouched."""
    tricky = [
        str(T0 - MIN), "0.1", "0.30000000000000004", "0.00000001", "0.1", "123456789012345678901234.123456789012345678",
        "0.000000000000000000000001", "98765432109876543210.98765432109876543210",
    ]  # fmt: skip
    okx.set_klines("BTC-USDT", "1m", [tricky])
    page = await client.fetch_klines("BTC-USDT", "1m", start_ms=T0 - MIN, end_ms=None, limit=1)
    [k] = page.klines
    assert [k.open, k.high, k.low, k.close, k.volume, k.quote_volume] == [*tricky[1:6], tricky[7]]
    assert Decimal(k.high) == Decimal("0.30000000000000004") != Decimal(float(k.high))  # never through a float


@pytest.mark.parametrize(
    ("timeframe", "bar", "hk_bar"),
    [
        ("1m", "1m", None), ("3m", "3m", None), ("5m", "5m", None), ("15m", "15m", None), ("30m", "30m", None),
        ("1h", "1H", None), ("2h", "2H", None), ("4h", "4H", None), ("6h", "6Hutc", "6H"), ("12h", "12Hutc", "12H"),
        ("1d", "1Dutc", "1D"), ("1w", "1Wutc", "1W"), ("1M", "1Mutc", "1M"),
    ],
)  # fmt: skip
async def test_each_timeframe_asks_for_its_utc_bar(
    client: OkxClient, okx: FakeOkx, timeframe: str, bar: str, hk_bar: str | None
) -> None:
    """The bar sent is OKX's UTC-aligned code, never the Hong Kong one; the candles lie on the client's grid
    (weeks from Monday 00:00 UTC, months from the 1st) with close_time = next open - 1 ms."""
    last = bar_open(bar, T0)
    stored = okx.generate_klines("BTC-USDT", bar, bar_shift(bar, last, -9), 10, seed=1)
    if hk_bar is not None:  # what a Hong Kong code would get: other candles, 8 hours off
        okx.generate_klines("BTC-USDT", hk_bar, bar_shift(hk_bar, bar_open(hk_bar, T0), -9), 10, seed=2)
    start = int(stored[3][0])
    page = await client.fetch_klines("BTC-USDT", timeframe, start_ms=start, end_ms=None, limit=5)
    assert [r.params["bar"] for r in candle_requests(okx)] == [bar]
    assert as_rows(page) == spot_rows(stored[3:8])
    grid = client.grid(timeframe)
    for k, after in zip(page.klines, stored[4:9], strict=True):
        assert grid.is_open_time(k.open_time)
        assert k.close_time == int(after[0]) - 1
        opened = datetime.fromtimestamp(k.open_time / 1000, UTC)
        assert (opened.minute, opened.second) == (0, 0) or timeframe.endswith("m")
        if timeframe in ("6h", "12h", "1d"):
            assert opened.hour % int(timeframe[:-1] if timeframe != "1d" else 24) == 0
        if timeframe == "1w":
            assert (opened.weekday(), opened.hour) == (0, 0)
        if timeframe == "1M":
            assert (opened.day, opened.hour) == (1, 0)
    assert client.timeframes == ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d", "1w", "1M")


@pytest.mark.parametrize(
    ("listed_at", "most_requests"),
    [
        pytest.param(lambda first: first + 17, 1, id="listTime-right"),
        pytest.param(lambda first: None, 22, id="no-listTime"),
        pytest.param(lambda first: first + 10 * DAY, 22, id="listTime-after-the-first-candle"),
        pytest.param(lambda first: first - 3 * 365 * DAY, 22, id="listTime-long-before"),
    ],
)
async def test_listing_start(
    client: OkxClient, okx: FakeOkx, clock: VirtualClock, listed_at: Any, most_requests: int
) -> None:
    """The first candle's open time: one candle request when listTime is right, a short search otherwise."""
    first = T0 - 20 * DAY + 7 * MIN
    okx.generate_klines("BTC-USDT", "1m", first, 20 * 24 * 60 - 7)
    okx.add_symbol("BTC-USDT", list_time=listed_at(first))
    assert await client.fetch_listing_start("BTC-USDT", "1m") == first
    assert 1 <= len(candle_requests(okx)) <= most_requests
    assert "50011" not in okx.codes()
    assert [r.params for r in okx.requests if r.path == INSTRUMENTS] == [{"instType": "SPOT", "instId": "BTC-USDT"}]


async def test_listing_start_of_daily_candles_of_a_new_listing_and_of_none(
    client: OkxClient, okx: FakeOkx, clock: VirtualClock
) -> None:
    """A daily series found from fetch_symbols' listTime; an instrument listed minutes ago, whose only
    candle is still open (so not in history-candles), starts at that candle; one without candles has none."""
    okx.generate_klines("BTC-USDT", "1Dutc", T0 - 700 * DAY, 701)
    okx.add_symbol("BTC-USDT", list_time=T0 - 700 * DAY + 3_600_000)
    okx.generate_klines("FRESH-USDT", "1Dutc", T0, 1)
    okx.add_symbol("FRESH-USDT", list_time=T0 + 5 * MIN)
    okx.add_symbol("NEW-USDT", state="preopen")
    clock.set_ms(T0 + 9 * MIN)
    await client.fetch_symbols()
    assert await client.fetch_listing_start("BTC-USDT", "1d") == T0 - 700 * DAY
    assert await client.fetch_listing_start("FRESH-USDT", "1d") == T0
    assert await client.fetch_listing_start("NEW-USDT", "1d") is None
    assert [r.params for r in okx.requests if r.path == INSTRUMENTS] == [{"instType": "SPOT"}]


async def test_symbols_map_to_unified_assets_and_states(client: OkxClient, okx: FakeOkx) -> None:
    """Spot instruments keep OKX's id and state word; live trades, suspend and preopen pause, expired is
    delisted; the swaps are another market."""
    okx.add_symbol("ETH-USDT", state="suspend")
    okx.add_symbol("NEW-USDC", state="preopen")
    okx.add_symbol("OLD-BTC", state="expired")
    okx.add_symbol("BTC-USDT-SWAP")
    assert await client.fetch_symbols() == [
        SymbolInfo("BTC-USDT", "BTC", "USDT", "live", "trading"),
        SymbolInfo("ETH-USDT", "ETH", "USDT", "suspend", "paused"),
        SymbolInfo("NEW-USDC", "NEW", "USDC", "preopen", "paused"),
        SymbolInfo("OLD-BTC", "OLD", "BTC", "expired", "delisted"),
    ]


async def test_a_swap_row_is_the_same_client(okx: FakeOkx, session: aiohttp.ClientSession, clock: VirtualClock) -> None:
    """product SWAP: instType SWAP, assets from the instrument family, settle from settleCcy, and the base
    volume from volCcy (vol counts contracts)."""
    okx.add_symbol("BTC-USDT-SWAP", ct_val="0.01")
    okx.add_symbol("ETH-USD-SWAP", settle="ETH")
    swap = make_client(okx, session, clock, SWAP)
    assert await swap.fetch_symbols() == [
        SymbolInfo("BTC-USDT-SWAP", "BTC", "USDT", "live", "trading", settle_asset="USDT"),
        SymbolInfo("ETH-USD-SWAP", "ETH", "USD", "live", "trading", settle_asset="ETH"),
    ]
    [row] = okx.generate_klines("BTC-USDT-SWAP", "1H", T0 - 3_600_000, 1)
    page = await swap.fetch_klines("BTC-USDT-SWAP", "1h", start_ms=T0 - 3_600_000, end_ms=None, limit=300)
    [k] = page.klines
    assert (k.volume, k.quote_volume) == (row[6], row[7])
    assert Decimal(k.volume) == Decimal(row[5]) * Decimal("0.01")
    assert okx.requests[0].params == {"instType": "SWAP"}


async def test_prices(client: OkxClient, okx: FakeOkx, clock: VirtualClock) -> None:
    """Last prices of all spot instruments, or of one, as the venue's decimal text."""
    okx.set_klines("BTC-USDT", "1m", [[str(T0 - MIN), "1", "2", "0.5", "65003.4", "1", "1", "1"]])
    okx.set_klines("ETH-USDT", "1m", [[str(T0 - MIN), "1", "2", "0.5", "0.30000000000000004", "1", "1", "1"]])
    okx.add_symbol("NEW-USDT", state="preopen")  # never traded: no price
    assert await client.fetch_prices() == [
        TickerPrice("BTC-USDT", "65003.4"),
        TickerPrice("ETH-USDT", "0.30000000000000004"),
    ]
    assert await client.fetch_prices(["ETH-USDT"]) == [TickerPrice("ETH-USDT", "0.30000000000000004")]
    assert await client.fetch_prices(["ETH-USDT", "BTC-USDT"]) == [
        TickerPrice("BTC-USDT", "65003.4"), TickerPrice("ETH-USDT", "0.30000000000000004"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("start", "path", "limit"),
    [(T0 - 100 * MIN, CANDLES, 40), (T0 - 5000 * MIN, HISTORY_CANDLES, 20)],
    ids=["candles", "history-candles"],
)
async def test_the_limit_is_obeyed_at_full_speed(
    client: OkxClient, okx: FakeOkx, clock: VirtualClock, start: int, path: str, limit: int
) -> None:
    """Three windows' worth of requests at once: none refused by the strict fake, and done as fast as the
    endpoint's limit (less the 3 % margin) allows: three more 2 s windows after the first."""
    okx.generate_klines("BTC-USDT", "1m", T0 - 6000 * MIN, 6000)
    pages = await asyncio.gather(
        *(client.fetch_klines("BTC-USDT", "1m", start_ms=start, end_ms=None, limit=5) for _ in range(3 * limit))
    )
    assert all(len(p.klines) == 5 for p in pages)
    assert okx.codes(path) == ["0"] * 3 * limit
    assert 6.0 <= clock.slept < 6.1


async def test_a_limit_breach_is_waited_out(okx: FakeOkx, session: aiohttp.ClientSession, clock: VirtualClock) -> None:
    """50011 (HTTP 429) pauses the endpoint for its 2 s window and the request then succeeds; a limit set
    above OKX's meets the strict fake's refusals and still gets every page."""
    okx.generate_klines("BTC-USDT", "1m", T0 - 100 * MIN, 100)
    client = make_client(okx, session, clock)
    okx.add_fault("429")
    waits: list[tuple[str, float]] = []
    page = await client.fetch_klines(
        "BTC-USDT", "1m", start_ms=T0 - 10 * MIN, end_ms=None, limit=3, on_wait=lambda r, u: waits.append((r, u))
    )
    assert len(page.klines) == 3
    assert okx.codes() == ["50011", "0"]
    assert [r.status for r in okx.requests] == [429, 200]
    assert waits == [("rate_limited", T0 / 1000 + 2.0)]
    assert client.limiter_state().window_seconds == 2.0

    greedy = make_client(okx, session, clock, weight_limit=80)
    pages = await asyncio.gather(
        *(greedy.fetch_klines("BTC-USDT", "1m", start_ms=T0 - 10 * MIN, end_ms=None, limit=3) for _ in range(100))
    )
    assert all(len(p.klines) == 3 for p in pages)
    assert "50011" in okx.codes()[2:]


async def test_unknown_instrument_is_refused_naming_it(client: OkxClient, okx: FakeOkx) -> None:
    """51001 is final (one request, no retry) and the error names the instrument and OKX's code."""
    with pytest.raises(InvalidRequestError) as caught:
        await client.fetch_klines("NOPE-USDT", "1m", start_ms=T0 - MIN, end_ms=None, limit=10)
    assert caught.value.code == 51001
    assert "NOPE-USDT" in str(caught.value)
    assert "doesn't exist" in str(caught.value)
    assert len(okx.requests) == 1
    with pytest.raises(InvalidRequestError, match="NOPE-USDT"):
        await client.fetch_listing_start("NOPE-USDT", "1m")


@pytest.mark.parametrize(("kind", "count"), [("500", 1), ("503", 2), ("502", 1), ("drop", 2), ("bad_json", 1)])
async def test_server_faults_are_retried(client: OkxClient, okx: FakeOkx, kind: Any, count: int) -> None:
    """5xx, a dropped connection and a garbled body are retried until the page comes."""
    okx.generate_klines("BTC-USDT", "1m", T0 - 10 * MIN, 10)
    okx.add_fault(kind, count=count)
    page = await client.fetch_klines("BTC-USDT", "1m", start_ms=T0 - 10 * MIN, end_ms=None, limit=10)
    assert len(page.klines) == 10
    assert okx.requests[-1].status == 200


async def test_the_fake_answers_like_okx(okx: FakeOkx, session: aiohttp.ClientSession, clock: VirtualClock) -> None:
    """The tests above lean on the fake's strictness: newest first in OKX's envelope, limit clamped to 300,
    `candles` reaching the latest 1,440 slots, history-candles closed candles only, OKX's error answers."""
    okx.generate_klines("BTC-USDT", "1m", T0 - 1999 * MIN, 2000)
    clock.set_ms(T0 + 1)

    async def get(path: str, **params: str) -> tuple[int, Any]:
        async with session.get(okx.url + path, params=params) as resp:
            return resp.status, json.loads(await resp.read())

    status, body = await get(CANDLES, instId="BTC-USDT", bar="1m", limit="1000")
    assert (status, body["code"], body["msg"], len(body["data"])) == (200, "0", "", 300)
    assert [int(r[0]) for r in body["data"][:2]] == [T0, T0 - MIN]
    assert [r[8] for r in body["data"][:2]] == ["0", "1"]
    _, body = await get(CANDLES, instId="BTC-USDT", bar="1m", after=str(T0 - 1439 * MIN), limit="300")
    assert body["data"] == []  # beyond the latest 1,440
    _, body = await get(HISTORY_CANDLES, instId="BTC-USDT", bar="1m", before=str(T0 - 3 * MIN))
    assert [int(r[0]) for r in body["data"]] == [T0 - MIN, T0 - 2 * MIN]  # closed only, newer than `before`
    _, body = await get(HISTORY_CANDLES, instId="BTC-USDT", bar="1m", after=str(T0 - 1990 * MIN))
    assert [int(r[0]) for r in body["data"]] == [T0 - 1991 * MIN - i * MIN for i in range(9)]
    assert await get(CANDLES, instId="NOPE-USDT") == (
        200, {"code": "51001", "msg": "Instrument ID, Instrument ID code, or Spread ID doesn't exist.", "data": []},
    )  # fmt: skip
    assert (await get(CANDLES, instId="BTC-USDT", bar="1d"))[1]["code"] == "51000"
    assert (await get(CANDLES, bar="1m"))[0:2] == (
        400,
        {"code": "50014", "msg": "Parameter instId can not be empty.", "data": []},
    )
    for _ in range(40 - len(okx.codes(CANDLES))):
        assert (await get(CANDLES, instId="BTC-USDT"))[0] == 200
    assert await get(CANDLES, instId="BTC-USDT") == (429, {"msg": "Too Many Requests", "code": "50011"})
    assert (await get(HISTORY_CANDLES, instId="BTC-USDT"))[0] == 200  # counted apart
    clock.set_ms(T0 + 2001)
    assert (await get(CANDLES, instId="BTC-USDT"))[0] == 200


async def test_process_mode_serves_until_sigterm(session: aiohttp.ClientSession) -> None:
    """`python -m tests.fakes.okx` prints its URL first and serves candles ending now, older ones by history."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.okx", "--port", "0", "--symbols", "2", "--candles", "2000",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        client = OkxClient(VENUES["okx"], session, VenueSettings(api_url=url, retry_attempts=1), cpu=CpuTurns())
        symbols = await client.fetch_symbols()
        assert [s.symbol for s in symbols] == ["BTC-USDT", "ETH-USDT"]
        first = await client.fetch_listing_start("ETH-USDT", "1m")
        assert first is not None
        page = await client.fetch_klines("ETH-USDT", "1m", start_ms=first, end_ms=None, limit=300)
        assert [k.open_time for k in page.klines] == [first + i * MIN for i in range(300)]
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0

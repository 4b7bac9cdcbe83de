"""The Bybit client against the strict fake: pages, the open candle, exact decimals, the listing
search, symbols, interval codes, the 600-per-5-s limit and its ban, and refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from types import SimpleNamespace

import aiohttp
import pytest

from service.cpu_turns import CpuTurns
from service.exchanges.base import ExchangeClient, InvalidRequestError
from service.exchanges.bybit import BybitClient
from service.exchanges.venues import VENUES, VenueSpec
from service.records import KlinePage
from service.settings import VenueSettings
from tests.fakes.bybit import FakeBybit, interval_open

MINUTE = 60_000
DAY = 1440 * MINUTE
#: 2026-01-01 00:00:30 UTC: half a minute into an open 1m candle.
NOW_MS = 1_767_225_600_000 + 30_000
CURRENT = NOW_MS - 30_000
LINEAR = VenueSpec(
    id="bybit_linear", market="Bybit USDT perpetuals", family="bybit", product="linear",
    default_url="https://api.bybit.com", perpetual=True,
)  # fmt: skip


class FakeTime:
    """One clock for the client and the fake. Sleeping moves it at once, but only after every request
    already sent has been answered: the fake sees each request at the moment the client sent it."""

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms / 1000
        self.active = 0

    def time(self) -> float:
        return self.now

    def ms(self) -> int:
        return round(self.now * 1000)

    async def sleep(self, seconds: float) -> None:
        while self.active:
            await asyncio.sleep(0.0005)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)

    def trace(self) -> aiohttp.TraceConfig:
        async def started(*_: object) -> None:
            self.active += 1

        async def ended(*_: object) -> None:
            self.active -= 1

        config = aiohttp.TraceConfig()
        config.on_request_start.append(started)
        config.on_request_end.append(ended)
        config.on_request_exception.append(ended)
        return config


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime(NOW_MS)


@pytest.fixture
async def fake(clock: FakeTime) -> AsyncIterator[FakeBybit]:
    async with FakeBybit(now_ms=clock.ms) as venue:
        venue.add_symbol("BTCUSDT", "BTC", "USDT")
        yield venue


@pytest.fixture
async def session(clock: FakeTime) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trace_configs=[clock.trace()]) as http:
        yield http


def make_client(
    fake: FakeBybit, session: aiohttp.ClientSession, clock: FakeTime, spec: VenueSpec = VENUES["bybit"]
) -> BybitClient:
    settings = VenueSettings(api_url=fake.url, timeout=2.0, retry_attempts=3, retry_wait=0.01)
    return BybitClient(spec, session, settings, cpu=CpuTurns(), clock=clock.time, sleep=clock.sleep)


@pytest.fixture
def client(fake: FakeBybit, session: aiohttp.ClientSession, clock: FakeTime) -> BybitClient:
    return make_client(fake, session, clock)


async def test_it_is_an_exchange_client(client: BybitClient) -> None:
    """The factory hands it out as an ExchangeClient; its name is the venue row's id."""
    typed: ExchangeClient = client
    assert typed.name == "bybit"
    assert typed.max_page == 1000
    assert typed.klines_weight(typed.max_page) == 1
    assert typed.reach_start("1m", NOW_MS) is None


async def test_paging_across_the_cap_returns_every_candle_once_oldest_first(
    client: BybitClient, fake: FakeBybit
) -> None:
    """2,501 candles up to the open one come back in three pages, each the oldest 1000 of its window,
    every candle once, oldest first, with close_time = next open - 1; only the open one is not final."""
    current = NOW_MS - NOW_MS % MINUTE
    first = current - 2500 * MINUTE
    fake.generate_klines("BTCUSDT", "1m", first, 2501)
    seen: list[int] = []
    pages: list[KlinePage] = []
    start = first
    while True:
        page = await client.fetch_klines("BTCUSDT", "1m", start_ms=start, end_ms=None, limit=1000)
        if not page.klines:
            break
        pages.append(page)
        seen += [k.open_time for k in page.klines]
        assert all(k.close_time == k.open_time + MINUTE - 1 for k in page.klines)
        start = page.klines[-1].open_time + MINUTE
    assert seen == [first + i * MINUTE for i in range(2501)]
    assert [len(p.klines) for p in pages] == [1000, 1000, 501]
    # Each request asked for exactly 1000 slots from its start: Bybit answers a wider one with its newest rows.
    for record in fake.requests[:3]:
        assert record.params["limit"] == "1000"
        assert int(record.params["end"]) - int(record.params["start"]) + 1 == 1000 * MINUTE
    assert [p.closed for p in pages] == [1000, 1000, 500]
    assert pages[-1].klines[-1].open_time == current
    assert pages[-1].last_is_open()
    assert not pages[0].last_is_open()


async def test_a_window_ending_before_now_is_all_final_and_capped_by_end(client: BybitClient, fake: FakeBybit) -> None:
    """end_ms bounds the window (inclusive) and a page that does not reach now has no open candle."""
    current = NOW_MS - NOW_MS % MINUTE
    fake.generate_klines("BTCUSDT", "1m", current - 100 * MINUTE, 101)
    page = await client.fetch_klines(
        "BTCUSDT", "1m", start_ms=current - 100 * MINUTE + 1, end_ms=current - 50 * MINUTE, limit=1000
    )
    assert [k.open_time for k in page.klines] == [current - m * MINUTE for m in range(99, 49, -1)]
    assert page.closed == len(page.klines) == page.closed_count()


async def test_the_open_candle_becomes_final_later(client: BybitClient, fake: FakeBybit, clock: FakeTime) -> None:
    """The current candle comes back open with its running values; a minute later the same candle
    comes back final with the values it closed on."""
    current = NOW_MS - NOW_MS % MINUTE
    fake.generate_klines("BTCUSDT", "1m", current - 4 * MINUTE, 6)  # the last one is still in the future
    page = await client.fetch_klines("BTCUSDT", "1m", start_ms=current - 4 * MINUTE, end_ms=None, limit=1000)
    assert page.klines[-1].open_time == current
    assert page.closed == 4
    assert page.closed_count() == 4
    fake.update_kline("BTCUSDT", "1m", current, close="101.5", high="102", volume="7.25", turnover="736.5")
    clock.now += 60
    page = await client.fetch_klines("BTCUSDT", "1m", start_ms=current, end_ms=None, limit=1000)
    assert [k.open_time for k in page.klines] == [current, current + MINUTE]
    final = page.klines[0]
    assert (final.close, final.high, final.volume, final.quote_volume) == ("101.5", "102", "7.25", "736.5")
    assert page.closed == 1
    assert page.closed_count() == 1


async def test_decimals_come_back_as_the_exact_text(client: BybitClient, fake: FakeBybit) -> None:
    """Prices and volumes are Bybit's strings, untouched: what a Decimal of them prints, never a float's rounding;
    turnover is the quote volume; trades and taker volumes are not served (None)."""
    t = NOW_MS - NOW_MS % MINUTE - 10 * MINUTE
    long = "123456789012345678901234567.123456789012345678901"
    rows = [
        [str(t), "0.1", "0.30000000000000004", "0.00000001", "0.2", long, "1000000000000000000000"],
        [str(t + MINUTE), "17071.5", "17073", "17027", "17055.50", "268611", "15.74462667"],
    ]
    fake.set_klines("BTCUSDT", "1m", rows)
    page = await client.fetch_klines("BTCUSDT", "1m", start_ms=t, end_ms=t + MINUTE, limit=10)
    got = [[k.open, k.high, k.low, k.close, k.volume, k.quote_volume] for k in page.klines]
    assert got == [row[1:] for row in rows]
    first = page.klines[0]
    # The exact values, where a float would have made 0.30000000000000004 of 0.1 + 0.2 and cut the long one.
    assert Decimal(first.high) == Decimal(1) / 10 * 3 + Decimal("4e-17")
    assert Decimal(first.low) == Decimal("1e-8")
    assert Decimal(first.volume) == Decimal(long) != Decimal(float(long))
    for kline in page.klines:
        assert (kline.trades, kline.taker_buy_base_volume, kline.taker_buy_quote_volume) == (None, None, None)


@pytest.mark.parametrize(
    ("timeframe", "requests"), [("1m", 4), ("3m", 4), ("30m", 4), ("1h", 3), ("4h", 3), ("1d", 2), ("1w", 2), ("1M", 1)]
)
async def test_listing_start_is_found_with_few_requests(
    client: BybitClient, fake: FakeBybit, timeframe: str, requests: int
) -> None:
    """Bybit publishes no launch time: the first candle of any timeframe is found coarse to fine in at
    most four requests (the month of the first candle, its day, its hour, the timeframe)."""
    listed = 1_767_052_620_000  # 2025-12-29 23:57 UTC: the last minutes of a day, of a week's day, of a month's day
    fake.generate_klines("BTCUSDT", "1m", listed, (NOW_MS - listed) // MINUTE + 1)
    codes = {"1m": "1", "3m": "3", "30m": "30", "1h": "60", "4h": "240", "1d": "D", "1w": "W", "1M": "M"}
    assert await client.fetch_listing_start("BTCUSDT", timeframe) == interval_open(codes[timeframe], listed)
    assert len(fake.requests) == requests
    assert fake.requests[0].params["interval"] == "M"
    assert fake.requests[-1].params["interval"] == codes[timeframe]


async def test_a_series_without_candles_has_no_listing_start(client: BybitClient, fake: FakeBybit) -> None:
    """A listed symbol with no candle yet: None, after one request."""
    assert await client.fetch_listing_start("BTCUSDT", "1h") is None
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("timeframe", "code"),
    [
        ("1m", "1"), ("3m", "3"), ("5m", "5"), ("15m", "15"), ("30m", "30"), ("1h", "60"), ("2h", "120"),
        ("4h", "240"), ("6h", "360"), ("12h", "720"), ("1d", "D"), ("1w", "W"), ("1M", "M"),
    ],
)  # fmt: skip
async def test_each_timeframe_asks_its_interval_code_and_lands_on_its_grid(
    client: BybitClient, fake: FakeBybit, timeframe: str, code: str
) -> None:
    """Every unified timeframe maps to Bybit's code, and its candles carry the close time of the grid:
    months end on their last millisecond (February 2025 has 28 days)."""
    assert timeframe in client.timeframes
    fake.generate_klines("BTCUSDT", "1m", NOW_MS - 2 * DAY, 2 * 1440 + 1)
    fake.generate_klines("BTCUSDT", "1d", 1_735_689_600_000, 365)  # the days of 2025
    start = 1_738_368_000_000 if timeframe in ("1d", "1w", "1M") else NOW_MS - 2 * DAY  # 2025-02-01
    page = await client.fetch_klines("BTCUSDT", timeframe, start_ms=start, end_ms=None, limit=3)
    assert fake.requests[-1].params["interval"] == code
    assert fake.requests[-1].params["category"] == "spot"
    assert len(page.klines) == 3
    grid = client.grid(timeframe)
    for kline in page.klines:
        assert kline.open_time == interval_open(code, kline.open_time)
        assert kline.close_time == grid.next_open(kline.open_time) - 1
    if timeframe == "1M":
        assert page.klines[0].open_time == 1_738_368_000_000
        assert page.klines[0].close_time == 1_740_787_200_000 - 1  # 2025-03-01 minus 1 ms


async def test_symbols_are_mapped_with_unified_assets_and_state(client: BybitClient, fake: FakeBybit) -> None:
    """instruments-info's baseCoin/quoteCoin become the unified assets; Bybit lists only trading
    symbols, so one closed or not yet launched is absent (the service then counts it delisted)."""
    fake.add_symbol("ETHBTC", "ETH", "BTC")
    fake.add_symbol("OLDUSDT", "OLD", "USDT", status="Closed")
    fake.add_symbol("NEWUSDT", "NEW", "USDT", status="PreLaunch")
    symbols = {s.symbol: s for s in await client.fetch_symbols()}
    assert set(symbols) == {"BTCUSDT", "ETHBTC"}
    assert (symbols["ETHBTC"].base_asset, symbols["ETHBTC"].quote_asset) == ("ETH", "BTC")
    assert {(s.status, s.state, s.settle_asset) for s in symbols.values()} == {("Trading", "trading", None)}
    assert fake.requests[0].params == {"category": "spot"}


async def test_linear_perpetuals_are_a_row_of_the_same_class(
    fake: FakeBybit, session: aiohttp.ClientSession, clock: FakeTime
) -> None:
    """With product "linear" the same class pages the instrument list by cursor (500 a page), keeps
    perpetuals only with their settle coin, and asks klines and prices of the linear category."""
    for i in range(520):
        fake.add_symbol(f"C{i:03d}USDT", f"C{i:03d}", "USDT", category="linear", contract_type="LinearPerpetual")
    fake.add_symbol("BTC-27MAR26", "BTC", "USDC", category="linear", contract_type="LinearFutures", settle="USDC")
    linear = make_client(fake, session, clock, LINEAR)
    symbols = await linear.fetch_symbols()
    assert len(symbols) == 520
    assert symbols[0] == symbols[0].__class__("C000USDT", "C000", "USDT", "Trading", "trading", (), "USDT")
    assert [r.params.get("cursor") is not None for r in fake.requests] == [False, True]
    fake.generate_klines("C007USDT", "1h", CURRENT - 3 * 3_600_000, 3, category="linear")
    page = await linear.fetch_klines("C007USDT", "1h", start_ms=CURRENT - 3 * 3_600_000, end_ms=None, limit=10)
    assert len(page.klines) == 3
    assert fake.requests[-1].params["category"] == "linear"
    [price] = await linear.fetch_prices(["C007USDT"])
    assert price.price == page.klines[-1].close
    with pytest.raises(InvalidRequestError, match="BTCUSDT"):  # a spot symbol is no linear one
        await linear.fetch_klines("BTCUSDT", "1h", start_ms=NOW_MS - 3_600_000, end_ms=None, limit=10)


async def test_prices_are_last_prices_as_decimal_text(client: BybitClient, fake: FakeBybit) -> None:
    """tickers' lastPrice, for one symbol (asked alone) or for all."""
    fake.add_symbol("ETHUSDT", "ETH", "USDT")
    t = NOW_MS - NOW_MS % MINUTE
    fake.set_klines("BTCUSDT", "1m", [[str(t), "1", "1", "1", "87000.10", "1", "1"]])
    [one] = await client.fetch_prices(["BTCUSDT"])
    assert (one.symbol, one.price) == ("BTCUSDT", "87000.10")
    assert fake.requests[-1].params == {"category": "spot", "symbol": "BTCUSDT"}
    every = {p.symbol: p.price for p in await client.fetch_prices()}
    assert every == {"BTCUSDT": "87000.10", "ETHUSDT": "0"}
    assert {p.symbol for p in await client.fetch_prices(["ETHUSDT", "BTCUSDT"])} == {"ETHUSDT", "BTCUSDT"}


async def test_an_unknown_symbol_is_refused_naming_it(client: BybitClient, fake: FakeBybit) -> None:
    """retCode 10001 "Not supported symbols" is final: one request, an InvalidRequestError naming the symbol."""
    with pytest.raises(InvalidRequestError) as caught:
        await client.fetch_klines("NOPEUSDT", "1m", start_ms=NOW_MS - DAY, end_ms=None, limit=1000)
    assert caught.value.code == 10001
    assert "NOPEUSDT" in str(caught.value)
    assert "Not supported symbols" in str(caught.value)
    with pytest.raises(InvalidRequestError, match="NOPEUSDT"):
        await client.fetch_prices(["NOPEUSDT"])
    with pytest.raises(InvalidRequestError, match="NOPEUSDT"):
        await client.fetch_listing_start("NOPEUSDT", "1m")
    assert len(fake.requests) == 3


async def test_the_limit_is_obeyed_at_full_speed(client: BybitClient, fake: FakeBybit, clock: FakeTime) -> None:
    """Three windows' worth of requests at once: none is refused by the strict fake (600 in any 5 s,
    then a 403 and a ban), and they take the two extra windows the limit implies, no more."""
    fake.generate_klines("BTCUSDT", "1m", CURRENT - 10 * MINUTE, 5)
    budget = client.limiter_state().budget
    assert budget == 582  # 600 less the 3 % margin
    pages = await asyncio.gather(
        *(
            client.fetch_klines("BTCUSDT", "1m", start_ms=CURRENT - 10 * MINUTE, end_ms=None, limit=5)
            for _ in range(3 * budget)
        )
    )
    assert all(len(p.klines) == 5 for p in pages)
    assert fake.refused == 0
    assert fake.status_counts == {200: 3 * budget}
    assert fake.max_in_window == budget
    elapsed = clock.ms() - NOW_MS
    assert 10_000 <= elapsed < 10_100


async def test_a_ban_is_waited_out_and_the_request_succeeds(
    client: BybitClient, fake: FakeBybit, clock: FakeTime
) -> None:
    """HTTP 403 "access too frequent" is Bybit's ban: every request waits the ten minutes, then this one
    is sent again and answered."""
    fake.generate_klines("BTCUSDT", "1m", CURRENT - 10 * MINUTE, 5)
    fake.add_fault("403")
    waits: list[tuple[str, float]] = []
    page = await client.fetch_klines(
        "BTCUSDT", "1m", start_ms=CURRENT - 10 * MINUTE, end_ms=None, limit=5,
        on_wait=lambda reason, until: waits.append((reason, until)),
    )  # fmt: skip
    assert len(page.klines) == 5
    assert [r.status for r in fake.requests] == [403, 200]
    assert waits == [("banned", NOW_MS / 1000 + 600)]
    assert fake.requests[1].time_ms - fake.requests[0].time_ms >= 600_000
    assert client.limiter_state().paused_until is None


@pytest.mark.parametrize("code", ["10006", "10018"])
async def test_a_rate_limit_code_is_waited_out(client: BybitClient, fake: FakeBybit, code: str) -> None:
    """retCode 10006/10018 in an HTTP 200 is an order to slow down: a pause of one window, then success."""
    fake.generate_klines("BTCUSDT", "1m", CURRENT - 10 * MINUTE, 5)
    fake.add_fault(code)  # type: ignore[arg-type]
    page = await client.fetch_klines("BTCUSDT", "1m", start_ms=CURRENT - 10 * MINUTE, end_ms=None, limit=5)
    assert len(page.klines) == 5
    assert [r.status for r in fake.requests] == [200, 200]
    assert fake.requests[1].time_ms - fake.requests[0].time_ms >= 5_000


@pytest.mark.parametrize("kind", ["502", "500", "bad_json", "10016"])
async def test_server_failures_are_retried(client: BybitClient, fake: FakeBybit, kind: str) -> None:
    """A 5xx, a garbled body or Bybit's "Internal System Error" is tried again and then answered."""
    fake.generate_klines("BTCUSDT", "1m", CURRENT - 10 * MINUTE, 5)
    fake.add_fault(kind)  # type: ignore[arg-type]
    page = await client.fetch_klines("BTCUSDT", "1m", start_ms=CURRENT - 10 * MINUTE, end_ms=None, limit=5)
    assert len(page.klines) == 5
    assert len(fake.requests) == 2


async def test_the_fake_bans_the_request_beyond_600_in_5_seconds(fake: FakeBybit, clock: FakeTime) -> None:
    """The strictness the limit test relies on: the 601st request within 5 s is a 403, the ban holds
    for ten minutes (even with the window empty again), and lifts after."""
    async with aiohttp.ClientSession() as http:

        async def status() -> int:
            async with http.get(fake.url + "/v5/market/time") as resp:
                return resp.status

        assert [await status() for _ in range(300)] == [200] * 300
        clock.now += 4.9
        assert [await status() for _ in range(300)] == [200] * 300
        assert await status() == 403
        clock.now += 9 * 60
        assert await status() == 403
        clock.now += 60
        assert await status() == 200
    assert fake.refused == 2


def test_settings_override_the_limit_and_margin() -> None:
    """BYBIT_WEIGHT_LIMIT and BYBIT_WEIGHT_MARGIN size the limiter; its window is Bybit's 5 s."""
    settings = VenueSettings(api_url="http://127.0.0.1:1", weight_limit=100, weight_margin=0.1)
    client = BybitClient(VENUES["bybit"], SimpleNamespace(), settings, cpu=CpuTurns())  # type: ignore[arg-type]
    state = client.limiter_state()
    assert (state.limit, state.budget, state.window_seconds) == (100, 90, 5.0)

"""The Coinbase Exchange client against the strict fake: paging under the 300-candle cap, exact JSON
numbers, the open candle, the listing search, products, prices, the 10-per-second limit and errors."""

from __future__ import annotations

import asyncio
import calendar
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.cpu_turns import CpuTurns
from service.exchanges.base import CLOCK_SKEW_ALLOWANCE_MS, ExchangeClient, InvalidRequestError
from service.exchanges.coinbase import CoinbaseClient
from service.exchanges.venues import VENUES
from service.settings import VenueSettings
from tests.fakes.coinbase import FakeCoinbase

ROOT = Path(__file__).resolve().parents[2]
MINUTE = 60_000
DAY = 86_400_000


def _ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, minute, second)) * 1000


class VirtualClock:
    """Time that passes only when the client's limiter sleeps; the fake reads the same clock.

    Before time jumps, every request already let through has reached the fake (`arrived`), as it
    would within a millisecond of real time: a request is stamped by the fake at the instant it was sent.
    """

    def __init__(self, start_ms: int, arrived: Callable[[], bool] | None = None) -> None:
        self.now = start_ms / 1000
        self.arrived = arrived

    def time(self) -> float:
        return self.now

    def ms(self) -> int:
        return round(self.now * 1000)

    def set_ms(self, ms: int) -> None:
        self.now = ms / 1000

    async def sleep(self, seconds: float) -> None:
        for _ in range(5):  # requests let through before this sleep start sending
            await asyncio.sleep(0)
        deadline = time.monotonic() + 2.0
        while self.arrived is not None and not self.arrived() and time.monotonic() < deadline:
            await asyncio.sleep(0.0005)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


class Sent:
    """Counts the requests a session starts (aiohttp tracing)."""

    def __init__(self) -> None:
        self.count = 0
        self.config = aiohttp.TraceConfig()
        self.config.on_request_start.append(self._started)

    async def _started(
        self, session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestStartParams
    ) -> None:
        self.count += 1


class Observer:
    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []
        self.pauses: list[tuple[str, str, float]] = []

    def request_done(self, exchange: str, endpoint: str, status: str) -> None:
        self.done.append((endpoint, status))

    def paused(self, exchange: str, status: str, seconds: float) -> None:
        self.pauses.append((exchange, status, seconds))


@pytest.fixture
async def exchange() -> AsyncIterator[FakeCoinbase]:
    async with FakeCoinbase() as fake:
        yield fake


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
async def session(sent: Sent) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trace_configs=[sent.config]) as http:
        yield http


def make_client(
    fake: FakeCoinbase,
    session: aiohttp.ClientSession,
    clock: VirtualClock | None = None,
    *,
    observer: Observer | None = None,
    **settings: Any,
) -> CoinbaseClient:
    """A client of `fake`; with `clock`, client and fake share that virtual time."""
    venue = VenueSettings(api_url=fake.url, timeout=2.0, retry_attempts=3, retry_wait=0.01, **settings)
    if clock is None:
        return CoinbaseClient(VENUES["coinbase"], session, venue, cpu=CpuTurns(), observer=observer)
    fake.now_ms = clock.ms
    return CoinbaseClient(
        VENUES["coinbase"], session, venue, cpu=CpuTurns(), observer=observer, clock=clock.time, sleep=clock.sleep
    )


def _iso_seconds(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


async def test_paging_across_the_cap_returns_every_candle_once_oldest_first(
    exchange: FakeCoinbase, session: aiohttp.ClientSession
) -> None:
    """1000 minutes with no-trade buckets, read in 300-slot windows: every stored candle once, in order,
    in Kline's field order (Coinbase sends low and high first), close_time = next open - 1 ms; each
    request a start/end pair of exactly 300 slots inclusive, in ISO 8601."""
    now = _ms(2025, 6, 1, 12, 0, 30)
    clock = VirtualClock(now)
    client = make_client(exchange, session, clock)
    first = now - now % MINUTE - 999 * MINUTE
    stored = exchange.generate_klines("BTC-USD", "1m", first, 1000, seed=7, missing=0.1)
    assert 850 < len(stored) < 950

    got = []
    start = first
    while start <= now:
        page = await client.fetch_klines("BTC-USD", "1m", start_ms=start, end_ms=None, limit=300)
        assert len(page.klines) <= 300
        assert all(start <= k.open_time < start + 300 * MINUTE for k in page.klines)
        got += page.klines
        start += 300 * MINUTE

    assert [k.open_time for k in got] == [row[0] * 1000 for row in stored]
    assert all(k.close_time == k.open_time + MINUTE - 1 for k in got)
    assert [(k.low, k.high, k.open, k.close, k.volume) for k in got] == [tuple(row[1:]) for row in stored]
    assert all(k.quote_volume is None and k.trades is None and k.taker_buy_base_volume is None for k in got)
    assert len(exchange.requests) == 4
    for record in exchange.requests:
        assert record.path == "/products/BTC-USD/candles"
        assert record.params["granularity"] == "60"
        assert _iso_seconds(record.params["end"]) - _iso_seconds(record.params["start"]) == 299 * 60
        assert record.status == 200

    # end_ms bounds the window; an end before start asks nothing.
    bounded = await client.fetch_klines("BTC-USD", "1m", start_ms=first, end_ms=first + 10 * MINUTE, limit=300)
    assert [k.open_time for k in bounded.klines] == [r[0] * 1000 for r in stored if r[0] * 1000 <= first + 10 * MINUTE]
    empty = await client.fetch_klines("BTC-USD", "1m", start_ms=first, end_ms=first - 1, limit=300)
    assert empty.klines == []
    assert len(exchange.requests) == 5


async def test_an_unaligned_start_keeps_only_candles_from_it(
    exchange: FakeCoinbase, session: aiohttp.ClientSession
) -> None:
    """Coinbase may answer buckets before the start asked for; none of them comes back, and the limit holds."""
    now = _ms(2025, 6, 1, 12, 0, 30)
    client = make_client(exchange, session, VirtualClock(now))
    first = now - now % MINUTE - 99 * MINUTE
    exchange.generate_klines("BTC-USD", "1m", first, 100)
    page = await client.fetch_klines("BTC-USD", "1m", start_ms=first + 30_001, end_ms=None, limit=5)
    assert [k.open_time for k in page.klines] == [first + i * MINUTE for i in range(1, 6)]


@pytest.mark.parametrize(
    ("timeframe", "granularity"),
    [("1m", 60), ("5m", 300), ("15m", 900), ("1h", 3600), ("6h", 21600), ("1d", 86400)],
)
async def test_each_timeframe_asks_its_granularity(
    exchange: FakeCoinbase, session: aiohttp.ClientSession, timeframe: str, granularity: int
) -> None:
    """Every unified timeframe maps to its granularity in seconds, on the epoch grid, with its close_time."""
    now = _ms(2025, 6, 1, 12, 0, 30)
    client = make_client(exchange, session, VirtualClock(now))
    step = granularity * 1000
    first = now - now % step - 9 * step
    exchange.generate_klines("ETH-USD", timeframe, first, 10)
    page = await client.fetch_klines("ETH-USD", timeframe, start_ms=first, end_ms=None, limit=300)
    assert exchange.requests[-1].params["granularity"] == str(granularity)
    assert [k.open_time for k in page.klines] == [first + i * step for i in range(10)]
    assert all(k.close_time == k.open_time + step - 1 for k in page.klines)
    assert client.grid(timeframe).is_open_time(first)


async def test_timeframes_coinbase_lacks_are_refused_without_a_request(
    exchange: FakeCoinbase, session: aiohttp.ClientSession
) -> None:
    """3m (and any other) is not one of the six: refused locally, naming the ones there are."""
    client: ExchangeClient = make_client(exchange, session)  # mypy checks the protocol is met
    assert client.name == "coinbase"
    assert client.timeframes == ("1m", "5m", "15m", "1h", "6h", "1d")
    assert (client.max_page, client.klines_weight(300), client.reach_start("1m", 0)) == (300, 1, None)
    with pytest.raises(InvalidRequestError, match="no 3m candles; it serves 1m, 5m"):
        await client.fetch_klines("BTC-USD", "3m", start_ms=0, end_ms=None, limit=300)
    assert exchange.requests == []


async def test_the_open_candle_is_not_closed_until_it_ends_then_has_its_final_values(
    exchange: FakeCoinbase, session: aiohttp.ClientSession
) -> None:
    """The current bucket comes back open (and changing); after its end (plus the clock-skew allowance)
    it is closed with its final values."""
    current = _ms(2025, 6, 1, 12, 0)
    clock = VirtualClock(current + 20_000)
    client = make_client(exchange, session, clock)
    exchange.generate_klines("BTC-USD", "1m", current - 4 * MINUTE, 5, start_price=100.0)

    page = await client.fetch_klines("BTC-USD", "1m", start_ms=current - 4 * MINUTE, end_ms=None, limit=300)
    assert page.klines[-1].open_time == current
    assert page.last_is_open()
    assert page.closed is None and page.closed_count() == 4

    exchange.update_kline("BTC-USD", "1m", current, high="250", close="101.5", volume="7.25")
    clock.set_ms(current + MINUTE + CLOCK_SKEW_ALLOWANCE_MS // 2)  # ended, but within the skew allowance
    page = await client.fetch_klines("BTC-USD", "1m", start_ms=current, end_ms=None, limit=1)
    assert page.last_is_open()

    clock.set_ms(current + MINUTE + CLOCK_SKEW_ALLOWANCE_MS + 1)
    page = await client.fetch_klines("BTC-USD", "1m", start_ms=current, end_ms=None, limit=1)
    [final] = page.klines
    assert page.closed_count() == 1
    assert (final.high, final.close, final.volume) == ("250", "101.5", "7.25")


async def test_json_numbers_come_back_as_their_exact_decimal_text(
    exchange: FakeCoinbase, session: aiohttp.ClientSession
) -> None:
    """Numbers are read from their JSON text, never through a float, and written as plain positional
    decimals (exponents spelled out; digits, trailing zeros included, as sent); beyond the ingest's
    100 characters, Decimal's scientific form."""
    clock = VirtualClock(_ms(2025, 6, 1, 12, 0, 30))
    client = make_client(exchange, session, clock)
    t0 = _ms(2025, 6, 1, 11, 0) // 1000
    pi = "3.14159265358979323846264338327950288419716939937510"
    exchange.set_klines(
        "BTC-USD", "1m",
        [
            # time, low, high, open, close, volume
            [t0, "0.1", "123456789.123456789", "0.30000000000000004", "1e-8", "15400"],
            [t0 + 60, "1E+3", "2.50", "1.5e-7", pi, "1e-200"],
            [t0 + 120, "0", "0.1000000000000000055511151231257827021181583404541015625", "-0.0", "1.0", "12e2"],
        ],
    )  # fmt: skip
    page = await client.fetch_klines("BTC-USD", "1m", start_ms=t0 * 1000, end_ms=None, limit=3)
    got = [(k.open, k.high, k.low, k.close, k.volume) for k in page.klines]
    assert got == [
        ("0.30000000000000004", "123456789.123456789", "0.1", "0.00000001", "15400"),
        ("0.00000015", "2.50", "1000", pi, "1E-200"),
        ("-0.0", "0.1000000000000000055511151231257827021181583404541015625", "0", "1.0", "1200"),
    ]
    sent = exchange.get_klines("BTC-USD", "1m")
    for k, row in zip(page.klines, sent, strict=True):
        assert [Decimal(k.low), Decimal(k.high), Decimal(k.open), Decimal(k.close), Decimal(k.volume)] == [
            Decimal(v) for v in row[1:]
        ]

    exchange.add_symbol("DOGE-USD", price="0.000000012345678901234567")
    [price] = await client.fetch_prices(["DOGE-USD"])
    assert price.price == "0.000000012345678901234567"


async def test_listing_start_is_found_with_few_requests_across_long_silences(
    exchange: FakeCoinbase, session: aiohttp.ClientSession
) -> None:
    """An illiquid product: two trades in March 2021, then over 300 days without one, then trading.
    The search finds the first trade's candle in every timeframe; the first timeframe costs a forward
    scan of 300-day windows plus two refinements, the next ones a single request or none."""
    now = _ms(2026, 1, 15, 8, 0)
    clock = VirtualClock(now)
    client = make_client(exchange, session, clock)
    first_trade = _ms(2021, 3, 10, 10, 7)
    exchange.set_klines(
        "ILQ-USD", "1m",
        [[first_trade // 1000, "1", "2", "1", "2", "5"], [first_trade // 1000 + 180, "2", "2", "2", "2", "1"]],
    )  # fmt: skip
    exchange.generate_klines("ILQ-USD", "1m", first_trade + 420 * DAY, 200)

    assert await client.fetch_listing_start("ILQ-USD", "1m") == first_trade
    days_scanned = (_ms(2021, 3, 10) - _ms(2014, 1, 1)) // (300 * DAY) + 1
    assert len(exchange.requests) == days_scanned + 2  # 1d windows, then 1d -> 5m -> 1m
    assert all(r.status == 200 for r in exchange.requests)

    exchange.reset_stats()
    assert await client.fetch_listing_start("ILQ-USD", "5m") == _ms(2021, 3, 10, 10, 5)
    assert len(exchange.requests) == 1
    assert await client.fetch_listing_start("ILQ-USD", "15m") == _ms(2021, 3, 10, 10, 0)
    assert await client.fetch_listing_start("ILQ-USD", "1h") == _ms(2021, 3, 10, 10, 0)
    assert await client.fetch_listing_start("ILQ-USD", "6h") == _ms(2021, 3, 10, 6, 0)
    exchange.reset_stats()
    assert await client.fetch_listing_start("ILQ-USD", "1d") == _ms(2021, 3, 10)
    assert exchange.requests == []


async def test_listing_start_of_a_product_without_candles_and_of_incomplete_history(
    exchange: FakeCoinbase, session: aiohttp.ClientSession
) -> None:
    """No candle at all: None. A daily candle without the finer ones inside it: its open, a lower bound.
    An unknown product: refused, naming it."""
    client = make_client(exchange, session, VirtualClock(_ms(2026, 1, 15, 8, 0)))
    exchange.add_symbol("NEW-USD")
    assert await client.fetch_listing_start("NEW-USD", "1h") is None

    day = _ms(2024, 2, 29)
    exchange.set_klines("GAP-USD", "1d", [[day // 1000, "1", "1", "1", "1", "1"]])
    assert await client.fetch_listing_start("GAP-USD", "1m") == day

    with pytest.raises(InvalidRequestError, match=r"/products/NOPE-USD/candles: NotFound"):
        await client.fetch_listing_start("NOPE-USD", "1m")


async def test_products_map_to_symbols_with_their_state(exchange: FakeCoinbase, session: aiohttp.ClientSession) -> None:
    """Base and quote as Coinbase names them (already the unified names); online trades unless
    trading is disabled or cancel-only; delisted is delisted; offline and the rest are paused."""
    exchange.add_symbol("BTC-USD")
    exchange.add_symbol("ETH-EUR", trading_disabled=True)
    exchange.add_symbol("SOL-USDC", cancel_only=True)
    exchange.add_symbol("AUC-USD", post_only=True, limit_only=True, auction_mode=True)
    exchange.add_symbol("OLD-USD", status="delisted", trading_disabled=True)
    exchange.add_symbol("OFF-USD", status="offline")
    exchange.add_symbol("USDT-USD", status="internal")
    client = make_client(exchange, session)
    symbols = {s.symbol: s for s in await client.fetch_symbols()}
    assert {(s.symbol, s.base_asset, s.quote_asset, s.status, s.state) for s in symbols.values()} == {
        ("BTC-USD", "BTC", "USD", "online", "trading"),
        ("ETH-EUR", "ETH", "EUR", "online, trading_disabled", "paused"),
        ("SOL-USDC", "SOL", "USDC", "online, cancel_only", "paused"),
        ("AUC-USD", "AUC", "USD", "online", "trading"),
        ("OLD-USD", "OLD", "USD", "delisted, trading_disabled", "delisted"),
        ("OFF-USD", "OFF", "USD", "offline", "paused"),
        ("USDT-USD", "USDT", "USD", "internal", "paused"),
    }
    assert symbols["BTC-USD"].aliases == ("BTC/USD",)
    assert symbols["BTC-USD"].settle_asset is None
    assert [r.path for r in exchange.requests] == ["/products"]


async def test_prices_are_asked_per_named_product_only(exchange: FakeCoinbase, session: aiohttp.ClientSession) -> None:
    """One ticker request per product named, prices as sent; none named: no request, no prices."""
    exchange.add_symbol("BTC-USD", price="67012.34")
    exchange.add_symbol("ETH-USD", price="3456.7")
    client = make_client(exchange, session)
    prices = await client.fetch_prices(["BTC-USD", "ETH-USD"])
    assert [(p.symbol, p.price) for p in prices] == [("BTC-USD", "67012.34"), ("ETH-USD", "3456.7")]
    assert sorted(r.path for r in exchange.requests) == ["/products/BTC-USD/ticker", "/products/ETH-USD/ticker"]
    assert await client.fetch_prices() == []
    assert len(exchange.requests) == 2
    with pytest.raises(InvalidRequestError, match="NOPE-USD"):
        await client.fetch_prices(["BTC-USD", "NOPE-USD"])


async def test_the_limit_is_obeyed_at_full_speed(
    exchange: FakeCoinbase, session: aiohttp.ClientSession, sent: Sent
) -> None:
    """Three windows' worth of requests at once: none refused, never more than 10 in a sliding second,
    and it takes the three seconds 9 a second (10 less the margin) implies."""
    clock = VirtualClock(_ms(2025, 6, 1, 12, 0, 30), arrived=lambda: exchange.request_count >= sent.count)
    client = make_client(exchange, session, clock)
    start = _ms(2025, 6, 1, 11, 0)
    exchange.generate_klines("BTC-USD", "1m", start, 30)
    began = clock.time()
    pages = await asyncio.gather(
        *(client.fetch_klines("BTC-USD", "1m", start_ms=start + i * MINUTE, end_ms=None, limit=1) for i in range(30))
    )
    elapsed = clock.time() - began
    assert [p.klines[0].open_time for p in pages] == [start + i * MINUTE for i in range(30)]
    assert exchange.count(429) == 0 and exchange.count(200) == 30
    assert exchange.max_in_window <= 10
    assert 3.0 <= elapsed < 3.1
    state = client.limiter_state()
    assert (state.limit, state.budget, state.window_seconds) == (10, 9, 1.0)


async def test_a_rate_limit_answer_is_waited_out_and_the_request_succeeds(
    exchange: FakeCoinbase, session: aiohttp.ClientSession
) -> None:
    """A 429 ("Public rate limit exceeded") pauses every request a second, then the same request goes
    again and succeeds; the pause is told to the caller and to the metrics."""
    clock = VirtualClock(_ms(2025, 6, 1, 12, 0, 30))
    observer = Observer()
    client = make_client(exchange, session, clock, observer=observer)
    start = _ms(2025, 6, 1, 11, 0)
    exchange.generate_klines("BTC-USD", "1m", start, 3)
    exchange.add_fault("429")
    waits: list[tuple[str, float]] = []
    began = clock.time()
    page = await client.fetch_klines(
        "BTC-USD",
        "1m",
        start_ms=start,
        end_ms=None,
        limit=3,
        on_wait=lambda reason, until: waits.append((reason, until)),
    )
    assert len(page.klines) == 3
    assert [r.status for r in exchange.requests] == [429, 200]
    assert clock.time() - began >= 1.0
    [(reason, until)] = waits
    assert reason == "rate_limited" and until == pytest.approx(began + 1.0)
    assert observer.pauses == [("coinbase", "429", 1.0)]
    assert ("/products/BTC-USD/candles", "429") in observer.done


async def test_an_over_eager_client_meets_the_real_limit_and_still_gets_every_answer(
    exchange: FakeCoinbase, session: aiohttp.ClientSession, sent: Sent
) -> None:
    """Configured above the venue's limit (COINBASE_WEIGHT_LIMIT=30), the client is refused by the fake's
    real sliding window; every refused request is waited out and sent again, and all succeed."""
    clock = VirtualClock(_ms(2025, 6, 1, 12, 0, 30), arrived=lambda: exchange.request_count >= sent.count)
    client = make_client(exchange, session, clock, weight_limit=30)
    start = _ms(2025, 6, 1, 11, 0)
    exchange.generate_klines("BTC-USD", "1m", start, 20)
    pages = await asyncio.gather(
        *(client.fetch_klines("BTC-USD", "1m", start_ms=start + i * MINUTE, end_ms=None, limit=1) for i in range(20))
    )
    assert all(len(p.klines) == 1 for p in pages)
    assert exchange.count(429) > 0
    assert exchange.count(200) == 20


async def test_an_unknown_product_is_refused_naming_it(exchange: FakeCoinbase, session: aiohttp.ClientSession) -> None:
    """404 NotFound is final: one request, the product in the message, the status kept."""
    client = make_client(exchange, session)
    with pytest.raises(InvalidRequestError) as caught:
        await client.fetch_klines("NOPE-USD", "1m", start_ms=_ms(2025, 1, 1), end_ms=None, limit=300)
    assert "NOPE-USD" in str(caught.value) and "NotFound" in str(caught.value)
    assert caught.value.status == 404
    assert len(exchange.requests) == 1


async def test_a_range_the_venue_refuses_is_final_with_its_message(session: aiohttp.ClientSession) -> None:
    """A venue whose cap were lower refuses the 300-slot window with 400 and its message: not retried."""
    async with FakeCoinbase(max_candles=100) as strict:
        strict.add_symbol("BTC-USD")
        client = make_client(strict, session)
        with pytest.raises(InvalidRequestError, match="Count of aggregations requested exceeds 300") as caught:
            await client.fetch_klines("BTC-USD", "5m", start_ms=_ms(2025, 1, 1), end_ms=None, limit=300)
        assert caught.value.status == 400
        assert len(strict.requests) == 1


@pytest.mark.parametrize("kind", ["500", "502", "503", "504", "bad_json", "drop"])
async def test_server_errors_and_garbled_answers_are_retried(
    exchange: FakeCoinbase, session: aiohttp.ClientSession, kind: Any
) -> None:
    """5xx (JSON or the CDN's HTML), a truncated body and a dropped connection: sent again, then answered."""
    start = _ms(2025, 6, 1, 11, 0)
    client = make_client(exchange, session, VirtualClock(_ms(2025, 6, 1, 12, 0, 30)))
    exchange.generate_klines("BTC-USD", "1m", start, 2)
    exchange.add_fault(kind, count=2 if kind == "drop" else 1)
    page = await client.fetch_klines("BTC-USD", "1m", start_ms=start, end_ms=None, limit=2)
    assert len(page.klines) == 2
    assert exchange.requests[0].fault == kind
    assert exchange.requests[-1].status == 200


async def test_fake_runs_as_its_own_process(session: aiohttp.ClientSession) -> None:
    """`python -m tests.fakes.coinbase` prints its URL first, serves products and candles, and ends on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.coinbase", "--port", "0", "--symbols", "3", "--candles", "20",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        client = CoinbaseClient(
            VENUES["coinbase"], session, VenueSettings(api_url=url, retry_wait=0.01), cpu=CpuTurns()
        )
        assert [s.symbol for s in await client.fetch_symbols()] == ["BTC-USD", "ETH-USD", "SOL-USD"]
        now = int(time.time() * 1000)
        page = await client.fetch_klines("ETH-USD", "1m", start_ms=now - 30 * MINUTE, end_ms=None, limit=300)
        assert 19 <= len(page.klines) <= 20
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0

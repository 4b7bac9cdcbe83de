"""The Kraken client against the strict fake: the 720-candle reach, the uncommitted last row, exact
decimals, symbols with unified assets, Kraken's in-band errors, and its one-request-per-second limit.

Time is virtual: the client's limiter and the fake read the same clock, and a sleep jumps it forward
once every request in flight has been answered, so seconds of pacing take milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from types import SimpleNamespace

import aiohttp
import pytest

from service.cpu_turns import CpuTurns
from service.exchanges.base import InvalidRequestError
from service.exchanges.grid import STEP_MS
from service.exchanges.kraken import RATE_LIMITED_WAIT_SECONDS, KrakenClient
from service.exchanges.venues import VENUES
from service.settings import VenueSettings
from tests.fakes.kraken import ERR_RATE_LIMIT, FakeKraken

# 2024-05-23 12:34:05.789 UTC, a Thursday: early in its minute, so a test's few paced seconds stay in it.
T0_MS = 1_716_467_645_789
MINUTE = 60_000
# krakenfx/api-specs @86715cf spot-rest/examples/responses/public/ohlc.yaml, as compact JSON: its row twice.
OHLC_EXAMPLE_2 = (
    b'{"error":[],"result":{"XXBTZUSD":[[1548115200,"3533.4","3543.7","3530.7","3539.4","3539.8","83.09287787",232],'
    b'[1548115200,"3533.4","3543.7","3530.7","3539.4","3539.8","83.09287787",232]],"last":1548111600}}'
)
KRAKEN_INTERVALS = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "4h": 240, "1d": 1440, "1w": 10080, "15d": 21600}


class VirtualClock:
    """Epoch seconds that move only when someone sleeps, and only once no HTTP request is in flight
    (a request takes no time; the fake sees it at the instant it was sent)."""

    def __init__(self, start_ms: int) -> None:
        self.now = start_ms / 1000
        self.in_flight = 0

    def time(self) -> float:
        return self.now

    def ms(self) -> int:
        return round(self.now * 1000)

    async def sleep(self, seconds: float) -> None:
        while self.in_flight:
            await asyncio.sleep(0.0005)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)

    def trace(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()

        async def started(session: object, context: SimpleNamespace, params: object) -> None:
            self.in_flight += 1

        async def ended(session: object, context: SimpleNamespace, params: object) -> None:
            self.in_flight -= 1

        config.on_request_start.append(started)
        config.on_request_end.append(ended)
        config.on_request_exception.append(ended)
        return config


class Observer:
    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []
        self.pauses: list[tuple[str, float]] = []

    def request_done(self, exchange: str, endpoint: str, status: str) -> None:
        self.done.append((endpoint, status))

    def paused(self, exchange: str, status: str, seconds: float) -> None:
        self.pauses.append((status, seconds))


@dataclass
class Env:
    clock: VirtualClock
    fake: FakeKraken
    client: KrakenClient
    session: aiohttp.ClientSession
    observer: Observer


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = VirtualClock(T0_MS)
    observer = Observer()
    async with (
        FakeKraken(now_ms=clock.ms) as fake,
        aiohttp.ClientSession(trace_configs=[clock.trace()]) as session,
    ):
        settings = VenueSettings(api_url=fake.url, timeout=2.0, retry_attempts=3, retry_wait=0.01)
        client = KrakenClient(
            VENUES["kraken"], session, settings, cpu=CpuTurns(), observer=observer, clock=clock.time, sleep=clock.sleep
        )
        fake.add_symbol("XXBTZUSD", base="XXBT", quote="ZUSD", altname="XBTUSD", wsname="XBT/USD")
        yield Env(clock, fake, client, session, observer)
        await client.aclose()


def current_open(tf: str, now_ms: int) -> int:
    return now_ms // STEP_MS[tf] * STEP_MS[tf]


def final_values(row: list[object]) -> tuple[object, ...]:
    """A fake row as the client's Kline carries it: open, high, low, close, volume, trades."""
    return (row[1], row[2], row[3], row[4], row[6], row[7])


async def test_timeframes_map_to_kraken_intervals(env: Env) -> None:
    """Each unified timeframe asks for Kraken's interval in minutes; candles close one ms before the next opens."""
    assert env.client.timeframes == tuple(KRAKEN_INTERVALS)
    for tf, minutes in KRAKEN_INTERVALS.items():
        step = STEP_MS[tf]
        env.fake.generate_klines("XXBTZUSD", minutes, current_open(tf, env.clock.ms()) - 2 * step, 3)
        assert env.client.grid(tf).offset_ms == 0  # the epoch grid, weeks included, until learnt
        page = await env.client.fetch_klines("XXBTZUSD", tf, start_ms=0, end_ms=None, limit=720)
        assert env.fake.requests[-1].params["interval"] == str(minutes)
        assert [k.open_time for k in page.klines] == [current_open(tf, env.clock.ms()) - n * step for n in (2, 1, 0)]
        assert all(k.close_time == k.open_time + step - 1 for k in page.klines)
    with pytest.raises(InvalidRequestError, match="3m"):
        await env.client.fetch_klines("XXBTZUSD", "3m", start_ms=0, end_ms=None, limit=10)
    assert len(env.fake.requests) == len(KRAKEN_INTERVALS)  # the unknown one was never sent


async def test_pages_cover_the_reach_once_oldest_first(env: Env) -> None:
    """900 candles exist, Kraken serves the newest 720: pages of 300 from reach_start return each of
    those once, in order, with Kraken's values; nothing older can be had, and no request is spent on it."""
    now = env.clock.ms()
    current = current_open("1m", now)
    rows = env.fake.generate_klines("XXBTZUSD", 1, current - 899 * MINUTE, 900)
    reach = env.client.reach_start("1m", now)
    assert reach == current - 719 * MINUTE

    got = []
    start = reach
    while True:
        page = await env.client.fetch_klines("XXBTZUSD", "1m", start_ms=start, end_ms=None, limit=300)
        got.extend(page.klines)
        if len(page.klines) < 300:
            break
        start = page.klines[-1].open_time + MINUTE
    assert [k.open_time for k in got] == [reach + n * MINUTE for n in range(720)]
    assert all(k.close_time == k.open_time + MINUTE - 1 for k in got)
    by_time = {row[0] * 1000: row for row in rows}
    assert all(
        (k.open, k.high, k.low, k.close, k.volume, k.trades) == final_values(by_time[k.open_time]) for k in got[:-1]
    )
    assert all(k.quote_volume is None and k.taker_buy_base_volume is None for k in got)
    assert len(env.fake.requests) == 3

    # One request holds the whole reach; a bigger limit is Kraken's cap.
    whole = await env.client.fetch_klines("XXBTZUSD", "1m", start_ms=0, end_ms=None, limit=5000)
    assert len(whole.klines) == 720 and whole.klines[0].open_time == reach
    assert env.client.max_page == 720

    # A window straddling the reach gets the part still served; one older gets nothing, unasked.
    assert env.client.reach_start("1m", env.clock.ms()) == reach
    part = await env.client.fetch_klines("XXBTZUSD", "1m", start_ms=reach - 50 * MINUTE, end_ms=reach + 9 * MINUTE,
                                         limit=720)  # fmt: skip
    assert [k.open_time for k in part.klines] == [reach + n * MINUTE for n in range(10)]
    assert part.closed == 10
    sent = len(env.fake.requests)
    old = await env.client.fetch_klines("XXBTZUSD", "1m", start_ms=reach - 300 * MINUTE, end_ms=reach - 2 * MINUTE,
                                        limit=720)  # fmt: skip
    assert old.klines == [] and len(env.fake.requests) == sent


async def test_the_current_candle_is_open_then_final(env: Env) -> None:
    """Kraken's last row is the uncommitted current candle: not final, changing as its minute runs;
    once the minute is over the same candle comes back final with its final values."""
    current = current_open("1m", env.clock.ms())
    rows = env.fake.generate_klines("XXBTZUSD", 1, current - 4 * MINUTE, 5)
    start = current - 4 * MINUTE

    first = await env.client.fetch_klines("XXBTZUSD", "1m", start_ms=start, end_ms=None, limit=720)
    assert len(first.klines) == 5 and first.closed == 4
    assert first.closed_count() == 4 and first.last_is_open()
    assert first.klines[-1].open_time == current
    assert first.as_of_ms == round(env.clock.now * 1000) - 1000

    env.clock.now += 20  # still inside the minute: the open candle moved on
    again = await env.client.fetch_klines("XXBTZUSD", "1m", start_ms=start, end_ms=None, limit=720)
    assert again.closed == 4
    assert Decimal(again.klines[-1].volume) > Decimal(first.klines[-1].volume)
    assert again.klines[:4] == first.klines[:4]

    env.clock.now = (current + MINUTE + 5_000) / 1000  # the minute is over
    env.fake.generate_klines("XXBTZUSD", 1, current + MINUTE, 1)
    later = await env.client.fetch_klines("XXBTZUSD", "1m", start_ms=start, end_ms=None, limit=720)
    assert later.closed == 5 and later.closed_count() == 5
    done = later.klines[4]
    assert done.open_time == current
    assert (done.open, done.high, done.low, done.close, done.volume, done.trades) == final_values(rows[4])
    assert (done.high, done.volume) != (first.klines[-1].high, first.klines[-1].volume)

    # A page that stops before the current candle is final throughout.
    closed = await env.client.fetch_klines("XXBTZUSD", "1m", start_ms=start, end_ms=current, limit=720)
    assert closed.closed == len(closed.klines) == 5


async def test_kraken_says_open_even_when_our_clock_says_over(env: Env) -> None:
    """Our clock 10 s past the minute while Kraken's is not: its last row is still its open candle."""
    current = current_open("1m", env.clock.ms())
    env.fake.generate_klines("XXBTZUSD", 1, current - MINUTE, 2)
    env.fake.set_time(current + 50_000)
    env.clock.now = (current + MINUTE + 10_000) / 1000
    page = await env.client.fetch_klines("XXBTZUSD", "1m", start_ms=current - MINUTE, end_ms=None, limit=10)
    assert [k.open_time for k in page.klines] == [current - MINUTE, current]
    assert page.klines[-1].close_time < page.as_of_ms  # by our clock it is over…
    assert page.closed_count() == 1  # …but Kraken has not committed it


async def test_decimals_come_back_exactly_as_sent(env: Env) -> None:
    """Prices and volumes are Kraken's strings, untouched: no float rounding, no lost zeros."""
    t = current_open("1m", env.clock.ms()) // 1000 - 120
    long = "12345678901234567890.123456789012345678"
    env.fake.set_klines("XXBTZUSD", 1, [
        [t, "0.1", "0.30000000000000004", "0.00000001", "0.2", "0.15", "1234.50000000", 7],
        [t + 60, "30306.10000", long, "0.1", "30306.2", "0.0000", "0.00000000", 0],
    ])  # fmt: skip
    page = await env.client.fetch_klines("XXBTZUSD", "1m", start_ms=t * 1000, end_ms=None, limit=10)
    a, b = page.klines
    assert (a.open, a.high, a.low, a.close, a.volume, a.trades) == (
        "0.1", "0.30000000000000004", "0.00000001", "0.2", "1234.50000000", 7,
    )  # fmt: skip
    assert (b.open, b.high, b.volume, b.trades) == ("30306.10000", long, "0.00000000", 0)

    env.clock.now += 2
    [price] = await env.client.fetch_prices(["XXBTZUSD"])
    assert price.price == "30306.2"


async def test_a_repeated_row_is_served_once(env: Env) -> None:
    """Kraken's own second OHLC example (krakenfx/api-specs) repeats its row: one candle comes back,
    and it is the answer's last row, so not final."""
    env.fake.add_fault("raw", body=OHLC_EXAMPLE_2)
    env.clock.now = 1548115200 + 30.0
    page = await env.client.fetch_klines("XXBTZUSD", "1h", start_ms=0, end_ms=None, limit=720)
    [candle] = page.klines
    assert (candle.open_time, candle.open, candle.volume) == (1548115200_000, "3533.4", "83.09287787")
    assert candle.trades == 232
    assert page.closed == 0


async def test_listing_start(env: Env) -> None:
    """A pair younger than the reach: its first candle. An older one: the oldest candle Kraken still
    serves (nothing older can be fetched). One request each; None for a pair without candles."""
    now = env.clock.ms()
    current = current_open("1h", now)
    env.fake.add_symbol("SOLUSD", base="SOL", quote="ZUSD")
    env.fake.generate_klines("SOLUSD", 60, current - 99 * 3_600_000, 100)
    env.fake.generate_klines("XXBTZUSD", 60, current - 2000 * 3_600_000, 2001)
    env.fake.add_symbol("NEWUSD", base="NEW", quote="ZUSD")

    assert await env.client.fetch_listing_start("SOLUSD", "1h") == current - 99 * 3_600_000
    assert await env.client.fetch_listing_start("XXBTZUSD", "1h") == env.client.reach_start("1h", now)
    assert await env.client.fetch_listing_start("NEWUSD", "1h") is None
    assert len(env.fake.requests) == 3


async def test_symbols_have_unified_assets_states_and_aliases(env: Env) -> None:
    """AssetPairs keys are the ids; XBT is BTC and XDG is DOGE; legacy X/Z prefixes go, new assets
    keep their letters; the status word is kept and mapped to a state; dark-pool books are left out."""
    fake = env.fake
    fake.add_symbol("XETHXXBT", base="XETH", quote="XXBT")
    fake.add_symbol("XDGUSD", base="XXDG", quote="ZUSD", altname="XDGUSD", wsname="XDG/USD")
    fake.add_symbol("SOLEUR", base="SOL", quote="ZEUR", status="cancel_only")
    fake.add_symbol("ZEUSUSD", base="ZEUS", quote="ZUSD", status="limit_only")
    fake.add_symbol("XXRPZUSD", base="XXRP", quote="ZUSD", status="post_only")
    fake.add_symbol("LUNAUSD", base="LUNA", quote="ZUSD", status="delisted")
    fake.add_symbol("ODDUSD", base="ODD", quote="ZUSD", status="something_new")
    fake.add_symbol("XXBTZUSD.d", base="XXBT", quote="ZUSD", altname="XBTUSD.d", wsname="")

    symbols = {s.symbol: s for s in await env.client.fetch_symbols()}
    assert set(symbols) == {"XXBTZUSD", "XETHXXBT", "XDGUSD", "SOLEUR", "ZEUSUSD", "XXRPZUSD", "LUNAUSD", "ODDUSD"}
    btc = symbols["XXBTZUSD"]
    assert (btc.base_asset, btc.quote_asset, btc.status, btc.state) == ("BTC", "USD", "online", "trading")
    assert btc.aliases == ("XBTUSD", "XBT/USD")
    assert btc.settle_asset is None
    assert (symbols["XETHXXBT"].base_asset, symbols["XETHXXBT"].quote_asset) == ("ETH", "BTC")
    assert (symbols["XDGUSD"].base_asset, symbols["XDGUSD"].aliases) == ("DOGE", ("XDG/USD",))
    assert (symbols["SOLEUR"].base_asset, symbols["SOLEUR"].quote_asset, symbols["SOLEUR"].state) == (
        "SOL", "EUR", "paused",
    )  # fmt: skip
    assert (symbols["ZEUSUSD"].base_asset, symbols["ZEUSUSD"].state) == ("ZEUS", "trading")
    assert (symbols["XXRPZUSD"].base_asset, symbols["XXRPZUSD"].state) == ("XRP", "paused")
    assert (symbols["LUNAUSD"].status, symbols["LUNAUSD"].state) == ("delisted", "delisted")
    assert symbols["ODDUSD"].state == "paused"


async def test_prices(env: Env) -> None:
    """Ticker's last trade price (c[0]) for one pair, several, or every pair."""
    current = current_open("1m", env.clock.ms())
    env.fake.add_symbol("XETHZUSD", base="XETH", quote="ZUSD")
    env.fake.set_klines("XXBTZUSD", 1, [[current // 1000 - 60, "1", "2", "0.5", "67000.1", "1.5", "3.0", 4]])
    env.fake.set_klines("XETHZUSD", 1, [[current // 1000 - 60, "1", "2", "0.5", "3100.25", "1.5", "3.0", 4]])
    assert {(p.symbol, p.price) for p in await env.client.fetch_prices()} == {
        ("XXBTZUSD", "67000.1"), ("XETHZUSD", "3100.25"),
    }  # fmt: skip
    [eth] = await env.client.fetch_prices(["XETHZUSD"])
    assert (eth.symbol, eth.price) == ("XETHZUSD", "3100.25")
    assert {p.symbol for p in await env.client.fetch_prices(["XETHZUSD", "XXBTZUSD"])} == {"XETHZUSD", "XXBTZUSD"}
    assert await env.client.fetch_prices([]) == []


async def test_unknown_pair_is_refused_by_name(env: Env) -> None:
    """Kraken's HTTP 200 `EQuery:Unknown asset pair` is final: InvalidRequestError naming the pair, one request."""
    with pytest.raises(InvalidRequestError) as caught:
        await env.client.fetch_klines("NOPEUSD", "1h", start_ms=0, end_ms=None, limit=10)
    assert "NOPEUSD" in str(caught.value) and "EQuery:Unknown asset pair" in str(caught.value)
    assert caught.value.code is None and caught.value.status == 200
    assert len(env.fake.requests) == 1
    with pytest.raises(InvalidRequestError, match=r"NOPEUSD.*EQuery:Unknown asset pair"):
        await env.client.fetch_prices(["NOPEUSD"])
    assert len(env.fake.requests) == 2


@pytest.mark.parametrize("kind", ["unavailable", "busy", "502", "bad_json"])
async def test_service_errors_are_retried(env: Env, kind: str) -> None:
    """EService:Unavailable/Busy in a 200, gateway errors and a cut body are tried again."""
    env.fake.generate_klines("XXBTZUSD", 60, current_open("1h", env.clock.ms()) - 3 * 3_600_000, 4)
    env.fake.add_fault(kind, count=2)  # type: ignore[arg-type]
    page = await env.client.fetch_klines("XXBTZUSD", "1h", start_ms=0, end_ms=None, limit=720)
    assert len(page.klines) == 4
    assert [r.fault for r in env.fake.requests] == [kind, kind, None]


async def test_full_speed_stays_within_the_limit(env: Env) -> None:
    """30 requests at once (30 windows' allowance): every one answered, none refused, spaced as one
    request per second (plus the 3 % margin) allows."""
    env.fake.generate_klines("XXBTZUSD", 1, current_open("1m", env.clock.ms()) - 99 * MINUTE, 100)
    started = env.clock.now
    pages = await asyncio.gather(*(
        env.client.fetch_klines("XXBTZUSD", "1m", start_ms=0, end_ms=None, limit=720) for _ in range(30)
    ))  # fmt: skip
    elapsed = env.clock.now - started
    assert all(len(p.klines) == 100 for p in pages)
    assert env.fake.error_counts.get(ERR_RATE_LIMIT, 0) == 0
    assert len(env.fake.requests) == 30
    times = [r.time_ms for r in env.fake.requests]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 1000
    assert 29 * 1.0 <= elapsed <= 29 * (1 / 0.97 + 0.002) + 0.01
    state = env.client.limiter_state()
    assert (state.limit, state.budget, state.used_in_window) == (1, 1, 1)


async def test_rate_limit_answer_is_waited_out(env: Env) -> None:
    """Someone else on our IP took this second: Kraken answers EAPI:Rate limit exceeded; every request
    waits, then this one is sent again and succeeds."""
    env.fake.generate_klines("XXBTZUSD", 1, current_open("1m", env.clock.ms()) - 9 * MINUTE, 10)
    async with env.session.get(f"{env.fake.url}/0/public/Time") as resp:  # the other user
        assert resp.status == 200
    waits: list[tuple[str, float]] = []
    t0 = env.clock.now
    page = await env.client.fetch_klines(
        "XXBTZUSD", "1m", start_ms=0, end_ms=None, limit=720, on_wait=lambda why, until: waits.append((why, until))
    )
    assert len(page.klines) == 10
    refused, answered = env.fake.requests[1:]
    assert refused.error == ERR_RATE_LIMIT and answered.error is None
    assert answered.time_ms - refused.time_ms >= RATE_LIMITED_WAIT_SECONDS * 1000
    assert waits and waits[0][0] == "rate_limited" and waits[0][1] >= t0 + RATE_LIMITED_WAIT_SECONDS
    assert env.observer.pauses == [(ERR_RATE_LIMIT, RATE_LIMITED_WAIT_SECONDS)]
    assert ("/0/public/OHLC", ERR_RATE_LIMIT) in env.observer.done


async def test_fake_serves_only_the_reach_whatever_since_says(env: Env) -> None:
    """The fake itself: `since` far back still gives the newest 720; `since` past now gives the current row."""
    current_s = current_open("1m", env.clock.ms()) // 1000
    env.fake.generate_klines("XXBTZUSD", 1, (current_s - 999 * 60) * 1000, 1000)
    for since, expected in ((0, 720), (current_s - 3 * 60, 3), (current_s + 3600, 1)):
        async with env.session.get(
            f"{env.fake.url}/0/public/OHLC", params={"pair": "XBTUSD", "interval": "1", "since": str(since)}
        ) as resp:
            body = await resp.json()
        rows = body["result"]["XXBTZUSD"]
        assert len(rows) == expected and rows[-1][0] == current_s
        assert body["result"]["last"] == current_s - 60
        env.clock.now += 1.0

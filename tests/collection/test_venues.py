"""Every venue through the whole pipeline, as a user drives it: the API starts collections and
configs on a venue, and reads back candles, coverage and the venues' state.

Each venue's strict fake (tests/fakes/<venue>.py) shares the service's clock, so "now" is placed at
will: T0 is five seconds into the 10:00 candle of 2026-11-24; the limit tests run on daily candles
and a clock fast enough for each venue's pause to pass in half a second.

Binance USD-M (`binance_usdm`, /fapi/v1) runs on a FakeBinance of its own answering as USD-M (its
perpetual BTCUSDT beside a quarterly the client must drop), in the cases where its rules differ from
spot's: the backfill, the open candle, its limit answer, the spellings (`BTC/USDT:USDT`) and every
venue at once; the scheduled config is the same code as spot's and is left to Binance spot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.conftest import Api, Clock, assert_error, serve_app
from tests.fakes.binance import QUARTERLY, FakeBinance
from tests.fakes.bybit import FakeBybit
from tests.fakes.coinbase import FakeCoinbase
from tests.fakes.kraken import FakeKraken
from tests.fakes.okx import CANDLES, UNIFIED_BARS, FakeOkx

MINUTE = 60_000
DAY = 86_400_000
DAY0 = 1_795_478_400_000  # 2026-11-24 00:00 UTC
OPEN = DAY0 + 600 * MINUTE  # 10:00, the candle open at T0
T0 = OPEN + 5_000
#: The shared clock runs this much faster than the wall clock: Kraken's second between requests and
#: Coinbase's listing search take a third of the time, and T0 stays 18 s (of wall time) from 10:01.
SPEED = 3
START = "/api/v1/data-collector/start"
CONFIGS = "/api/v1/admin/data-collection/configs"
VENUES = ["binance", "bybit", "okx", "coinbase", "kraken"]
#: The venues with Binance USD-M, in the venue table's order: the cases USD-M runs in.
WITH_USDM = ["binance", "binance_usdm", "bybit", "okx", "coinbase", "kraken"]

#: (open, high, low, close, volume, quote_volume, trades) of a candle, as the API shows it.
Values = tuple[str, str, str, str, str, str | None, int | None]

# Decimals a float would not keep: fed as the venue's text, they must come back as the same text.
SHORT = {"open": "0.1", "high": "0.3", "low": "0.1", "close": "0.2", "volume": "0.30000000000000004"}
LONG = {
    "open": "12345.123456789012345678901234", "high": "12345.98765432109876543210987654321",
    "low": "12345.000000000000000000000001", "close": "12345.5", "volume": "0.000000000000000000000000000001",
}  # fmt: skip
# Coinbase sends JSON numbers: `1e-8` and `1E+3` are numbers, stored as plain decimal text.
JSON_NUMBERS = {"open": "0.1", "high": "2.75", "low": "1e-8", "close": "2.50", "volume": "1E+3"}
AS_DECIMAL_TEXT = {"1e-8": "0.00000001", "1E+3": "1000"}
# What the open candle ends at once it has traded on (every venue's generated prices stay near 100).
FINAL = {"high": "99999.5", "low": "1.5", "close": "1234.5", "volume": "7777.125"}


# ---------------------------------------------------------------------------------------------
# One kit per venue: its fake, its spelling of the symbol, and how its rows map onto a candle
# ---------------------------------------------------------------------------------------------


class Kit:
    venue: ClassVar[str]
    symbol: ClassVar[str]
    """The venue's own id of BTC against the dollar: what is stored."""
    spellings: ClassVar[tuple[str, ...]]
    """Names users may give it (the unified BASE/QUOTE first)."""
    candles_path: ClassVar[str]
    reach: ClassVar[int | None] = None
    """Kraken: the most recent candles it serves at all."""
    live_current: ClassVar[bool] = False
    """Kraken serves the current candle as it stands (no price move yet, part of its volume)."""
    closes_by_time: ClassVar[bool] = False
    """The venue flags no open candle: one counts as closed once its period has ended by our clock."""
    limit_kind: ClassVar[str]
    limit_status: ClassVar[str]
    """The venue's answer as the pause metrics label it."""
    limit_reason: ClassVar[str] = "rate_limited"
    pause_seconds: ClassVar[float]
    ban_status: ClassVar[int | None] = None
    """What the venue answers while it bans our IP (None: its fake bans no one)."""

    def __init__(self, fake: Any, clock: Clock) -> None:
        self.fake = fake
        self.clock = clock
        self.lag_ms = 0
        """How far the venue's clock runs behind ours."""
        fake.now_ms = self.venue_ms

    def venue_ms(self) -> int:
        return self.clock.ms() - self.lag_ms

    def env(self) -> dict[str, Any]:
        return {
            f"{self.venue}_api_url": self.fake.url, f"{self.venue}_retry_wait": 0.01, f"{self.venue}_timeout": 2.0,
        }

    def generate(self, timeframe: str, start_ms: int, count: int) -> None:
        self.fake.generate_klines(self.symbol, timeframe, start_ms, count, start_price=100.0)

    def update(self, timeframe: str, open_ms: int, values: dict[str, str]) -> None:
        self.fake.update_kline(self.symbol, timeframe, open_ms, **values)

    def exact(self) -> list[tuple[dict[str, str], dict[str, str]]]:
        """(what the venue sends, what must be stored) for candles of awkward decimals."""
        return [(SHORT, SHORT), (LONG, LONG)]

    def final(self, timeframe: str) -> dict[int, Values]:
        """Every candle the fake holds, by open time, with its final values."""
        raise NotImplementedError

    def limit_once(self) -> None:
        """The venue's own limit answer, once, to the next candles request."""
        self.fake.add_fault(self.limit_kind)

    def candle_requests(self) -> list[tuple[int, int, str | None]]:
        """(venue time, status, fault) of every candles request, in order."""
        return [(r.time_ms, r.status, r.fault) for r in self.fake.requests if r.path == self.candles_path]


class BinanceKit(Kit):
    venue = "binance"
    symbol = "BTCUSDT"
    spellings = ("BTC/USDT", "BTCUSDT", "btc-usdt")
    candles_path = "/api/v3/klines"
    closes_by_time = True
    limit_kind, limit_status, pause_seconds = "429", "429", 1.0
    ban_status = 418

    def final(self, timeframe: str) -> dict[int, Values]:
        return {r[0]: (*r[1:6], r[7], r[8]) for r in self.fake.get_klines(self.symbol, timeframe)}


class BinanceUsdmKit(BinanceKit):
    """USD-M on a FakeBinance of its own: the perpetual BTCUSDT, and a quarterly (BTCUSDT_261225)
    that, were it not dropped, would make `BTC/USDT` name two contracts."""

    venue = "binance_usdm"
    spellings = ("BTC/USDT:USDT", "BTCUSDT", "BTC/USDT")
    candles_path = "/fapi/v1/klines"

    def __init__(self, fake: FakeBinance, clock: Clock) -> None:
        super().__init__(fake, clock)
        fake.add_symbol(self.symbol, "BTC", "USDT", product="usdm")
        fake.add_symbol(QUARTERLY, "BTC", "USDT", product="usdm", contract_type="CURRENT_QUARTER")

    def generate(self, timeframe: str, start_ms: int, count: int) -> None:
        self.fake.generate_klines(self.symbol, timeframe, start_ms, count, start_price=100.0, product="usdm")

    def update(self, timeframe: str, open_ms: int, values: dict[str, str]) -> None:
        self.fake.update_kline(self.symbol, timeframe, open_ms, product="usdm", **values)

    def final(self, timeframe: str) -> dict[int, Values]:
        return {r[0]: (*r[1:6], r[7], r[8]) for r in self.fake.get_klines(self.symbol, timeframe, product="usdm")}

    def limit_once(self) -> None:
        self.fake.add_fault("429", path=self.candles_path)


class BybitKit(Kit):
    venue = "bybit"
    symbol = "BTCUSDT"
    spellings = ("BTC/USDT", "BTCUSDT", "btcusdt")
    candles_path = "/v5/market/kline"
    limit_kind, limit_status, limit_reason, pause_seconds = "403", "403", "banned", 600.0
    ban_status = 403

    def __init__(self, fake: FakeBybit, clock: Clock) -> None:
        super().__init__(fake, clock)
        fake.add_symbol(self.symbol, "BTC", "USDT")

    def final(self, timeframe: str) -> dict[int, Values]:
        return {int(r[0]): (*r[1:7], None) for r in self.fake.get_klines(self.symbol, timeframe)}


class OkxKit(Kit):
    venue = "okx"
    symbol = "BTC-USDT"
    spellings = ("BTC/USDT", "BTC-USDT", "BTCUSDT")
    candles_path = CANDLES
    limit_kind, limit_status, pause_seconds = "429", "429", 2.0
    _FIELDS: ClassVar[dict[str, str]] = {"open": "o", "high": "h", "low": "l", "close": "c", "volume": "vol"}

    def __init__(self, fake: FakeOkx, clock: Clock) -> None:
        super().__init__(fake, clock)
        fake.limit_now_ms = clock.ms
        fake.add_symbol(self.symbol)
        self._listed: int | None = None

    def generate(self, timeframe: str, start_ms: int, count: int) -> None:
        # OKX states each instrument's listing time; the client starts its search there.
        self._listed = start_ms if self._listed is None else min(self._listed, start_ms)
        self.fake.add_symbol(self.symbol, list_time=self._listed)
        self.fake.generate_klines(self.symbol, UNIFIED_BARS[timeframe], start_ms, count, start_price=100.0)

    def update(self, timeframe: str, open_ms: int, values: dict[str, str]) -> None:
        fields = {self._FIELDS[name]: value for name, value in values.items()}
        self.fake.update_kline(self.symbol, UNIFIED_BARS[timeframe], open_ms, **fields)

    def final(self, timeframe: str) -> dict[int, Values]:
        rows = self.fake.get_klines(self.symbol, UNIFIED_BARS[timeframe])
        return {int(r[0]): (*r[1:6], r[7], None) for r in rows}


class CoinbaseKit(Kit):
    venue = "coinbase"
    symbol = "BTC-USD"
    spellings = ("BTC/USD", "BTC-USD", "BTCUSD", "btc-usd")
    candles_path = "candles"
    closes_by_time = True
    limit_kind, limit_status, pause_seconds = "429", "429", 1.0

    def __init__(self, fake: FakeCoinbase, clock: Clock) -> None:
        super().__init__(fake, clock)
        fake.add_symbol(self.symbol)

    def exact(self) -> list[tuple[dict[str, str], dict[str, str]]]:
        stored = {name: AS_DECIMAL_TEXT.get(text, text) for name, text in JSON_NUMBERS.items()}
        return [(JSON_NUMBERS, stored), (LONG, LONG)]

    def final(self, timeframe: str) -> dict[int, Values]:
        def text(number: str) -> str:
            return AS_DECIMAL_TEXT.get(number, number)

        # [time s, low, high, open, close, volume]
        rows = self.fake.get_klines(self.symbol, timeframe)
        return {r[0] * 1000: (text(r[3]), text(r[2]), text(r[1]), text(r[4]), text(r[5]), None, None) for r in rows}

    def candle_requests(self) -> list[tuple[int, int, str | None]]:
        return [(r.time_ms, r.status, r.fault) for r in self.fake.requests if r.route == "candles"]


class KrakenKit(Kit):
    venue = "kraken"
    symbol = "XXBTZUSD"
    spellings = ("BTC/USD", "XBTUSD", "XXBTZUSD", "XBT/USD")
    candles_path = "/0/public/OHLC"
    reach = 720
    live_current = True
    limit_kind, limit_status, pause_seconds = "rate_limit", "EAPI:Rate limit exceeded", 3.0

    def __init__(self, fake: FakeKraken, clock: Clock) -> None:
        super().__init__(fake, clock)
        fake.add_symbol(self.symbol)  # altname XBTUSD, wsname XBT/USD, assets XXBT and ZUSD

    def update(self, timeframe: str, open_ms: int, values: dict[str, str]) -> None:
        self.fake.update_kline(self.symbol, timeframe, open_ms // 1000, **values)

    def final(self, timeframe: str) -> dict[int, Values]:
        # [time s, open, high, low, close, vwap, volume, count]
        rows = self.fake.get_klines(self.symbol, timeframe)
        return {r[0] * 1000: (*r[1:5], r[6], None, r[7]) for r in rows}


KITS: dict[str, type[Kit]] = {
    k.venue: k for k in (BinanceKit, BinanceUsdmKit, BybitKit, OkxKit, CoinbaseKit, KrakenKit)
}
FAKES: dict[str, Callable[[], Any]] = {
    "binance_usdm": FakeBinance, "bybit": FakeBybit, "okx": FakeOkx, "coinbase": FakeCoinbase, "kraken": FakeKraken,
}  # fmt: skip


@asynccontextmanager
async def kit_for(venue: str, binance: FakeBinance, clock: Clock) -> AsyncIterator[Kit]:
    """The venue's fake, running, on `clock`, listing the kit's symbol (Binance: the tests' own fake)."""
    if venue == "binance":
        yield BinanceKit(binance, clock)
        return
    async with FAKES[venue]() as fake:
        yield KITS[venue](fake, clock)


# ---------------------------------------------------------------------------------------------
# Driving the API
# ---------------------------------------------------------------------------------------------


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def ms_of(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def values(candle: dict[str, Any]) -> Values:
    return (
        candle["open"], candle["high"], candle["low"], candle["close"], candle["volume"], candle["quote_volume"],
        candle["trades"],
    )  # fmt: skip


def move_to(clock: Clock, ms: int) -> None:
    """Put the shared clock at `ms` (it runs on from there)."""
    clock.start += ms / 1000 - clock()


def settings_for(make_settings: Callable[..., Settings], *kits: Kit, **overrides: Any) -> Settings:
    env: dict[str, Any] = {"exchanges": ",".join(k.venue for k in kits)}
    for kit in kits:
        env |= kit.env()
    return make_settings(**env | overrides)


async def submit(api: Api, venue: str, symbols: list[str], timeframe: str, start: str | None = None) -> str:
    body: dict[str, Any] = {"exchange": venue, "symbols": symbols, "timeframes": [timeframe]}
    if start is not None:
        body["start"] = start
    response = await api.http.post(START, json=body)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


async def collect(api: Api, venue: str, symbols: list[str], timeframe: str, start: str | None = None) -> dict[str, Any]:
    return await api.wait(await submit(api, venue, symbols, timeframe, start), timeout=30)


async def candles(api: Api, venue: str, symbol: str, timeframe: str, start_ms: int) -> list[dict[str, Any]]:
    params = {"exchange": venue, "symbol": symbol, "timeframe": timeframe, "start": iso(start_ms), "limit": "5000"}
    response = await api.http.get("/api/v1/klines", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["count"] == len(body["klines"])
    found: list[dict[str, Any]] = body["klines"]
    return found


async def coverage(api: Api, venue: str, symbol: str, timeframe: str, start: str) -> dict[str, Any]:
    params = {"exchange": venue, "symbol": symbol, "timeframe": timeframe, "start": start}
    response = await api.http.get("/api/v1/coverage", params=params)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def venue_states(api: Api) -> dict[str, dict[str, Any]]:
    response = await api.http.get("/api/v1/exchanges")
    assert response.status_code == 200, response.text
    return {v["id"]: v for v in response.json()}


async def stored(
    db: asyncpg.Connection[Any], venue: str, symbol: str, timeframe: str
) -> list[tuple[int, Values, bool]]:
    rows = await db.fetch(
        """
        SELECT k.open_time, k.open::text AS open, k.high::text AS high, k.low::text AS low, k.close::text AS close,
               k.volume::text AS volume, k.quote_volume::text AS quote_volume, k.trades, k.is_closed
          FROM klines k JOIN series s ON s.id = k.series_id
         WHERE s.exchange = $1 AND s.symbol = $2 AND s.timeframe = $3
         ORDER BY k.open_time
        """,
        venue, symbol, timeframe,
    )
    return [(r["open_time"], values(dict(r)), r["is_closed"]) for r in rows]


def pauses(metrics: str, venue: str) -> dict[str, float]:
    """kline_exchange_pauses_total of `venue`, by the status the venue answered."""
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(metrics) for sample in family.samples
        if sample.name == "kline_exchange_pauses_total" and sample.labels["exchange"] == venue
    }


# ---------------------------------------------------------------------------------------------
# 1. A backfill from the listing: every candle once, oldest first, exact decimals, complete coverage
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("venue", WITH_USDM)
async def test_a_backfill_from_listing_stores_every_candle_once_with_the_exact_decimals(
    venue: str, fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """`start: "listing"` finds the first candle the venue serves (Kraken: the oldest of the 720 it
    still serves, older ones being out of its reach), stores every candle from it once, oldest
    first, with the decimal text the venue sent (Coinbase's JSON numbers as plain decimals), the
    open candle marked open; /coverage says the history from the listing is complete."""
    clock = Clock(start=T0 / 1000, speed=SPEED)
    async with kit_for(venue, fake, clock) as kit:
        served = kit.reach or 400  # two pages on OKX and Coinbase; Kraken: all it still serves
        generated = served + 80 if kit.reach else served
        kit.generate("1m", OPEN - (generated - 1) * MINUTE, generated)
        listing = OPEN - (served - 1) * MINUTE
        awkward = {OPEN - (10 - i) * MINUTE: pair for i, pair in enumerate(kit.exact())}
        for open_ms, (sent, _) in awkward.items():
            kit.update("1m", open_ms, sent)
        async with serve_app(settings_for(make_settings, kit), clock) as api:
            await api.wait_idle()
            task = await collect(api, venue, [kit.symbol], "1m", start="listing")
            got = await candles(api, venue, kit.symbol, "1m", OPEN - generated * MINUTE)
            cover = await coverage(api, venue, kit.symbol, "1m", start="listing")

    assert task["status"] == "completed", task
    assert task["result"]["candles_written"] == served
    assert [ms_of(c["open_time"]) for c in got] == [listing + i * MINUTE for i in range(served)]
    final = kit.final("1m")
    *closed, current = got
    assert [values(c) for c in closed] == [final[ms_of(c["open_time"])] for c in closed]
    assert all(c["is_closed"] for c in closed)
    for open_ms, (_, kept) in awkward.items():
        candle = next(c for c in got if ms_of(c["open_time"]) == open_ms)
        assert {name: candle[name] for name in kept} == kept
    assert current["is_closed"] is False
    if kit.live_current:  # the candle as it stands: no move yet, part of its volume
        first_open = final[OPEN][0]
        assert values(current)[:4] == (first_open,) * 4
    else:
        assert values(current) == final[OPEN]
    assert (cover["complete"], cover["holes"], cover["candles_missing"]) == (True, [], 0), cover
    assert ms_of(cover["listing_start"]) == ms_of(cover["window_start"]) == listing
    assert ms_of(cover["window_end"]) == OPEN
    assert (cover["candles_verified"], cover["candles_exchange_gap"]) == (served - 1, 0)


# ---------------------------------------------------------------------------------------------
# 2. Coinbase: buckets without trades are exchange gaps, not holes
# ---------------------------------------------------------------------------------------------


async def test_coinbase_buckets_without_trades_are_exchange_gaps_not_holes(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """Coinbase leaves out the minutes nobody traded in: each run of them is confirmed empty by a
    second request and recorded as an exchange gap, so the history is complete without them."""
    clock = Clock(start=T0 / 1000, speed=SPEED)
    async with kit_for("coinbase", fake, clock) as kit:
        listing = OPEN - 59 * MINUTE
        kit.generate("1m", listing, 60)
        quiet = [(listing + a * MINUTE, listing + b * MINUTE) for a, b in ((10, 11), (20, 23), (40, 41))]
        assert sum(kit.fake.remove_klines(kit.symbol, "1m", a, b) for a, b in quiet) == 5
        async with serve_app(settings_for(make_settings, kit), clock) as api:
            await api.wait_idle()
            task = await collect(api, "coinbase", ["BTC/USD"], "1m", start="listing")
            got = await candles(api, "coinbase", kit.symbol, "1m", listing)
            cover = await coverage(api, "coinbase", kit.symbol, "1m", start="listing")

    assert task["status"] == "completed", task
    assert task["result"]["pairs"][0]["exchange_gaps"] == 3
    traded = [t for t in range(listing, OPEN + 1, MINUTE) if not any(a <= t < b for a, b in quiet)]
    assert [ms_of(c["open_time"]) for c in got] == traded
    assert (cover["complete"], cover["holes"], cover["candles_missing"]) == (True, [], 0), cover
    assert (cover["candles_exchange_gap"], cover["candles_verified"]) == (5, 54)
    gaps = [(ms_of(r["start"]), ms_of(r["end"]), r["checks"]) for r in cover["ranges"] if r["kind"] == "exchange_gap"]
    assert gaps == [(a, b, 2) for a, b in quiet]


# ---------------------------------------------------------------------------------------------
# 3. The open candle: stored open, then corrected and closed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("venue", WITH_USDM)
async def test_the_open_candle_is_stored_open_then_corrected_once_the_venue_closes_it(
    venue: str, fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """The candle still trading is stored with is_closed=false. When our clock has passed its end
    but the venue's lags behind, the venues that flag it (OKX's confirm, the newest row of Bybit's
    and Kraken's answers) keep it open, while Binance and Coinbase close it by time; once the venue
    has moved on, the next run stores its final values, closed, and the next candle open."""
    clock = Clock(start=T0 / 1000, speed=SPEED)
    async with kit_for(venue, fake, clock) as kit:
        first = OPEN - 29 * MINUTE
        kit.generate("1m", first, 31)  # 29 closed, the open one, and the next (not served before it opens)
        async with serve_app(settings_for(make_settings, kit), clock) as api:
            await api.wait_idle()
            one = await collect(api, venue, [kit.symbol], "1m")
            after_one = await candles(api, venue, kit.symbol, "1m", first)
            served = kit.final("1m")[OPEN]

            kit.update("1m", OPEN, FINAL)  # it trades on to these values
            kit.lag_ms = 30_000  # the venue's clock: 10:00:40, its candle still open
            move_to(clock, OPEN + MINUTE + 10_000)  # ours: 10:01:10
            two = await collect(api, venue, [kit.symbol], "1m")
            after_two = await candles(api, venue, kit.symbol, "1m", first)

            kit.lag_ms = 0
            three = await collect(api, venue, [kit.symbol], "1m")
            after_three = await candles(api, venue, kit.symbol, "1m", first)
            cover = await coverage(api, venue, kit.symbol, "1m", start=iso(first))

    assert [t["status"] for t in (one, two, three)] == ["completed"] * 3, (one, two, three)
    final = kit.final("1m")
    assert [ms_of(c["open_time"]) for c in after_one] == [first + i * MINUTE for i in range(30)]
    open_one = after_one[-1]
    assert open_one["is_closed"] is False
    if kit.live_current:
        assert values(open_one)[:4] == (served[0],) * 4
    else:
        assert values(open_one) == served
    assert all(c["is_closed"] for c in after_one[:-1])

    open_two = after_two[-1]
    assert ms_of(open_two["open_time"]) == OPEN
    assert open_two["is_closed"] is kit.closes_by_time, open_two
    if kit.closes_by_time:
        assert values(open_two) == final[OPEN]

    assert [ms_of(c["open_time"]) for c in after_three] == [first + i * MINUTE for i in range(31)]
    closed = next(c for c in after_three if ms_of(c["open_time"]) == OPEN)
    assert (values(closed), closed["is_closed"]) == (final[OPEN], True)
    assert {name: closed[name] for name in FINAL} == FINAL
    assert after_three[-1]["is_closed"] is False
    assert (cover["complete"], cover["holes"], ms_of(cover["window_end"])) == (True, [], OPEN + MINUTE), cover


# ---------------------------------------------------------------------------------------------
# 4. A config on the venue runs on the scheduler and collects each new candle
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("venue", VENUES)
async def test_a_one_minute_config_on_the_venue_collects_each_new_candle_on_schedule(
    venue: str, fake: FakeBinance, make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """A config with interval_minutes=1 on the venue (symbol given as BASE/QUOTE) is stored under the
    venue's id, runs at once and then every minute: each run stores the candle that opened since,
    and corrects the one it had stored open."""
    clock = Clock(start=T0 / 1000, speed=600)  # a minute passes in 0.1 s
    async with kit_for(venue, fake, clock) as kit:
        first = OPEN - 29 * MINUTE
        kit.generate("1m", first, 30 + 120)  # and the candles of the two hours to come
        async with serve_app(settings_for(make_settings, kit), clock) as api:
            await api.wait_idle()
            body = {"symbol": kit.spellings[0], "exchange": venue, "timeframes": ["1m"], "interval_minutes": 1}
            response = await api.http.post(CONFIGS, json=body)
            assert response.status_code == 201, response.text
            config = response.json()
            created = clock.ms()
            target = created - created % MINUTE + 3 * MINUTE  # opens minutes after the config's first run
            # Until a run has stored the target candle, and one (that run or the next: a run sent within
            # the 1 s clock-skew allowance of a close still counts the candle before as open) has
            # closed the candle before it.
            newest_closed = """
                SELECT max(k.open_time), max(k.open_time) FILTER (WHERE k.is_closed)
                  FROM klines k JOIN series s ON s.id = k.series_id WHERE s.exchange = $1
            """
            async with asyncio.timeout(20):
                while True:
                    newest, closed_until = await db.fetchrow(newest_closed, venue)
                    if (newest or 0) >= target and (closed_until or 0) >= target - MINUTE:
                        break
                    await asyncio.sleep(0.02)
            logs = await db.fetch(
                "SELECT job_type, exchange, symbol, status, error_type FROM job_execution_logs WHERE job_name = $1",
                f"collect_data_{config['id']}",
            )
    assert (config["symbol"], config["exchange"]) == (kit.symbol, venue)
    done = [r for r in logs if r["status"] == "success"]
    assert len(done) >= 2, [dict(r) for r in logs]
    assert {(r["job_type"], r["exchange"], r["symbol"]) for r in logs} == {
        ("scheduled_data_collection", venue, kit.symbol)
    }
    assert [dict(r) for r in logs if r["status"] == "failed" and r["error_type"] != "Interrupted"] == []
    rows = await stored(db, venue, kit.symbol, "1m")
    assert [t for t, _, _ in rows] == list(range(first, rows[-1][0] + 1, MINUTE))
    assert rows[-1][0] >= target
    final = kit.final("1m")
    closed = [(t, v) for t, v, is_closed in rows if is_closed]
    assert closed and [v for _, v in closed] == [final[t] for t, _ in closed]
    assert closed[-1][0] >= target - MINUTE  # a scheduled run closed what an earlier one stored open


# ---------------------------------------------------------------------------------------------
# 5. The venue's limit answer: obeyed, shown, and the run still complete
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("venue", WITH_USDM)
async def test_the_venues_limit_answer_is_obeyed_shown_and_the_run_still_takes_every_candle(
    venue: str, fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """The venue answers a candles request with its own limit answer once (Binance 429 with
    Retry-After, Bybit's 403 IP ban, OKX 429/50011, Coinbase 429, Kraken `EAPI:Rate limit
    exceeded`): the service waits the pause the venue orders before asking again, GET /exchanges
    shows the venue paused and the task says why meanwhile, and the run ends with every candle."""
    kit_class = KITS[venue]
    # Daily candles, from 02:00 on: a clock at this speed lives through the venue's pause in half a second.
    clock = Clock(start=(DAY0 + 120 * MINUTE) / 1000, speed=kit_class.pause_seconds / 0.5)
    async with kit_for(venue, fake, clock) as kit:
        listing = DAY0 - 39 * DAY
        kit.generate("1d", listing, 40)
        async with serve_app(settings_for(make_settings, kit), clock) as api:
            await api.wait_idle()
            kit.limit_once()
            task_id = await submit(api, venue, [kit.symbol], "1d", start="listing")
            paused: list[dict[str, Any]] = []
            messages: list[str] = []
            async with asyncio.timeout(30):
                while (task := await api.task(task_id))["status"] in ("pending", "running"):
                    messages.append(task["message"] or "")
                    limit = (await venue_states(api))[venue]["limit"]
                    if limit["paused"]:
                        paused.append(limit)
                    await asyncio.sleep(0.01)
            got = await candles(api, venue, kit.symbol, "1d", listing)
            cover = await coverage(api, venue, kit.symbol, "1d", start="listing")
            metrics = (await api.http.get("/metrics")).text

    assert task["status"] == "completed", task
    assert [ms_of(c["open_time"]) for c in got] == [listing + i * DAY for i in range(40)]
    final = kit.final("1d")
    assert [values(c) for c in got[:-1]] == [final[ms_of(c["open_time"])] for c in got[:-1]]
    assert (cover["complete"], cover["holes"]) == (True, []), cover
    # Obeyed: the request the venue refused went out again only once the ordered pause was over.
    requests = kit.candle_requests()
    (refused,) = [i for i, (_, _, fault) in enumerate(requests) if fault is not None]
    assert requests[refused + 1][0] - requests[refused][0] >= kit.pause_seconds * 1000, requests
    assert pauses(metrics, venue) == {kit.limit_status: 1.0}
    # Shown: the venue paused on GET /exchanges, and the task saying so.
    assert paused, "GET /api/v1/exchanges never showed the venue paused"
    assert {p["paused_reason"] for p in paused} == {kit.limit_reason}
    said = "IP banned by the exchange" if kit.limit_reason == "banned" else "Rate limited by the exchange"
    assert any(m.startswith(f"{said}: paused until ") for m in messages), set(messages)


# ---------------------------------------------------------------------------------------------
# 6. Symbol spellings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("venue", WITH_USDM)
async def test_every_spelling_of_the_symbol_resolves_to_the_venues_id(
    venue: str, fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """BASE/QUOTE, the venue's id, the assets run together, lower case (Kraken: BTC/USD, its altname
    XBTUSD, its key XXBTZUSD, its wsname XBT/USD) name one series, stored under the venue's id, in
    a start, a config (a second one in another spelling is a duplicate), /klines and /coverage; a
    pair the venue does not list is a 422."""
    clock = Clock(start=T0 / 1000, speed=SPEED)
    async with kit_for(venue, fake, clock) as kit:
        kit.generate("1m", OPEN - 19 * MINUTE, 20)
        async with serve_app(settings_for(make_settings, kit), clock) as api:
            await api.wait_idle()
            task = await collect(api, venue, list(kit.spellings), "1m")
            read = {name: await candles(api, venue, name, "1m", OPEN - 19 * MINUTE) for name in kit.spellings}
            response = await api.http.get(
                "/api/v1/klines", params={"exchange": venue, "symbol": kit.spellings[0], "timeframe": "1m"}
            )
            named = response.json()["symbol"]
            cover = await coverage(api, venue, kit.spellings[0], "1m", start=iso(OPEN - 19 * MINUTE))
            body = {"symbol": kit.spellings[0], "exchange": venue, "timeframes": ["1m"], "interval_minutes": 60,
                    "enabled": False}
            config = await api.http.post(CONFIGS, json=body)
            again = await api.http.post(CONFIGS, json=body | {"symbol": kit.spellings[-1]})
            unknown = await api.http.post(START, json={"exchange": venue, "symbols": ["BTC/XYZ"], "timeframes": ["1m"]})

    assert task["status"] == "completed", task
    assert task["params"]["symbols"] == [kit.symbol]
    assert task["result"]["pairs_total"] == 1
    assert task["result"]["candles_written"] == 20
    assert {name: len(found) for name, found in read.items()} == dict.fromkeys(kit.spellings, 20)
    assert named == kit.symbol
    assert (cover["symbol"], cover["complete"]) == (kit.symbol, True)
    assert config.status_code == 201, config.text
    assert config.json()["symbol"] == kit.symbol
    assert assert_error(again, 409)["extra"]["config_id"] == config.json()["id"]  # the same series, however spelt
    assert_error(unknown, 422, "BTC/XYZ", venue)


# ---------------------------------------------------------------------------------------------
# 7 and 8. Every venue at once
# ---------------------------------------------------------------------------------------------

TIMEFRAMES = {
    "binance": ["1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"],
    "bybit": ["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d", "1w", "1M"],
    "okx": ["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d", "1w", "1M"],
    "coinbase": ["1m", "5m", "15m", "1h", "6h", "1d"],
    "kraken": ["1m", "5m", "15m", "30m", "1h", "4h", "1d", "1w", "15d"],
}


@asynccontextmanager
async def every_venue(binance: FakeBinance, clock: Clock, venues: list[str] = VENUES) -> AsyncIterator[dict[str, Kit]]:
    async with AsyncExitStack() as stack:
        yield {venue: await stack.enter_async_context(kit_for(venue, binance, clock)) for venue in venues}


async def test_exchanges_lists_every_enabled_venue_and_a_timeframe_it_lacks_is_a_422_naming_its_set(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """GET /exchanges lists the enabled venues in the venue table's order, each with its timeframes;
    a timeframe a venue lacks is refused with a 422 listing the venue's own set, wherever it is
    named (start, config, /klines, /coverage); a venue not enabled is a 422 too."""
    clock = Clock(start=T0 / 1000, speed=SPEED)
    async with every_venue(fake, clock) as kits, serve_app(settings_for(make_settings, *kits.values()), clock) as api:
        await api.wait_idle()
        listed = (await api.http.get("/api/v1/exchanges")).json()

        async def start(venue: str, symbol: str, timeframe: str) -> httpx.Response:
            return await api.http.post(START, json={"exchange": venue, "symbols": [symbol], "timeframes": [timeframe]})

        async def read(path: str, venue: str, symbol: str, timeframe: str) -> httpx.Response:
            return await api.http.get(path, params={"exchange": venue, "symbol": symbol, "timeframe": timeframe})

        no_seconds = await start("coinbase", "BTC-USD", "1s")
        no_3d = await start("kraken", "XBTUSD", "3d")
        config = await api.http.post(
            CONFIGS, json={"exchange": "okx", "symbol": "BTC-USDT", "timeframes": ["3d"], "interval_minutes": 60}
        )
        no_8h = await read("/api/v1/klines", "bybit", "BTCUSDT", "8h")
        no_3d_coverage = await read("/api/v1/coverage", "kraken", "XBTUSD", "3d")
        disabled = await start("binance_usdm", "BTCUSDT", "1m")

    assert [(v["id"], v["timeframes"]) for v in listed] == list(TIMEFRAMES.items())
    assert {v["id"]: v["symbols_known"] for v in listed} == dict.fromkeys(VENUES, 1) | {"binance": 3}
    body = assert_error(no_seconds, 422, "1s", "coinbase", "1m 5m 15m 1h 6h 1d")
    assert body["extra"]["allowed"] == TIMEFRAMES["coinbase"]
    assert body["extra"]["invalid"] == ["1s"]
    assert_error(no_3d, 422, "3d", "kraken", " ".join(TIMEFRAMES["kraken"]))
    assert_error(config, 422, "3d", "okx", " ".join(TIMEFRAMES["okx"]))
    assert_error(no_8h, 422, "8h", "bybit", " ".join(TIMEFRAMES["bybit"]))
    assert_error(no_3d_coverage, 422, "3d", "kraken", " ".join(TIMEFRAMES["kraken"]))
    assert_error(disabled, 422, "binance_usdm", "not enabled")


@pytest.mark.parametrize("banned", ["binance", "bybit"])
async def test_every_venue_at_once_one_banned_the_others_complete(
    banned: str, fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """With all six venues enabled and one of them (Binance: 418, Bybit: 403) banning our IP for the
    whole collection, the five others complete with every candle (Binance's, Binance USD-M's and
    Bybit's BTCUSDT each its own series; Binance spot's ban not touching USD-M) while the banned
    venue's task waits out the ban: its message says so, GET /exchanges shows that venue paused and
    no other, and the venue was asked once, not again."""
    clock = Clock(start=T0 / 1000, speed=SPEED)
    listing = OPEN - 99 * MINUTE
    async with every_venue(fake, clock, WITH_USDM) as kits:
        for kit in kits.values():
            kit.generate("1m", listing, 100)
        async with serve_app(settings_for(make_settings, *kits.values()), clock) as api:
            await api.wait_idle()  # the symbol refresh of every venue
            kits[banned].fake.ban(3600.0)
            kits[banned].fake.reset_stats()
            tasks = {venue: await submit(api, venue, [kit.spellings[0]], "1m", start="listing")
                     for venue, kit in kits.items()}
            done = {venue: await api.wait(task_id, timeout=30) for venue, task_id in tasks.items() if venue != banned}
            waiting = await api.task(tasks[banned])
            states = await venue_states(api)
            got = {venue: await candles(api, venue, kits[venue].symbol, "1m", listing) for venue in done}
            covers = {venue: await coverage(api, venue, kits[venue].symbol, "1m", start="listing") for venue in done}
            cancelled = await api.http.post(f"/api/v1/data-collector/task/{tasks[banned]}/cancel")
            after = await api.wait(tasks[banned], timeout=10)

    assert {venue: task["status"] for venue, task in done.items()} == dict.fromkeys(done, "completed"), done
    for venue, found in got.items():
        assert [ms_of(c["open_time"]) for c in found] == [listing + i * MINUTE for i in range(100)], venue
        final = kits[venue].final("1m")
        assert [values(c) for c in found[:-1]] == [final[ms_of(c["open_time"])] for c in found[:-1]], venue
        assert (covers[venue]["complete"], covers[venue]["candles_verified"]) == (True, 99), covers[venue]
    assert waiting["status"] == "running", waiting
    assert waiting["message"].startswith("IP banned by the exchange: paused until "), waiting
    assert {venue: s["limit"]["paused"] for venue, s in states.items()} == {v: v == banned for v in WITH_USDM}
    assert states[banned]["limit"]["paused_reason"] == "banned"
    assert [r.status for r in kits[banned].fake.requests] == [kits[banned].ban_status]  # told once, then waited
    assert cancelled.status_code == 200, cancelled.text
    assert after["status"] == "cancelled", after




# ---------------------------------------------------------------------------------------------
# Kraken's reach after an outage; a venue banning us before its symbols are known
# ---------------------------------------------------------------------------------------------


async def kraken_outage(api: Api, kit: Kit, clock: Clock) -> tuple[dict[str, Any], list[str]]:
    """A run at T0 (the last 100 candles, the 10:00 one open), then the service is away for 1,000
    minutes, longer than Kraken's reach of 720: the run after it. Returns that run's task and the
    `since` of its OHLC requests."""
    first = await collect(api, "kraken", [kit.symbol], "1m")
    assert first["status"] == "completed", first
    move_to(clock, OPEN + 1000 * MINUTE + 5_000)
    kit.fake.reset_stats()
    after = await collect(api, "kraken", [kit.symbol], "1m")
    return after, [r.params["since"] for r in kit.fake.requests if r.path == kit.candles_path]


async def test_kraken_candles_lost_beyond_its_reach_during_an_outage_are_unavailable_not_holes(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """Back after an outage longer than Kraken's reach, a run fetches what Kraken still serves (from
    the oldest of its 720 candles); the candles that fell out of reach meanwhile are reported
    unavailable: no hole a repair would chase, no exchange gap, the history complete otherwise."""
    clock = Clock(start=T0 / 1000, speed=SPEED)
    async with kit_for("kraken", fake, clock) as kit:
        kit.generate("1m", OPEN - 99 * MINUTE, 100 + 1100)
        async with serve_app(settings_for(make_settings, kit), clock) as api:
            await api.wait_idle()
            after, since = await kraken_outage(api, kit, clock)
            cover = await coverage(api, "kraken", kit.symbol, "1m", start=iso(OPEN - 99 * MINUTE))
            got = await candles(api, "kraken", kit.symbol, "1m", OPEN - 99 * MINUTE)

    reach = OPEN + 281 * MINUTE  # the oldest of the 720 served at 10:00 + 1,000 minutes
    assert after["status"] == "completed", after
    assert after["result"]["candles_written"] == 720
    assert since[0] == str(reach // 1000 - 1)
    assert [ms_of(c["open_time"]) for c in got] == [OPEN - (99 - i) * MINUTE for i in range(100)] + [
        reach + i * MINUTE for i in range(720)
    ]
    assert (cover["complete"], cover["holes"], cover["candles_exchange_gap"]) == (True, [], 0), cover
    assert cover["candles_unavailable"] == 281
    assert [(ms_of(r["start"]), ms_of(r["end"]), r["kind"]) for r in cover["ranges"]] == [
        (OPEN - 99 * MINUTE, OPEN, "verified"), (OPEN, reach, "unavailable"),
        (reach, OPEN + 1000 * MINUTE, "verified"),
    ]


async def test_kraken_runs_after_an_outage_beyond_its_reach_resume_at_the_newest_candle(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """Once a run has fetched what Kraken still serves after an outage, the next run re-reads only
    the newest candle (one request), as before the outage."""
    clock = Clock(start=T0 / 1000, speed=SPEED)
    async with kit_for("kraken", fake, clock) as kit:
        kit.generate("1m", OPEN - 99 * MINUTE, 100 + 1100)
        async with serve_app(settings_for(make_settings, kit), clock) as api:
            await api.wait_idle()
            await kraken_outage(api, kit, clock)
            kit.fake.reset_stats()
            following = await collect(api, "kraken", [kit.symbol], "1m")
            since = [r.params["since"] for r in kit.fake.requests if r.path == kit.candles_path]

    assert following["status"] == "completed", following
    assert since == [str((OPEN + 1000 * MINUTE) // 1000 - 1)]


async def test_a_start_on_a_venue_banning_us_before_its_symbols_are_known_answers_at_once(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """Bybit bans the IP from the service's start, so its symbols were never loaded: POST /start on
    Bybit still answers promptly (a task that waits, or an error saying why), not after the ban."""
    clock = Clock(start=T0 / 1000, speed=SPEED)
    async with kit_for("bybit", fake, clock) as kit:
        kit.generate("1m", OPEN - 99 * MINUTE, 100)
        kit.fake.ban(3600.0)
        async with serve_app(settings_for(make_settings, kit), clock) as api:
            async with asyncio.timeout(2):
                response = await api.http.post(
                    START, json={"exchange": "bybit", "symbols": ["BTCUSDT"], "timeframes": ["1m"]}
                )
    assert response.status_code == 422, response.text
    assert "bybit holds every request until" in response.json()["detail"]


# ---------------------------------------------------------------------------------------------
# Bybit's weeks: where they open is learnt, and the first one is found by the listing search
# ---------------------------------------------------------------------------------------------


async def test_bybit_weeks_opening_on_monday_are_collected_from_the_first_one(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """A symbol whose first trade is on Saturday 2 May 2026 (the month began on a Friday): its first
    weekly candle opens on Monday 27 April, before the month of its first monthly candle. A backfill
    of weeks from the listing starts there and stores every week up to the open one; a week later,
    the next run stores that week's final values, closed, and the new week open."""
    clock = Clock(start=T0 / 1000, speed=SPEED)
    first_trade = DAY0 - 206 * DAY  # Saturday 2026-05-02
    first_week = first_trade - 5 * DAY  # Monday 2026-04-27
    this_week = DAY0 - DAY  # Monday 2026-11-23
    assert datetime.fromtimestamp(first_week / 1000, UTC).strftime("%a %Y-%m-%d") == "Mon 2026-04-27"
    async with FakeBybit(week_offset_ms=4 * DAY) as bybit:  # weeks open on Monday, as on the venue
        kit = BybitKit(bybit, clock)
        kit.generate("1d", first_trade, 207 + 7)  # and the week to come; weeks and months roll up from days
        async with serve_app(settings_for(make_settings, kit), clock) as api:
            await api.wait_idle()
            backfill = await collect(api, "bybit", [kit.symbol], "1w", start="listing")
            weeks = await candles(api, "bybit", kit.symbol, "1w", first_week - 7 * DAY)
            cover = await coverage(api, "bybit", kit.symbol, "1w", start="listing")

            move_to(clock, T0 + 7 * DAY)
            resumed = await collect(api, "bybit", [kit.symbol], "1w")
            later = await candles(api, "bybit", kit.symbol, "1w", first_week)
        async with httpx.AsyncClient(base_url=bybit.url) as venue:
            params = {"category": "spot", "symbol": kit.symbol, "interval": "W", "start": str(this_week), "limit": "1"}
            (served,) = (await venue.get("/v5/market/kline", params=params)).json()["result"]["list"]

    assert backfill["status"] == "completed", backfill
    assert backfill["result"]["candles_quarantined"] == 0
    assert [ms_of(c["open_time"]) for c in weeks] == list(range(first_week, this_week + 1, 7 * DAY))
    assert [c["is_closed"] for c in weeks] == [True] * (len(weeks) - 1) + [False]
    assert ms_of(cover["listing_start"]) == first_week
    assert (cover["complete"], cover["holes"], cover["candles_exchange_gap"]) == (True, [], 0), cover

    assert resumed["status"] == "completed", resumed
    assert [ms_of(c["open_time"]) for c in later] == list(range(first_week, this_week + 8 * DAY, 7 * DAY))
    closed = later[-2]
    assert (ms_of(closed["open_time"]), closed["is_closed"], later[-1]["is_closed"]) == (this_week, True, False)
    assert values(closed)[:6] == tuple(served[1:7])  # the week's final values, as Bybit serves them now


# ---------------------------------------------------------------------------------------------
# USD-M weighs a klines request by its limit: a run asks for what its window holds
# ---------------------------------------------------------------------------------------------


async def test_usdm_runs_ask_for_the_candles_their_window_holds_and_pay_that_weight(
    fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """USD-M charges 1 weight for fewer than 100 candles, 2 below 500, 5 up to 1000, 10 for a full
    1500: a backfill of 150 candles asks for about that many (weight 2), and a scheduled-style run
    three minutes later for a few (weight 1), as its plan says; not a full page (weight 10) each."""
    clock = Clock(start=T0 / 1000, speed=SPEED)
    async with kit_for("binance_usdm", fake, clock) as kit:
        usdm: FakeBinance = kit.fake
        kit.generate("1m", OPEN - 299 * MINUTE, 300 + 10)  # and the ten minutes to come
        async with serve_app(settings_for(make_settings, kit), clock) as api:
            await api.wait_idle()
            await collect(api, "binance_usdm", [kit.symbol], "1m", start=iso(OPEN - 149 * MINUTE))
            backfill = [r for r in usdm.requests if r.path == "/fapi/v1/klines"]
            move_to(clock, OPEN + 3 * MINUTE + 5_000)
            body = {"exchange": "binance_usdm", "symbols": [kit.symbol], "timeframes": ["1m"]}
            plan = await api.http.post("/api/v1/data-collector/plan", json=body)
            assert plan.status_code == 200, plan.text
            weight_before = sum(w.used for w in usdm.usdm_windows.values())
            run = await collect(api, "binance_usdm", [kit.symbol], "1m")
            weight_after = sum(w.used for w in usdm.usdm_windows.values())
            later = [r for r in usdm.requests if r.path == "/fapi/v1/klines"][len(backfill):]

    # The listing's first candle, then 150 slots to the open candle and one more.
    assert [int(r.params["limit"]) for r in backfill] == [1, 151]
    assert run["status"] == "completed" and run["result"]["candles_written"] == 4, run  # the reopened one and 3
    assert [int(r.params["limit"]) for r in later] == [5]
    assert weight_after - weight_before == 1
    assert plan.json()["series"][0]["request_weight"] == 1


# ---------------------------------------------------------------------------------------------
# The plan says what the run does
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("venue", WITH_USDM)
async def test_the_plan_counts_the_requests_and_candles_the_run_then_takes(
    venue: str, fake: FakeBinance, make_settings: Callable[..., Settings]
) -> None:
    """POST /plan for a backfill of two pages and a bit (Kraken: most of what it still serves) names
    as many candle requests as the run then sends, and the candles it writes, on every venue's page
    cap and paging."""
    clock = Clock(start=T0 / 1000, speed=SPEED)
    async with kit_for(venue, fake, clock) as kit, serve_app(settings_for(make_settings, kit), clock) as api:
        await api.wait_idle()
        page_cap = next(v["page_cap"] for v in (await api.http.get("/api/v1/exchanges")).json() if v["id"] == venue)
        count = 2 * page_cap + 50 if kit.reach is None else kit.reach - 20
        kit.generate("1m", OPEN - (count - 1) * MINUTE, count + 100)
        start = iso(OPEN - (count - 1) * MINUTE)
        body = {"exchange": venue, "symbols": [kit.symbol], "timeframes": ["1m"], "start": start}
        plan = await api.http.post("/api/v1/data-collector/plan", json=body)
        assert plan.status_code == 200, plan.text
        before = len(kit.candle_requests())  # the plan may have looked for the listing
        run = await collect(api, venue, [kit.symbol], "1m", start=start)
        sent = len(kit.candle_requests()) - before
    [series] = plan.json()["series"]
    assert (series["candles_to_fetch"], series["unavailable_until"]) == (count, None)
    assert run["result"]["candles_written"] == count
    assert series["requests"] == sent

"""The Binance client as USD-M perpetual futures (`binance_usdm`, /fapi/v1) against the fake: pages of
1,500 candles weighed by their limit, no 1s candles, the perpetuals only with what they settle in,
exact decimals beside a 12th field that is not "0", and the 2,400 weight limit learnt from
exchangeInfo, counted apart from spot's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from service.cpu_turns import CpuTurns
from service.exchanges.base import InvalidRequestError
from service.exchanges.binance import BinanceClient, fallback_weight_limit
from service.exchanges.clients import make_client
from service.exchanges.venues import VENUES
from service.records import Kline, SymbolInfo
from tests.fakes.binance import QUARTERLY, FakeBinance
from tests.settings import settings_of

T0 = 1_795_478_400_000  # 2026-11-24 00:00 UTC, a minute boundary
MINUTE = 60_000
USDM = VENUES["binance_usdm"]
# Copied from shared/exchange-samples (provenance in its README) so that a clone runs it anywhere.
SAMPLE = Path(__file__).resolve().parents[1] / "data/exchange-samples/binance/futures-usdm-klines.json"


@pytest.fixture
async def usdm() -> AsyncIterator[FakeBinance]:
    """The fake on a frozen clock, its USD-M market listing BTCUSDT; spot lists it too."""
    async with FakeBinance(now_ms=lambda: T0) as fake:
        fake.add_symbol("BTCUSDT", "BTC", "USDT", product="usdm")
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        yield fake


def client_of(fake: FakeBinance, session: aiohttp.ClientSession, **values: object) -> BinanceClient:
    """The client the service builds for `binance_usdm` from its settings."""
    settings = settings_of(
        exchanges="binance_usdm", binance_usdm_api_url=fake.url, binance_usdm_retry_wait=0.01,
        binance_usdm_timeout=2.0, **values,
    )  # fmt: skip
    client = make_client(USDM, session, settings.venues["binance_usdm"], cpu=CpuTurns())
    assert isinstance(client, BinanceClient)
    return client


@pytest.fixture
async def client(usdm: FakeBinance) -> AsyncIterator[BinanceClient]:
    async with aiohttp.ClientSession() as session:
        made = client_of(usdm, session)
        try:
            yield made
        finally:
            await made.aclose()


def klines_paths(fake: FakeBinance) -> list[str]:
    return [r.path for r in fake.requests if r.path.endswith("/klines")]


async def test_pages_of_1500_candles_weigh_10_against_usdms_own_counter(
    usdm: FakeBinance, client: BinanceClient
) -> None:
    """A page holds up to 1,500 candles and weighs 10; smaller limits weigh by USD-M's steps (1, 2,
    5); every request goes to /fapi/v1 and counts against USD-M's minute, not spot's."""
    usdm.generate_klines("BTCUSDT", "1m", T0 - 3000 * MINUTE, 3001, product="usdm")
    assert (client.max_page, client.klines_weight(1500), client.klines_weight(99)) == (1500, 10, 1)

    first = await client.fetch_klines("BTCUSDT", "1m", start_ms=0, end_ms=None, limit=1500)
    second = await client.fetch_klines(
        "BTCUSDT", "1m", start_ms=first.klines[-1].open_time + MINUTE, end_ms=None, limit=1500
    )
    assert [len(first.klines), len(second.klines)] == [1500, 1500]
    assert first.klines[0].open_time == T0 - 3000 * MINUTE
    assert second.klines[-1].open_time == T0 - MINUTE
    assert usdm.used_weight(product="usdm") == 20
    assert client.limiter_state().used_in_window >= 20  # the X-MBX-USED-WEIGHT-1M it was told

    weights = {}
    for limit in (1, 99, 100, 499, 500, 1000, 1001):
        before = usdm.used_weight(product="usdm")
        await client.fetch_klines("BTCUSDT", "1m", start_ms=0, end_ms=None, limit=limit)
        weights[limit] = usdm.used_weight(product="usdm") - before
    assert weights == {1: 1, 99: 1, 100: 2, 499: 2, 500: 5, 1000: 5, 1001: 10}
    assert set(klines_paths(usdm)) == {"/fapi/v1/klines"}
    assert usdm.used_weight() == 0  # spot's minute untouched


async def test_a_limit_above_1500_is_refused_by_the_venue(usdm: FakeBinance, client: BinanceClient) -> None:
    """USD-M answers a limit above 1,500 with -1130 (HTTP 400): a clear error, not retried."""
    with pytest.raises(InvalidRequestError) as refused:
        await client.fetch_klines("BTCUSDT", "1m", start_ms=0, end_ms=None, limit=1501)
    assert (refused.value.code, refused.value.status) == (-1130, 400)
    assert "limit" in str(refused.value)
    assert len(klines_paths(usdm)) == 1


async def test_1s_candles_are_not_offered_and_the_venue_refuses_them(usdm: FakeBinance, client: BinanceClient) -> None:
    """USD-M has 15 intervals, spot's without 1s: the client does not offer it, and a request for it
    anyway is refused by the venue (-1120 Invalid interval) as an invalid request, once."""
    assert "1s" not in client.timeframes
    assert len(client.timeframes) == 15
    with pytest.raises(InvalidRequestError) as refused:
        await client.fetch_klines("BTCUSDT", "1s", start_ms=0, end_ms=None, limit=10)
    assert refused.value.code == -1120
    assert "Invalid interval" in str(refused.value)
    assert len(klines_paths(usdm)) == 1
    with pytest.raises(ValueError, match="1s"):
        usdm.generate_klines("BTCUSDT", "1s", T0, 1, product="usdm")


async def test_symbols_are_the_perpetuals_only_with_what_they_settle_in(
    usdm: FakeBinance, client: BinanceClient
) -> None:
    """exchangeInfo lists quarterly contracts beside the perpetuals: only the perpetuals come back,
    each with its margin asset as settle asset; spot's listing is not consulted."""
    usdm.add_symbol("ETHUSDC", "ETH", "USDC", product="usdm")
    usdm.add_symbol("SOLUSDT", "SOL", "USDT", "SETTLING", product="usdm")
    usdm.add_symbol(QUARTERLY, "BTC", "USDT", product="usdm", contract_type="CURRENT_QUARTER")
    usdm.add_symbol("ETHUSDT_270326", "ETH", "USDT", product="usdm", contract_type="NEXT_QUARTER")
    usdm.add_symbol("ETHBTC", "ETH", "BTC")  # spot only

    assert await client.fetch_symbols() == [
        SymbolInfo("BTCUSDT", "BTC", "USDT", "TRADING", "trading", settle_asset="USDT"),
        SymbolInfo("ETHUSDC", "ETH", "USDC", "TRADING", "trading", settle_asset="USDC"),
        SymbolInfo("SOLUSDT", "SOL", "USDT", "SETTLING", "delisted", settle_asset="USDT"),
    ]
    assert [r.path for r in usdm.requests] == ["/fapi/v1/exchangeInfo"]
    assert usdm.used_weight(product="usdm") == 1


async def test_exact_decimals_with_a_non_zero_12th_field(usdm: FakeBinance, client: BinanceClient) -> None:
    """Rows whose 12th field is not "0" (USD-M's sample) decode to the venue's exact decimal text;
    the fast COPY path declines such a body rather than shifting a column."""
    sample = json.loads(SAMPLE.read_text())
    assert sample[0][11] != "0"
    long = [
        T0, "12345.123456789012345678901234", "12345.98765432109876543210987654321", "12345.000000000000000000000001",
        "12345.5", "0.000000000000000000000000000001", T0 + MINUTE - 1, "0.30000000000000004", 7, "0.1", "0.2",
        "17928899.62484339",
    ]  # fmt: skip
    usdm.set_klines("BTCUSDT", "1m", [*sample, long], product="usdm")

    page = await client.fetch_klines("BTCUSDT", "1m", start_ms=0, end_ms=None, limit=10)
    assert page.klines == [Kline(*row[:11]) for row in (*sample, long)]
    assert page.klines[1].open == "12345.123456789012345678901234"
    assert page.klines[1].volume == "0.000000000000000000000000000001"
    assert page.copy_fields is None
    generated = usdm.generate_klines("BTCUSDT", "5m", T0 - 10 * 5 * MINUTE, 10, product="usdm")
    assert all(row[11] != "0" for row in generated)
    assert (await client.fetch_klines("BTCUSDT", "5m", start_ms=0, end_ms=None, limit=10)).klines == [
        Kline(*row[:11]) for row in generated
    ]


async def test_the_2400_limit_is_learnt_from_exchange_info_and_spots_counter_is_apart(usdm: FakeBinance) -> None:
    """USD-M's fallback is 2,400; a client started on another guess learns the limit exchangeInfo
    states (2,400) and obeys it: past it the venue answers 429, USD-M's minute only."""
    assert fallback_weight_limit(USDM) == 2400
    async with aiohttp.ClientSession() as session:
        guessed = client_of(usdm, session, binance_usdm_weight_fallback=6000)
        try:
            assert guessed.limiter.limit == 6000
            await guessed.fetch_symbols()
            assert guessed.limiter.limit == 2400
        finally:
            await guessed.aclose()
        async with session.get(usdm.url + "/fapi/v1/exchangeInfo") as resp:
            info = await resp.json()
    assert {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400} in info[
        "rateLimits"
    ]
    assert info["symbols"][0]["contractType"] == "PERPETUAL"

    # The fake enforces it: pages of 10 fill USD-M's minute, the next is a 429 stating 2400; spot still answers.
    async with aiohttp.ClientSession() as raw:
        params = {"symbol": "BTCUSDT", "interval": "1m", "limit": "1500"}
        for _ in range((2400 - usdm.used_weight(product="usdm")) // 10):
            async with raw.get(usdm.url + "/fapi/v1/klines", params=params) as resp:
                assert resp.status == 200
        async with raw.get(usdm.url + "/fapi/v1/klines", params=params) as resp:
            assert resp.status == 429
            assert "current limit is 2400 request weight per 1 MINUTE" in (await resp.json())["msg"]
        async with raw.get(usdm.url + "/api/v3/klines", params=params | {"limit": "1000"}) as resp:
            assert resp.status == 200
    assert usdm.used_weight() == 2

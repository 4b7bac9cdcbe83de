"""The Binance client against the fake: exchange errors are final and clear; the limit is learnt."""

from __future__ import annotations

import aiohttp
import pytest

from service.cpu_turns import CpuTurns
from service.exchanges.base import InvalidRequestError
from service.exchanges.binance import BinanceClient
from service.exchanges.limiter import WeightLimiter
from tests.fakes.binance import FakeBinance


@pytest.fixture
async def client(fake: FakeBinance) -> BinanceClient:
    session = aiohttp.ClientSession()
    limiter = WeightLimiter(limit=1200, margin=0.03, max_concurrency=4)
    yield BinanceClient(  # type: ignore[misc]
        session, limiter, base_url=fake.url, timeout=2, retry_attempts=3, retry_wait_initial=0.01, cpu=CpuTurns()
    )
    await session.close()


@pytest.mark.parametrize(
    ("symbol", "timeframe", "code", "message"),
    [
        ("NOPEUSDT", "1m", -1121, "Invalid symbol."),
        ("BTCUSDT", "7m", -1120, "Invalid interval."),
        ("btc usdt", "1m", -1100, "Illegal characters found in parameter 'symbol'"),
    ],
)
async def test_exchange_4xx_errors_are_final(
    client: BinanceClient, fake: FakeBinance, symbol: str, timeframe: str, code: int, message: str
) -> None:
    """-1121, -1120 and -1100 come back as InvalidRequestError with Binance's message, after one request."""
    with pytest.raises(InvalidRequestError) as caught:
        await client.fetch_klines(symbol, timeframe, start_ms=0, end_ms=None, limit=1000)
    assert caught.value.code == code
    assert message in str(caught.value)
    assert len(fake.requests) == 1


async def test_exchange_info_sets_the_budget_and_lists_symbols(client: BinanceClient, fake: FakeBinance) -> None:
    """exchangeInfo's REQUEST_WEIGHT/MINUTE limit replaces the fallback; symbols keep base and quote."""
    symbols = await client.fetch_symbols()
    assert client.limiter.limit == 6000
    assert {(s.symbol, s.base_asset, s.quote_asset, s.status) for s in symbols} >= {
        ("BTCUSDT", "BTC", "USDT", "TRADING"),
    }
    assert client.limiter.state.used_in_window >= 20  # weight as the exchange counts it


async def test_ticker_prices(client: BinanceClient, fake: FakeBinance) -> None:
    """ticker/price answers for one symbol and for all."""
    fake.generate_klines("BTCUSDT", "1m", fake.now_ms() - 10 * 60_000, 5)
    [one] = await client.fetch_prices(["BTCUSDT"])
    assert one.symbol == "BTCUSDT"
    assert float(one.price) > 0
    everything = await client.fetch_prices()
    assert "BTCUSDT" in {p.symbol for p in everything}

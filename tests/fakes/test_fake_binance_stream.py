"""Self-test of the fake Binance kline streams: it must frame, answer and disconnect like Binance's, or the
tests built on it lie."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.binance_stream import FakeBinanceStream
from tests.fakes.stream_testing import WAIT, receive_json

T0 = 1_672_515_782_136
# Binance's own example (web-socket-streams.md, "Kline/Candlestick Streams for UTC"), key order included.
DOC_EVENT = (
    '{"e":"kline","E":1672515782136,"s":"BNBBTC","k":{"t":1672515780000,"T":1672515839999,"s":"BNBBTC","i":"1m",'
    '"f":100,"L":200,"o":"0.0010","c":"0.0020","h":"0.0025","l":"0.0015","v":"1000","n":100,"x":false,'
    '"q":"1.0000","V":"500","Q":"0.500","B":"123456"}}'
)
# The same candle as the REST row: open time, open, high, low, close, volume, close time, quote volume,
# trades, taker base, taker quote, ignore.
DOC_ROW = [1672515780000, "0.0010", "0.0025", "0.0015", "0.0020", "1000", 1672515839999, "1.0000", 100, "500",
           "0.500", "123456"]  # fmt: skip


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinanceStream]:
    async with FakeBinanceStream(now_ms=lambda: T0) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_combined_and_raw_events(fake: FakeBinanceStream, http: aiohttp.ClientSession) -> None:
    """A combined connection gets each event wrapped with its stream; a raw one gets the bare payload, which is
    exactly Binance's documented event."""
    url = fake.url + "/stream?streams=bnbbtc@kline_1m/ethusdt@kline_5m"
    async with http.ws_connect(url) as combined, http.ws_connect(fake.url + "/ws/bnbbtc@kline_1m") as raw:
        await fake.wait_subscribed(["bnbbtc@kline_1m", "ethusdt@kline_5m"])
        await fake.wait_connections(2)
        assert await fake.push("bnbbtc@kline_1m", DOC_ROW, first_trade_id=100, last_trade_id=200) == 2
        assert await raw.receive_str(timeout=WAIT) == DOC_EVENT
        assert json.loads(await combined.receive_str(timeout=WAIT)) == {
            "stream": "bnbbtc@kline_1m", "data": json.loads(DOC_EVENT),
        }  # fmt: skip

        await fake.push("ethusdt@kline_5m", [0, 1, 2, 0.5, "1.5", 10, 299_999, 15, 0, 0, 0, "0"], closed=True)
        event = await receive_json(combined)
        assert event["stream"] == "ethusdt@kline_5m"
        assert event["data"]["s"] == "ETHUSDT"
        k = event["data"]["k"]
        assert (k["i"], k["x"], k["l"], k["o"], k["f"], k["L"]) == ("5m", True, "0.5", "1", -1, -1)
    assert fake.connections_opened == 2
    assert fake.messages_sent == 3


async def test_control_messages(fake: FakeBinanceStream, http: aiohttp.ClientSession) -> None:
    """SUBSCRIBE, LIST_SUBSCRIPTIONS and UNSUBSCRIBE answer as Binance does; bad requests get its errors."""
    async with http.ws_connect(fake.url + "/ws") as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m", "ethusdt@kline_1h"], "id": 1})
        assert await receive_json(ws) == {"result": None, "id": 1}
        assert fake.subscriptions == {"btcusdt@kline_1m", "ethusdt@kline_1h"}
        await ws.send_json({"method": "UNSUBSCRIBE", "params": ["ethusdt@kline_1h"], "id": "a2"})
        assert await receive_json(ws) == {"result": None, "id": "a2"}
        await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 3})
        assert await receive_json(ws) == {"result": ["btcusdt@kline_1m"], "id": 3}
        (conn,) = fake.connections
        assert conn.streams == ["btcusdt@kline_1m"]
        assert [m["method"] for m in conn.control_messages] == ["SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS"]
        assert conn.messages_received == 3
    assert fake.subscribe_messages == 1

    async with http.ws_connect(fake.url + "/ws") as ws:  # a fresh connection: the limit counts per connection
        await ws.send_json({"method": "SUBSCRIBE", "params": ["BTCUSDT@kline_1m"], "id": 4})
        assert await receive_json(ws) == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 4}
        too_many = [f"s{i}usdt@kline_1m" for i in range(1025)]
        await ws.send_json({"method": "SUBSCRIBE", "params": too_many, "id": 5})
        answer = await receive_json(ws)
        assert answer["error"]["code"] == 2 and answer["id"] == 5
        await ws.send_str("{not json")
        assert (await receive_json(ws))["error"]["code"] == 3
        assert fake.subscriptions == set()


async def test_usdm_is_its_own_market(fake: FakeBinanceStream, http: aiohttp.ClientSession) -> None:
    """USD-M lives under usdm_url: no 1s interval, and pushes can target one product."""
    async with http.ws_connect(fake.usdm_url + "/ws/btcusdt@kline_1m") as ws:
        await fake.wait_subscribed("btcusdt@kline_1m", product="usdm")
        assert fake.connections[0].max_messages_per_second == 10
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@kline_1s"], "id": 1})
        assert (await receive_json(ws))["error"]["msg"] == "Invalid request: invalid stream"
        assert await fake.push("btcusdt@kline_1m", DOC_ROW, product="spot") == 0
        assert await fake.push("btcusdt@kline_1m", DOC_ROW, product="usdm") == 1
        assert (await receive_json(ws))["s"] == "BTCUSDT"
    async with http.get(fake.url.replace("ws://", "http://") + "/ws/BTCUSDT@kline_1m") as resp:
        assert resp.status == 400


async def test_six_messages_in_a_second_close_the_connection(
    fake: FakeBinanceStream, http: aiohttp.ClientSession
) -> None:
    """The 6th incoming message within a second is a violation: Binance closes with 1008."""
    async with http.ws_connect(fake.url + "/ws/btcusdt@kline_1m") as ws:
        for i in range(6):
            await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": i})
        answers = []
        while (msg := await ws.receive(timeout=WAIT)).type is aiohttp.WSMsgType.TEXT:
            answers.append(json.loads(msg.data))
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
        assert [a["id"] for a in answers] == [0, 1, 2, 3, 4]
    assert fake.violations == 1
    assert fake.closed_connections[0].closed_reason == "rate_limit"
    assert fake.connections == []


async def test_drop_all_cuts_the_socket(fake: FakeBinanceStream, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(fake.url + "/ws/btcusdt@kline_1m") as ws:
        await fake.wait_connections(1)
        assert await fake.drop_all() == 1
        msg = await ws.receive(timeout=WAIT)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert ws.closed
    assert fake.connections == [] and fake.subscriptions == set()
    assert fake.closed_connections[0].closed_reason == "drop"


async def test_server_shutdown_notice(fake: FakeBinanceStream, http: aiohttp.ClientSession) -> None:
    notice = {"e": "serverShutdown", "E": T0}
    async with http.ws_connect(fake.url + "/stream?streams=btcusdt@kline_1m") as combined, \
            http.ws_connect(fake.url + "/ws/btcusdt@kline_1m") as raw:  # fmt: skip
        await fake.wait_connections(2)
        assert await fake.shutdown_notice() == 2
        assert await receive_json(combined) == {"stream": "!serverShutdown", "data": notice}
        assert await receive_json(raw) == notice


async def test_stall_sends_nothing(fake: FakeBinanceStream, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(fake.url + "/ws/btcusdt@kline_1m") as ws:
        await fake.wait_connections(1)
        fake.stall()
        assert await fake.push("btcusdt@kline_1m", DOC_ROW) == 0
        fake.stall(False)
        assert await fake.push("btcusdt@kline_1m", DOC_ROW, closed=True) == 1
        assert (await receive_json(ws))["k"]["x"] is True  # the stalled push never came


async def test_keepalive(http: aiohttp.ClientSession) -> None:
    """A client that answers pings stays; one that does not is closed once the pong is overdue."""
    async with FakeBinanceStream(ping_interval=0.05, pong_timeout=WAIT, max_messages_per_second=100) as fake:
        async with http.ws_connect(fake.url + "/ws") as ws:  # aiohttp answers pings while it receives
            reading = asyncio.create_task(ws.receive())
            (conn,) = await fake.wait_connections(1)
            async with asyncio.timeout(WAIT):
                while conn.pongs_received < 3:
                    await asyncio.sleep(0.01)
            assert conn.open and fake.pong_timeouts == 0
            reading.cancel()
        fake.pong_timeout = 0.1
        async with http.ws_connect(fake.url + "/ws", autoping=False) as ws:
            while (msg := await ws.receive(timeout=WAIT)).type is aiohttp.WSMsgType.PING:
                pass
            assert msg.type is aiohttp.WSMsgType.CLOSE
        assert fake.pong_timeouts == 1
        assert fake.closed_connections[-1].closed_reason == "pong_timeout"

"""Self-test of the fake Bybit v5 spot kline stream: it must frame, answer and disconnect like Bybit's, or the
tests built on it lie."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.bybit_stream import FakeBybitStream
from tests.fakes.stream_testing import WAIT, receive_json

T0 = 1_672_324_988_882
# Bybit's own example (docs/v5/websocket/public/kline.mdx), key order included.
DOC_PUSH = (
    '{"topic":"kline.5.BTCUSDT","data":[{"start":1672324800000,"end":1672325099999,"interval":"5",'
    '"open":"16649.5","close":"16677","high":"16677","low":"16608","volume":"2.081","turnover":"34666.4005",'
    '"confirm":false,"timestamp":1672324988882}],"ts":1672324988882,"type":"snapshot"}'
)
# The same candle as a Binance REST row: open time, open, high, low, close, volume, close time, quote volume,
# trades, taker base, taker quote, ignore.
DOC_ROW = [1672324800000, "16649.5", "16677", "16608", "16677", "2.081", 1672325099999, "34666.4005", 7, "1",
           "16000", "0"]  # fmt: skip


@pytest.fixture
async def fake() -> AsyncIterator[FakeBybitStream]:
    async with FakeBybitStream(now_ms=lambda: T0) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_subscribe_and_push(fake: FakeBybitStream, http: aiohttp.ClientSession) -> None:
    """A subscribe is acknowledged with Bybit's reply; a push reaches its subscribers exactly as Bybit's
    documented frame, and no one else."""
    assert fake.url.endswith("/v5/public/spot")
    async with http.ws_connect(fake.url) as ws, http.ws_connect(fake.url):  # another, never subscribed
        await fake.wait_connections(2)
        await ws.send_json({"req_id": "s1", "op": "subscribe", "args": ["kline.5.BTCUSDT", "kline.1.ETHUSDT"]})
        reply = await receive_json(ws)
        (conn,) = [c for c in fake.connections if c.conn_id == reply["conn_id"]]
        assert reply == {"success": True, "ret_msg": "", "conn_id": conn.conn_id, "req_id": "s1", "op": "subscribe"}
        await fake.wait_subscribed(["kline.5.BTCUSDT", "kline.1.ETHUSDT"])
        assert conn.streams == ["kline.5.BTCUSDT", "kline.1.ETHUSDT"]
        assert conn.subscribed("kline.5.BTCUSDT") and conn.open

        assert await fake.push("kline.5.BTCUSDT", DOC_ROW) == 1
        assert await ws.receive_str(timeout=WAIT) == DOC_PUSH

        await fake.push("kline.1.ETHUSDT", {"start": 60_000, "open": 1, "high": 2.5, "low": "0.5", "close": 2,
                                            "volume": 10, "turnover": "15"}, closed=True)  # fmt: skip
        push = await receive_json(ws)
        assert push["topic"] == "kline.1.ETHUSDT" and push["ts"] == T0 and push["type"] == "snapshot"
        (k,) = push["data"]
        assert (k["start"], k["end"], k["interval"], k["confirm"], k["timestamp"]) == (60_000, 119_999, "1", True, T0)
        assert (k["open"], k["high"], k["low"], k["close"]) == ("1", "2.5", "0.5", "2")

        await ws.send_json({"op": "unsubscribe", "args": ["kline.1.ETHUSDT"]})
        assert await receive_json(ws) == {"success": True, "ret_msg": "", "conn_id": conn.conn_id, "op": "unsubscribe"}
        assert fake.subscriptions == {"kline.5.BTCUSDT"}
        assert await fake.push("kline.1.ETHUSDT", DOC_ROW) == 0
    assert fake.connections_opened == 2
    assert fake.subscribe_messages == 1
    assert fake.messages_sent == 4  # two replies, two pushes


async def test_refused_subscribes(fake: FakeBybitStream, http: aiohttp.ClientSession) -> None:
    """More than 10 args, an unknown topic, a bad interval or a topic already subscribed: success false, and
    nothing of the request is subscribed."""
    async with http.ws_connect(fake.url) as ws:
        eleven = [f"kline.1.S{i}USDT" for i in range(11)]
        await ws.send_json({"req_id": "big", "op": "subscribe", "args": eleven})
        answer = await receive_json(ws)
        assert (answer["success"], answer["ret_msg"], answer["req_id"]) == (False, "args size >10", "big")
        await ws.send_json({"op": "subscribe", "args": eleven[:10]})
        assert (await receive_json(ws))["success"] is True
        assert len(fake.subscriptions) == 10

        await ws.send_json({"op": "subscribe", "args": ["kline.1.XUSDT", "tickers.BTCUSDT"]})
        assert (await receive_json(ws))["ret_msg"] == "error:handler not found,topic:tickers.BTCUSDT"
        await ws.send_json({"op": "subscribe", "args": ["kline.2.BTCUSDT"]})
        assert (await receive_json(ws))["ret_msg"] == "Params Error"
        await ws.send_json({"op": "subscribe", "args": ["kline.1.BTCUSDT", "kline.1.S0USDT"]})
        assert (await receive_json(ws))["ret_msg"] == "error:already subscribed,topic:kline.1.S0USDT"
        assert fake.subscriptions == set(eleven[:10])
    assert fake.subscribe_messages == 5


async def test_ping_is_answered_with_pong(fake: FakeBybitStream, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(fake.url) as ws:
        (conn,) = await fake.wait_connections(1)
        await ws.send_json({"op": "ping", "req_id": "100001"})
        assert await receive_json(ws) == {
            "success": True, "ret_msg": "pong", "conn_id": conn.conn_id, "req_id": "100001", "op": "ping",
        }  # fmt: skip
        assert conn.pings_received == 1 and conn.control_messages == [{"op": "ping", "req_id": "100001"}]
    assert fake.pings_received == 1


async def test_drop_all_cuts_the_socket(fake: FakeBybitStream, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(fake.url) as ws:
        await ws.send_json({"op": "subscribe", "args": ["kline.1.BTCUSDT"]})
        await receive_json(ws)
        assert await fake.drop_all() == 1
        msg = await ws.receive(timeout=WAIT)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert ws.closed
    assert fake.connections == [] and fake.subscriptions == set()
    assert fake.closed_connections[0].closed_reason == "drop"


async def test_stall_sends_nothing(fake: FakeBybitStream, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(fake.url) as ws:
        await ws.send_json({"op": "subscribe", "args": ["kline.5.BTCUSDT"]})
        await receive_json(ws)
        fake.stall()
        assert await fake.push("kline.5.BTCUSDT", DOC_ROW) == 0
        fake.stall(False)
        assert await fake.push("kline.5.BTCUSDT", DOC_ROW, closed=True) == 1
        assert (await receive_json(ws))["data"][0]["confirm"] is True  # the stalled push never came


async def test_idle_timeout_closes_a_silent_client(http: aiohttp.ClientSession) -> None:
    async with FakeBybitStream(idle_timeout=0.1) as fake, http.ws_connect(fake.url) as ws:
        msg = await ws.receive(timeout=WAIT)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert fake.idle_timeouts == 1
        assert fake.connections == []
        assert fake.closed_connections[0].closed_reason == "idle_timeout"


async def test_optional_message_limit(http: aiohttp.ClientSession) -> None:
    """With a limit set, the message over it within a second closes the connection (1008)."""
    async with FakeBybitStream(max_messages_per_second=3) as fake, http.ws_connect(fake.url) as ws:
        for i in range(4):
            await ws.send_json({"op": "ping", "req_id": str(i)})
        answers = []
        while (msg := await ws.receive(timeout=WAIT)).type is aiohttp.WSMsgType.TEXT:
            answers.append(json.loads(msg.data))
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
        assert [a["req_id"] for a in answers] == ["0", "1", "2"]
        assert fake.violations == 1
        assert fake.closed_connections[0].closed_reason == "rate_limit"

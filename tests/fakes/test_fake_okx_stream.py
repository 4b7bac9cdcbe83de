"""Self-test of the fake OKX candle channels: it must frame, answer and disconnect like OKX's
``/ws/v5/business``, or the tests built on it lie."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.okx_stream import MIGRATED_MSG, FakeOkxStream
from tests.fakes.stream_testing import WAIT, receive_json

T0 = 1_597_026_383_085
# OKX's documented push, with the confirm field of today's 9-field rows.
DOC_PUSH = (
    '{"arg":{"channel":"candle1m","instId":"BTC-USDT"},"data":[["1597026383085","8533.02","8553.74","8527.17",'
    '"8548.26","45247","529.5858061","529.5858061","0"]]}'
)
# The same candle as a Binance REST row: open time, open, high, low, close, volume, close time, quote volume,
# trades, taker base, taker quote, ignore.
BINANCE_ROW = [1597026383085, "8533.02", "8553.74", "8527.17", "8548.26", "45247", 1597026443084, "529.5858061",
               10, "0", "0", "0"]  # fmt: skip
BTC_1M = {"channel": "candle1m", "instId": "BTC-USDT"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOkxStream]:
    async with FakeOkxStream(now_ms=lambda: T0, max_connects_per_second=None) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_subscribe_answers_each_arg(fake: FakeOkxStream, http: aiohttp.ClientSession) -> None:
    """One answer per arg, in order, the id first and the connId last; a wrong channel gets 60018 and the
    others still take effect; unsubscribe answers likewise."""
    async with http.ws_connect(fake.url) as ws:
        eth = {"channel": "candle1Dutc", "instId": "ETH-USDT-SWAP"}
        bad = {"channel": "candle7m", "instId": "BTC-USDT"}
        await ws.send_json({"id": "1512", "op": "subscribe", "args": [BTC_1M, bad, eth]})
        (conn,) = fake.connections
        cid = conn.conn_id
        first = await ws.receive_str(timeout=WAIT)
        assert first == '{"id":"1512","event":"subscribe","arg":' + json.dumps(BTC_1M, separators=(",", ":")) + \
            f',"connId":"{cid}"}}'  # fmt: skip
        assert await receive_json(ws) == {
            "id": "1512", "event": "error", "code": "60018", "connId": cid,
            "msg": "Wrong URL or channel:candle7m,instId:BTC-USDT doesn't exist. Please use the correct URL, "
                   "channel and parameters referring to API document.",
        }  # fmt: skip
        assert await receive_json(ws) == {"id": "1512", "event": "subscribe", "arg": eth, "connId": cid}
        assert conn.streams == ["candle1m:BTC-USDT", "candle1Dutc:ETH-USDT-SWAP"]
        await fake.wait_subscribed(["candle1m:BTC-USDT", "candle1Dutc:ETH-USDT-SWAP"])

        await ws.send_json({"op": "unsubscribe", "args": [eth]})
        assert await receive_json(ws) == {"event": "unsubscribe", "arg": eth, "connId": cid}
        assert fake.subscriptions == {"candle1m:BTC-USDT"}
        await ws.send_json({"op": "subscrib", "args": [BTC_1M]})
        assert await receive_json(ws) == {"event": "error", "code": "60019", "msg": "Invalid op: subscrib",
                                          "connId": cid}  # fmt: skip
        await ws.send_str("{not json")
        assert (await receive_json(ws))["code"] == "60012"
        assert [m["op"] for m in conn.control_messages[:3]] == ["subscribe", "unsubscribe", "subscrib"]
    assert fake.subscribe_messages == 1


async def test_push_reaches_the_subscriber_in_okx_shape(fake: FakeOkxStream, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(fake.url) as ws, http.ws_connect(fake.url):
        await ws.send_json({"op": "subscribe", "args": [BTC_1M]})
        assert (await receive_json(ws))["event"] == "subscribe"
        await fake.wait_connections(2)
        assert await fake.push("candle1m:BTC-USDT", BINANCE_ROW) == 1  # not to the connection without it
        assert await ws.receive_str(timeout=WAIT) == DOC_PUSH

        okx_fields = ["1597026443085", 1, 2, 0.5, "1.5", 10, "15", "15"]
        assert await fake.push("candle1m:BTC-USDT", okx_fields, closed=True) == 1
        assert await receive_json(ws) == {
            "arg": BTC_1M, "data": [["1597026443085", "1", "2", "0.5", "1.5", "10", "15", "15", "1"]],
        }  # fmt: skip
        assert await fake.push("candle5m:BTC-USDT", BINANCE_ROW) == 0
    assert fake.messages_sent == 3  # the subscribe answer and two pushes


async def test_candles_on_public_are_refused(fake: FakeOkxStream, http: aiohttp.ClientSession) -> None:
    """The candle channels moved to /business: /public answers 64001 and subscribes nothing."""
    async with http.ws_connect(fake.public_url) as ws:
        await ws.send_json({"op": "subscribe", "args": [BTC_1M]})
        answer = await receive_json(ws)
        assert answer == {"event": "error", "code": "64001", "msg": MIGRATED_MSG, "connId": answer["connId"]}
        assert MIGRATED_MSG.startswith("This channel has been migrated to the '/business' URL.")
        assert fake.subscriptions == set()
        assert fake.connections[0].endpoint == "public"


async def test_text_ping_is_answered_pong(fake: FakeOkxStream, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(fake.url) as ws:
        await ws.send_str("ping")
        assert await ws.receive_str(timeout=WAIT) == "pong"
        (conn,) = fake.connections
        assert conn.pings_received == 1 and conn.control_messages == []
        fake.stall()
        await ws.send_str("ping")  # unanswered while stalled
        await fake._wait(lambda: conn.pings_received == 2, WAIT, lambda: "second ping never arrived")
        fake.stall(False)
        await ws.send_str("ping")
        assert await ws.receive_str(timeout=WAIT) == "pong"
    assert fake.pings_received == 3 and fake.messages_sent == 2


async def test_drop_all_cuts_the_socket(fake: FakeOkxStream, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(fake.url) as ws:
        await ws.send_json({"op": "subscribe", "args": [BTC_1M]})
        await fake.wait_subscribed("candle1m:BTC-USDT")
        assert await fake.drop_all() == 1
        while (msg := await ws.receive(timeout=WAIT)).type is aiohttp.WSMsgType.TEXT:
            pass  # the subscribe answer, if it was not read yet
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert ws.closed
    assert fake.connections == [] and fake.subscriptions == set()
    assert fake.closed_connections[0].closed_reason == "drop"


async def test_notice(fake: FakeOkxStream, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(fake.url) as ws:
        (conn,) = await fake.wait_connections(1)
        assert await fake.notice() == 1
        assert await receive_json(ws) == {
            "event": "notice", "code": "64008",
            "msg": "The connection will soon be closed for a service upgrade. Please reconnect.",
            "connId": conn.conn_id,
        }  # fmt: skip
        assert conn.open


async def test_idle_timeout_closes_a_silent_client(http: aiohttp.ClientSession) -> None:
    async with FakeOkxStream(idle_timeout=0.2) as fake, http.ws_connect(fake.url) as ws:
        msg = await ws.receive(timeout=WAIT)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4004 and msg.extra == "No data received in 30s"
        assert fake.idle_timeouts == 1
        assert fake.closed_connections[0].closed_reason == "idle"


async def test_limits(http: aiohttp.ClientSession) -> None:
    """Subscribe requests over the hourly limit get 60014 and are ignored; handshakes over the per-second
    limit get 429."""
    async with FakeOkxStream(max_requests_per_hour=2, max_connects_per_second=1) as fake:
        async with http.ws_connect(fake.url) as ws:
            for _ in range(2):
                await ws.send_json({"op": "subscribe", "args": [BTC_1M]})
                assert (await receive_json(ws))["event"] == "subscribe"
            await ws.send_json({"op": "unsubscribe", "args": [BTC_1M], "id": "3"})
            answer = await receive_json(ws)
            assert (answer["id"], answer["event"], answer["code"]) == ("3", "error", "60014")
            assert fake.subscriptions == {"candle1m:BTC-USDT"}
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(fake.url)
            assert refused.value.status == 429
        assert fake.violations == 2
        assert [r.status for r in fake.requests] == [101, 429]

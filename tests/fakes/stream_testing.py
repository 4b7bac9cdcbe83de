"""What the self-tests of the kline WebSocket fakes share: the client side's wait and its JSON reader."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

__all__ = ["WAIT", "receive_json"]

WAIT = 5.0  # generous: the suite runs under load


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    """The next message, which must be text, parsed as JSON."""
    msg = await ws.receive(timeout=WAIT)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)

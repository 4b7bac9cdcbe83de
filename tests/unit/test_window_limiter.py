"""The sliding-window limiter (Bybit, OKX, Coinbase, Kraken): a request counts until one window
after its answer, because the venue counts it on arrival, somewhere between send and answer."""

from __future__ import annotations

import asyncio

from service.exchanges.windows import WindowLimiter


class FakeTime:
    """A clock that moves only when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def test_a_slot_frees_one_window_after_the_answer_not_after_the_send() -> None:
    """Two requests a second, each answered 0.3 s after it was sent: the third goes out 1.3 s after
    the first two were sent (one window after their answers), not at 1.0 s, when a venue that
    counted them on arrival (say at 0.15 s) would still hold them in its window."""
    time = FakeTime()
    limiter = WindowLimiter(
        limit=2, window_seconds=1.0, margin=0.0, max_concurrency=10, clock=time, sleep=time.sleep
    )
    sent: list[float] = []

    async def request() -> None:
        async with limiter.slot(1):
            sent.append(time.now)
            time.now += 0.3  # the answer takes 0.3 s (this test's only request in flight at a time)

    await request()
    await request()
    await request()
    assert sent[0] == 1000.0
    assert sent[1] == 1000.3
    # The first counts until 1000.3 + 1 s: the third waits for that, not for 1000.0 + 1 s.
    assert sent[2] >= 1001.3


async def test_the_budget_keeps_the_margin_and_a_pause_holds_every_request() -> None:
    """At 600 per 5 s with a 3% margin, 582 go out in the first window and no more; an order to
    wait holds the next request until it ends."""
    time = FakeTime()
    limiter = WindowLimiter(
        limit=600, window_seconds=5.0, margin=0.03, max_concurrency=1000, clock=time, sleep=time.sleep
    )
    for _ in range(582):
        async with limiter.slot(1):
            pass
    assert limiter.state.used_in_window == 582
    start = time.now
    async with limiter.slot(1):
        assert time.now >= start + 5.0
    limiter.pause(600.0, "banned")
    assert limiter.state.paused_reason == "banned"
    before = time.now
    async with limiter.slot(1):
        assert time.now >= before + 600.0

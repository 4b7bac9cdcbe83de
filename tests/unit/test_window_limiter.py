"""The sliding-window limiter (Bybit, OKX, Coinbase, Kraken): a request counts until one window
after its answer, because the venue counts it on arrival, somewhere between send and answer."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import DatabaseUnavailableError
from service.exchanges import windows as windows_module
from service.exchanges.windows import WindowLimiter
from service.records import WindowGrant
from tests.collection.test_limit_cut import LogRecorder


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


class DownWindow:
    """A shared window whose database does not answer until `down` is cleared; then it grants all."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    async def reserve(self, *, cost: int, size: int, now: float, counted_until: float) -> WindowGrant:
        self.calls += 1
        if self.down:
            raise DatabaseUnavailableError("the database connection failed (ConnectionRefusedError)")
        return WindowGrant(granted=True, used=1, retry_at=None, paused_until=None, paused_reason=None)

    async def extend(self, *, counted_until: float, until: float) -> None:
        """Nothing to move: this window counts nothing."""

    async def publish_pause(self, *, until: float, reason: str) -> None:
        """Never reached in these tests."""


async def test_a_shared_window_that_fails_leaves_the_process_counting_alone_then_sharing_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the database down the process paces itself at its own limit (one failed round trip, then
    none for 5 s), and shares again once the database answers."""
    time = FakeTime()
    shared = DownWindow()
    limiter = WindowLimiter(
        limit=2, window_seconds=1.0, margin=0.0, max_concurrency=10, clock=time, sleep=time.sleep, shared=shared
    )
    logs = LogRecorder()
    monkeypatch.setattr(windows_module, "log", logs)
    sent = []
    for _ in range(6):
        async with limiter.slot(1):
            sent.append(time.now)
    assert shared.calls == 1
    assert sent == [1000.0, 1000.0, 1001.001, 1001.001, 1002.002, 1002.002]  # two per window, alone
    shared.down = False
    time.now += 5.0
    async with limiter.slot(1):
        pass
    assert shared.calls == 2
    assert [event for _, event, _ in logs.events] == ["request_window_unshared", "request_window_shared_again"]

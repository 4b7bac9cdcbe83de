"""What the fakes of the venues share (Binance, Bybit, OKX, Coinbase, Kraken).

`VenueServer` is an aiohttp server on 127.0.0.1 with a controllable clock: its lifecycle (start, stop,
``async with``, url), the traffic counters, the request records, ``GET /__stats``, the scripted faults'
bookkeeping and the answer-less ones (a dropped connection, a hang). `SlidingWindow` counts requests
in a sliding window. `base_parser` and `serve_until_signalled` are the process mode the benchmarks use.
Each fake keeps its venue's routes, bodies, limits and records in its own module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from aiohttp import web

__all__ = [
    "SlidingWindow", "VenueServer", "base_parser", "cpu_seconds", "dumps", "serve_until_signalled", "take_fault",
    "wall_ms",
]  # fmt: skip

R = TypeVar("R")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def cpu_seconds() -> float:
    """CPU time of this process, so the benchmark can subtract what the fake cost."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def dumps(obj: object) -> bytes:
    """Compact JSON, as the venues send it."""
    return json.dumps(obj, separators=(",", ":")).encode()


class _Fault(Protocol):
    remaining: int
    every: int
    seen: int
    applied: int

    def matches(self, key: str, params: Mapping[str, str]) -> bool: ...


F = TypeVar("F", bound=_Fault)


def take_fault(faults: Sequence[F], key: str, params: Mapping[str, str]) -> F | None:
    """The first fault matching the request (by path or route, and query), if this is its turn: every
    `every`-th matching request takes one of its `remaining`; the others pass."""
    for fault in faults:
        if fault.matches(key, params):
            fault.seen += 1
            if fault.seen % fault.every:
                return None
            fault.remaining -= 1
            fault.applied += 1
            return fault
    return None


class SlidingWindow:
    """The times (ms) of the requests a limit let through within the last window, oldest first."""

    def __init__(self) -> None:
        self.times: deque[int] = deque()

    def __len__(self) -> int:
        return len(self.times)

    def clear(self) -> None:
        self.times.clear()

    def admit(self, now: int, limit: float, window_ms: int) -> bool:
        """Forget the requests a window old; count this one unless `limit` are still in the window."""
        times = self.times
        while times and times[0] <= now - window_ms:
            times.popleft()
        if len(times) >= limit:
            return False
        times.append(now)
        return True


class VenueServer(Generic[R]):
    """The server part of a fake venue; `R` is its request record. A subclass adds its routes in
    `_add_routes`, counts and answers in its own handlers (within `_counted`), and adds its own
    figures to `stats` in `_venue_stats`."""

    def __init__(
        self,
        *,
        latency_ms: float,
        fault_timeout_s: float,
        now_ms: Callable[[], int] | None,
        host: str,
        port: int,
        record_requests: bool,
    ) -> None:
        self.latency_ms = latency_ms
        self.fault_timeout_s = fault_timeout_s
        self.now_ms: Callable[[], int] = now_ms or wall_ms
        self.host = host
        self.port = port
        self.record_requests = record_requests
        self.requests: list[R] = []
        self.status_counts: dict[int, int] = {}
        self.request_count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None
        self._hanging: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/__stats", self._stats)
        self._add_routes(app)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        for task in list(self._hanging):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- clock ----------------------------------------------------------------------------------

    def set_time(self, ms: int) -> None:
        """Freeze the venue's clock at ``ms``."""
        self.now_ms = lambda: ms

    def advance(self, ms: int) -> None:
        """Move the venue's clock forward by ``ms`` (and freeze it there)."""
        self.set_time(self.now_ms() + ms)

    def use_wall_clock(self) -> None:
        self.now_ms = wall_ms

    # -- traffic --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What ``GET /__stats`` returns."""
        return {
            "cpu_seconds": cpu_seconds(),
            "requests": self.request_count,
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
            **self._venue_stats(),
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
        }

    def _venue_stats(self) -> dict[str, Any]:
        return {}

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(body=dumps(self.stats()), content_type="application/json")

    async def _counted(self, answer: Callable[[], Any]) -> web.StreamResponse:
        """Serve one request: counted in flight and in total, after the latency; `answer` is awaited."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency_ms > 0:
                await asyncio.sleep(self.latency_ms / 1000)
            self.request_count += 1
            response: web.StreamResponse = await answer()
            return response
        finally:
            self.in_flight -= 1

    def _note(self, status: int, record: Callable[[], R]) -> None:
        """Count an answer's status (0: none); keep its record unless records are off."""
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        if self.record_requests:
            self.requests.append(record())

    async def _no_answer(self, request: web.Request, kind: str) -> web.StreamResponse:
        """A "timeout" hangs (until `fault_timeout_s` or `stop`), then, like a "drop", the connection
        closes without an HTTP answer."""
        if kind == "timeout":
            task = asyncio.current_task()
            if task is not None:
                self._hanging.add(task)
            try:
                await asyncio.sleep(self.fault_timeout_s)
            finally:
                if task is not None:
                    self._hanging.discard(task)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)  # never reaches the closed transport


# ---------------------------------------------------------------------------------------------
# Own process, for benchmarks
# ---------------------------------------------------------------------------------------------


def base_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The arguments every fake takes first: --host, --port, --latency-ms."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    return parser


async def serve_until_signalled(fake: VenueServer[Any]) -> None:
    """Serve until SIGTERM/SIGINT; print the URL first and CPU seconds last."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await fake.start()
    print(fake.url, flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()
        print(json.dumps({"fake_cpu_seconds": cpu_seconds()}), flush=True)

"""Processes on one IP share the exchange's weight budget through PostgreSQL (WEIGHT_BUDGET_SCOPE).

Each "process" here holds what a service process holds of its own (asyncpg pool, aiohttp session,
limiter, Binance client, collector), three of them in this one test process, against one fake
Binance that counts every client as one IP and answers 429 past its limit. Time runs faster for the
fake and the processes alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from service.collection.collector import CollectionResult, Collector, Pair
from service.cpu_turns import CpuTurns
from service.db.pool import create_pool
from service.exchanges import limiter as limiter_module
from service.exchanges.binance import BinanceClient
from service.exchanges.clients import make_client
from service.exchanges.limiter import WeightLimiter
from service.exchanges.venues import VENUES
from service.process.weight_budget import shared_budgets
from service.settings import Settings, SettingsError
from tests.collection.test_collect import MINUTE, T0
from tests.collection.test_limit_cut import LogRecorder
from tests.conftest import Clock, serve_app
from tests.fakes.binance import FakeBinance, FaultKind
from tests.settings import settings_of

KLINES = "/api/v3/klines"
#: The symbols each process collects: its own, as work spread over processes would be.
SYMBOLS = (["AAAUSDT", "ABBUSDT"], ["BAAUSDT", "BBBUSDT"], ["CAAUSDT", "CBBUSDT"])

Scope = Literal["shared", "per_process"]


class Sink:
    """Where a collection reports progress; keeps what it was told about waits."""

    def __init__(self) -> None:
        self.waits: list[tuple[str, float]] = []

    async def report(self, progress: int, message: str, *, eta_seconds: float | None = None) -> None:
        """Progress is not what these tests look at."""

    def waiting(self, reason: str, until: float) -> None:
        self.waits.append((reason, until))


@dataclass
class Process:
    limiter: WeightLimiter
    client: BinanceClient
    collector: Collector
    sink: Sink = field(default_factory=Sink)

    async def collect(self, symbols: list[str]) -> CollectionResult:
        return await self.collector.collect([Pair(s, "1m") for s in symbols], self.sink)


@asynccontextmanager
async def process(
    dsn: str, fake: FakeBinance, clock: Clock, *, scope: Scope, pages: int, budget_dsn: str | None = None
) -> AsyncIterator[Process]:
    """One service process's own pool, session, limiter, client and collector; `pages` pages per series.

    `budget_dsn`: the shared budget reaches the database that way (the collector keeps `dsn`).
    """
    settings = settings_of(
        database_url=dsn, binance_api_url=fake.url, weight_budget_scope=scope, binance_max_concurrency=4,
        binance_timeout=5.0, binance_retry_attempts=3, binance_retry_wait=0.01,
    )
    pool = await create_pool(dsn, max_size=4, connect_now=False)
    budget_pool = pool if budget_dsn is None else await create_pool(budget_dsn, max_size=2, connect_now=False)
    try:
        async with aiohttp.ClientSession() as session:
            cpu = CpuTurns()
            client = make_client(
                VENUES["binance"], session, settings.venues["binance"], cpu=cpu,
                shared=shared_budgets(settings, budget_pool), clock=clock, sleep=clock.sleep,
            )
            assert isinstance(client, BinanceClient)
            limiter = client.limiter
            collector = Collector(
                pool, client, history_candles=pages * client.max_page, pages_ahead=2, max_connections=2, cpu=cpu,
                db_retry_seconds=30.0, clock=clock,
            )
            try:
                yield Process(limiter, client, collector)
            finally:
                await client.aclose()
    finally:
        await pool.close()
        if budget_pool is not pool:
            await budget_pool.close()


def list_symbols(fake: FakeBinance) -> None:
    """Every symbol of SYMBOLS with a few recent candles (the pages before them are empty: same weight)."""
    for symbols in SYMBOLS:
        for symbol in symbols:
            fake.generate_klines(symbol, "1m", T0 - 10 * MINUTE, 5)


async def collect_at_once(
    dsn: str, fake: FakeBinance, clock: Clock, *, scope: Scope, pages: int
) -> list[CollectionResult]:
    """Three processes start together: each learns the limit (exchangeInfo), then collects its symbols."""
    async with AsyncExitStack() as stack:
        procs = [
            await stack.enter_async_context(process(dsn, fake, clock, scope=scope, pages=pages)) for _ in SYMBOLS
        ]
        await asyncio.gather(*(p.client.fetch_symbols() for p in procs))
        return await asyncio.gather(*(p.collect(symbols) for p, symbols in zip(procs, SYMBOLS, strict=True)))


async def test_three_processes_on_one_budget_never_meet_a_429(db_dsn: str) -> None:
    """Three processes collecting at once against an exchange allowing 300 weight a minute: no 429,
    no minute over 300, every series complete, and full minutes used (sharing wastes little)."""
    clock = Clock(start=T0 / 1000, speed=60)
    async with FakeBinance(weight_limit=300, now_ms=clock.ms) as fake:
        list_symbols(fake)
        results = await collect_at_once(db_dsn, fake, clock, scope="shared", pages=80)

    assert [r.pairs_failed for r in results] == [0, 0, 0], results
    assert 429 not in fake.status_counts and 418 not in fake.status_counts
    windows = fake.weight_by_window
    assert len(windows) >= 3  # ~1,000 weight: the budget held them back into later minutes
    assert max(windows.values()) <= 300
    assert max(windows.values()) >= 0.8 * 300
    assert sum(windows.values()) == 3 * 20 + 6 * 80 * 2  # exchangeInfo, then every page once


async def test_three_processes_each_on_its_own_budget_do_meet_429s(db_dsn: str) -> None:
    """The same three processes with WEIGHT_BUDGET_SCOPE=per_process each spend the whole budget, and
    together draw 429s (what the shared budget prevents)."""
    clock = Clock(start=T0 / 1000, speed=60)
    async with FakeBinance(weight_limit=300, now_ms=clock.ms) as fake:
        list_symbols(fake)
        await collect_at_once(db_dsn, fake, clock, scope="per_process", pages=80)
    assert fake.status_counts.get(429, 0) > 0


@pytest.mark.parametrize(("status", "reason"), [("429", "rate_limited"), ("418", "banned")])
async def test_a_429_or_418_met_by_one_process_pauses_them_all(db_dsn: str, status: FaultKind, reason: str) -> None:
    """One 429 (or 418) answered to the first process, with Retry-After 30 s: the other two send
    nothing from a moment later until the 30 s are over, tell their tasks why they wait, then go on
    and complete."""
    clock = Clock(start=T0 / 1000, speed=20)
    # A high limit: only the pause, never the budget, can hold the processes back here.
    async with FakeBinance(weight_limit=None, advertised_weight_limit=60_000, latency_ms=20, now_ms=clock.ms) as fake:
        list_symbols(fake)
        fault = fake.add_fault(status, match={"symbol": SYMBOLS[0][0]}, every=10, retry_after=30)
        async with AsyncExitStack() as stack:
            procs = [
                await stack.enter_async_context(process(db_dsn, fake, clock, scope="shared", pages=250))
                for _ in SYMBOLS
            ]
            await asyncio.gather(*(p.client.fetch_symbols() for p in procs))
            results = await asyncio.gather(*(p.collect(s) for p, s in zip(procs, SYMBOLS, strict=True)))

    assert fault.applied == 1
    assert [r.pairs_failed for r in results] == [0, 0, 0], results
    [met] = [r for r in fake.requests if r.fault == status]
    others = {s for symbols in SYMBOLS[1:] for s in symbols}
    times = [r.time_ms for r in fake.requests if r.path == KLINES and r.params["symbol"] in others]
    assert any(t < met.time_ms for t in times)  # they were collecting when it happened
    # A moment for the news to spread (one round trip, and requests already in flight), then silence.
    assert [t for t in times if met.time_ms + 5_000 <= t < met.time_ms + 30_000] == []
    assert any(t >= met.time_ms + 30_000 for t in times)
    for proc in procs[1:]:
        assert reason in {why for why, _ in proc.sink.waits}


class DatabaseLink:
    """A TCP proxy in front of the test PostgreSQL that fails the way a database host does: `cut()`
    closes live connections and drops new ones (the host went away), `stall()` lets nothing through
    either way and says nothing (a network partition); `restore()` ends either."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        socket_dir = query.pop("host", [None])[0]
        self._unix_path = None if socket_dir is None else f"{socket_dir}/.s.PGSQL.{parts.port or 5432}"
        self._target = (parts.hostname or "localhost", parts.port or 5432)
        self._parts = parts._replace(query=urlencode(query, doseq=True))
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._is_cut = False

    @property
    def dsn(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        userinfo = self._parts.netloc.rpartition("@")[0]
        return urlunsplit(self._parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}"))

    async def __aenter__(self) -> DatabaseLink:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        self._flowing.set()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        self._is_cut = True
        for writer in self._links:
            writer.close()

    def stall(self) -> None:
        self._flowing.clear()

    def restore(self) -> None:
        self._is_cut = False
        self._flowing.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._is_cut:
            writer.close()
            await writer.wait_closed()
            return
        if self._unix_path is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(self._unix_path)
        else:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._links.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            self._links.discard(sink)
            sink.close()
            with contextlib.suppress(OSError):
                await sink.wait_closed()


async def total_reserved(db: asyncpg.Connection[Any]) -> int:
    total: int = await db.fetchval("SELECT coalesce(sum(used), 0) FROM weight_budget_windows")
    return total


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("fault", ["cut", "stall"])
async def test_a_budget_database_gone_mid_collection_costs_no_series(
    db_dsn: str, db: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """The shared budget's database goes away (refusing, or silent) while a process collects:
    collection goes on on the process's own budget (with one warning, no 429), and uses the shared
    budget again once the database is back."""
    logs = LogRecorder()
    monkeypatch.setattr(limiter_module, "log", logs)
    clock = Clock(start=T0 / 1000, speed=60)
    async with (
        FakeBinance(weight_limit=300, now_ms=clock.ms) as fake,
        DatabaseLink(db_dsn) as link,
        process(db_dsn, fake, clock, scope="shared", pages=150, budget_dsn=link.dsn) as proc,
    ):
        list_symbols(fake)
        await proc.client.fetch_symbols()
        collecting = asyncio.create_task(proc.collect(SYMBOLS[0]))
        await wait_until(lambda: fake.request_count >= 30)
        if fault == "cut":
            link.cut()
        else:
            link.stall()
        cut_at = fake.request_count
        await wait_until(lambda: fake.request_count >= cut_at + 60)
        link.restore()
        reserved_before = await total_reserved(db)
        result = await collecting
        reserved_after = await total_reserved(db)

    assert result.pairs_failed == 0, result
    assert 429 not in fake.status_counts
    assert max(fake.weight_by_window.values()) <= 300
    assert [level for level, _ in logs.named("weight_budget_unshared")] == ["warning"]
    assert logs.named("weight_budget_shared_again")
    assert reserved_after > reserved_before  # the shared budget was used again once the link was back


def test_the_scope_is_shared_unless_set_and_a_bad_one_is_refused() -> None:
    """WEIGHT_BUDGET_SCOPE defaults to shared, takes per_process, and names itself when wrong."""
    assert Settings.from_env({}).weight_budget_scope == "shared"
    assert Settings.from_env({"WEIGHT_BUDGET_SCOPE": "per_process"}).weight_budget_scope == "per_process"
    with pytest.raises(SettingsError, match="WEIGHT_BUDGET_SCOPE"):
        Settings.from_env({"WEIGHT_BUDGET_SCOPE": "per_ip"})


async def test_a_huge_override_then_a_learnt_limit_leaves_the_shared_window_usable(
    make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """With BINANCE_WEIGHT_LIMIT far above the exchange's (as the benchmark sets it), what was reserved
    before exchangeInfo told the real limit never fills the shared minute: the backfill completes and
    no window counts more than the exchange's limit."""
    async with FakeBinance(weight_limit=None) as fake:
        now = int(Clock().ms())
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        fake.generate_klines("BTCUSDT", "1m", now - 10_000 * MINUTE, 10_060)
        settings = make_settings(
            binance_api_url=fake.url, default_history_candles=10_000, binance_weight_limit=1_000_000_000,
        )
        async with serve_app(settings) as api:
            await api.wait_idle()
            task = await api.wait(await api.start(["BTCUSDT"], ["1m"]), timeout=30)
    assert task["status"] == "completed", task
    assert await db.fetchval("SELECT max(used) FROM weight_budget_windows") <= 6000  # the limit exchangeInfo tells

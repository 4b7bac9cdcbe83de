"""Live collection: a venue's kline streams into klines, gap-free across reconnects.

`LiveVenue` keeps the venue's live series subscribed over as few connections as its limits allow
(`Shard`: one connection, up to `max_streams_per_connection` streams, subscribed after connecting
at the venue's control-message pace). What the streams say is written so:

- a candle the venue marks closed is written at once with its ledger range, the closed candles of
  every series that arrived together in one transaction (`store_pages`, the page path's own);
- the open candle of each series is kept in memory and flushed about once a second, every series in
  one statement, never over a candle already stored closed;
- after every (re)connect the shard's series are collected over REST from where their stored
  candles end (the collector's own resume), which fills whatever the stream missed while it was
  away; closed candles the stream delivered meanwhile are written again after it, so the final
  values win over an open one the REST answer may have carried. Until that heal is done a series
  is not reported fresh.

A shard reconnects on any drop (network, the venue's ping timeout, a stalled stream, the venue's
`serverShutdown`), with a growing pause, and before the venue's own cut (Binance 24 h).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from service.collection.collector import Collector, Pair
from service.collection.coverage import VERIFIED
from service.collection.validation import check_klines
from service.db import klines as klines_db
from service.db import live as live_db
from service.db.pool import Pool, connection
from service.errors import DatabaseUnavailableError, RowRefusedError
from service.exchanges.base import CLOCK_SKEW_ALLOWANCE_MS, ExchangeClient
from service.exchanges.grid import Grid
from service.exchanges.streams import KlineStream, StreamCandle
from service.logging import get_logger
from service.metrics import Metrics
from service.records import Kline, KlinePage, LedgerRange, LiveConnectionState, LiveSeriesState

__all__ = ["LiveVenue", "SeriesLive", "ShardState"]

log = get_logger(__name__)

#: A stream silent this long (no candle, no reply; Binance pushes every 2 s) is stalled: reconnect.
RECEIVE_TIMEOUT = 30.0
#: Open candles are flushed this often (seconds), all series in one statement.
OPEN_FLUSH_SECONDS = 1.0
#: A candle whose close has not come this long after its close time (our clock) is read over REST:
#: the venue sends an illiquid symbol's close with its next trade, minutes later at times.
CLOSE_GRACE_SECONDS = 3.0
#: A replacement connection takes over once every stream has spoken on it, or after this long
#: (counted from its last subscribe); streams that had not spoken by then are healed.
HANDOVER_SECONDS = 5.0
#: A heal that failed (the venue or the database away) is tried again after this long.
HEAL_RETRY_SECONDS = 5.0
#: A connection that lasted this long resets the reconnect pause; a shorter one doubles it.
STABLE_CONNECTION_SECONDS = 60.0
#: Pause before reconnecting: the first, and the longest it grows to (doubling).
RECONNECT_FIRST = 0.5
RECONNECT_MAX = 30.0


@dataclass
class SeriesLive:
    """What /api/v1/live shows of one streamed series."""

    symbol: str
    timeframe: str
    stream: str
    fresh: bool = False
    """Healed since the last (re)connect: every candle up to the stream's is stored."""
    last_closed_open_ms: int | None = None
    """Open time of the newest candle the stream closed."""
    last_closed_at: float | None = None
    """When (our clock) that closed candle was stored."""
    open_seen_ms: int | None = None
    """Open time of the newest candle the stream showed open and has not closed yet."""
    closing: bool = False
    """A REST read of its late close is under way."""
    refused: str | None = None
    """Why the venue refused to subscribe its stream (it is never fresh then); None: subscribed."""
    healing: bool = False
    """A heal is under way: what the stream says of it waits until it is done, so that the heal
    starts where the stored candles really end."""


@dataclass
class ShardState:
    """What /api/v1/live shows of one connection."""

    streams: set[str] = field(default_factory=set)
    connected_since: float | None = None
    reconnects: int = 0
    messages: int = 0
    last_message_at: float | None = None
    recent: deque[float] = field(default_factory=deque)
    """Arrival times of the last second's messages (for messages per second)."""

    def arrived(self, now: float) -> None:
        self.messages += 1
        self.last_message_at = now
        recent = self.recent
        recent.append(now)
        while recent[0] <= now - 1.0:  # a second's worth, never more
            recent.popleft()

    def messages_per_second(self, now: float) -> float:
        while self.recent and self.recent[0] <= now - 1.0:
            self.recent.popleft()
        return float(len(self.recent))


class _Sink:
    """The heal's progress goes to the log only (a live series has no task to report to)."""

    def __init__(self, venue: str) -> None:
        self._venue = venue

    async def report(self, progress: int, message: str, *, eta_seconds: float | None = None) -> None:
        """Progress of a heal is not shown anywhere but the log of its end."""

    def waiting(self, reason: str, until: float) -> None:
        log.info("live_heal_waiting", exchange=self._venue, reason=reason, until=until)


class LiveVenue:
    """One venue's live series: shards of stream connections, the writers, and their state."""

    def __init__(
        self,
        venue: str,
        stream: KlineStream | None,
        client: ExchangeClient,
        session: aiohttp.ClientSession,
        pool: Pool,
        collector: Collector,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.venue = venue
        self.metrics = metrics
        self._stream = stream
        self._client = client
        self._session = session
        self._pool = pool
        self._collector = collector
        self._clock = clock
        self.series: dict[str, SeriesLive] = {}
        """By stream name."""
        self.shards: list[Shard | RestCloser] = []
        """The stream connections; for a venue without a stream, its one REST closer."""
        self._ids: dict[str, int] = {}
        self._closed: dict[str, list[Kline]] = {}
        self._open: dict[str, Kline] = {}
        self._closed_ready = asyncio.Event()
        self._message_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the set of live series ---------------------------------------------------------------

    async def sync(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Stream exactly these (symbol, timeframe) series from now on: new ones are subscribed
        (after their series rows exist), dropped ones unsubscribed."""
        stream = self._stream
        wanted = {
            (f"{symbol}@{tf}" if stream is None else stream.stream_name(symbol, tf)): (symbol, tf)
            for symbol, tf in pairs
        }
        new = [name for name in wanted if name not in self.series]
        if new:
            async with connection(self._pool) as conn:
                start = await klines_db.run_start(conn, self.venue, [wanted[name] for name in new])
            for name in new:
                symbol, tf = wanted[name]
                self._ids[name] = start.series[symbol, tf].series_id
                self.series[name] = SeriesLive(symbol, tf, name)
        for name in [n for n in self.series if n not in wanted]:
            del self.series[name]
            self._open.pop(name, None)
        if stream is None:  # a venue without a stream: its series are closed over REST
            if not self.shards:
                closer = RestCloser(self)
                self.shards.append(closer)
                self.spawn(closer.run())
            self.shards[0].want(set(wanted))
            return
        for shard in self.shards:
            shard.want(shard.state.streams & set(wanted))
        placed = {name for shard in self.shards for name in shard.state.streams}
        waiting = sorted(set(wanted) - placed)
        for shard in self.shards:
            room = stream.max_streams_per_connection - len(shard.state.streams)
            if room > 0 and waiting:
                shard.want(shard.state.streams | set(waiting[:room]))
                waiting = waiting[room:]
        size = stream.max_streams_per_connection
        for chunk in (waiting[i : i + size] for i in range(0, len(waiting), size)):
            shard = Shard(self, stream, self._session, set(chunk))
            self.shards.append(shard)
            self.spawn(shard.run())
        for shard in [s for s in self.shards if not s.state.streams]:
            self.shards.remove(shard)
            shard.stop()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` for as long as this venue is live (stopped with it)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("live_task_failed", exchange=self.venue, error=f"{exc.__class__.__name__}: {exc}"[:500])

    def next_message_id(self) -> int:
        return next(self._message_ids)

    async def run(self) -> None:
        """Write what the shards receive until cancelled; then stop every shard."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._write_closed_loop())
                group.create_task(self._flush_open_loop())
                group.create_task(self._close_late_loop())
        finally:
            for shard in self.shards:
                shard.stop()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- what a shard hands over --------------------------------------------------------------

    def received(self, candle: StreamCandle) -> None:
        assert self._stream is not None  # only shards hand candles over
        name = self._stream.stream_name(candle.symbol, candle.timeframe)
        if name not in self.series:
            return  # unsubscribed meanwhile
        series = self.series[name]
        kline = candle.kline
        if candle.closed:
            self._closed.setdefault(name, []).append(kline)
            self._closed_ready.set()
            if (opened := self._open.get(name)) is not None and opened.open_time <= kline.open_time:
                del self._open[name]
            if series.open_seen_ms is not None and series.open_seen_ms <= kline.open_time:
                series.open_seen_ms = None
            if series.last_closed_open_ms is None or kline.open_time > series.last_closed_open_ms:
                series.last_closed_open_ms = kline.open_time
            return
        if series.last_closed_open_ms is not None and kline.open_time <= series.last_closed_open_ms:
            return  # a late word on a candle already closed (the other connection, mid-rotation)
        opened = self._open.get(name)
        if opened is None or opened.open_time <= kline.open_time:
            self._open[name] = kline
        if series.open_seen_ms is None or kline.open_time < series.open_seen_ms:
            series.open_seen_ms = kline.open_time  # the oldest candle shown open and not yet closed

    def asked(self, names: list[str]) -> None:
        """These streams were just asked for (again): a refusal of before no longer stands."""
        for name in names:
            if (series := self.series.get(name)) is not None:
                series.refused = None

    def refused(self, names: list[str], why: str) -> None:
        """The venue refused to subscribe these streams (all of a message's, when its answer names the
        message): logged, and never reported fresh; tried again with the next connection."""
        log.warning("live_subscribe_refused", exchange=self.venue, streams=names[:20], count=len(names), why=why)
        for name in names:
            if (series := self.series.get(name)) is not None:
                series.refused, series.fresh = why, False

    def stale(self, names: set[str]) -> None:
        """These series' stream is gone: they may miss candles until healed."""
        for name in names:
            if (series := self.series.get(name)) is not None:
                series.fresh = False

    async def heal(self, names: set[str], *, closing: bool = False) -> None:
        """Collect the series over REST from where their stored candles end to now, and call them
        fresh. Meanwhile what the stream says of them waits (written after, so the final values
        win, and the heal starts where the stored candles really end); a series that fails is
        healed again after a pause.

        `closing`: a read of late closes on a live stream; the series stay fresh and their stream's
        candles are written as they come."""
        names = {n for n in names if n in self.series and not self.series[n].healing}
        if not names:
            return
        if not closing:
            for name in names:
                self.series[name].fresh = False
                self.series[name].healing = True
        # What the stream had shown open before this read is read final by it (or is still open).
        reading = {n: self.series[n].open_seen_ms for n in names}
        pairs = [Pair(self.series[n].symbol, self.series[n].timeframe) for n in sorted(names)]
        failed: set[tuple[str, str]] = {(p.symbol, p.timeframe) for p in pairs}
        written = 0
        try:
            result = await self._collector.collect(pairs, _Sink(self.venue))
            failed = {(p.symbol, p.timeframe) for p in result.pairs if p.error is not None}
            written = result.candles_written
        finally:
            for name in names:
                if (series := self.series.get(name)) is None:
                    continue
                ok = (series.symbol, series.timeframe) not in failed
                if not closing:
                    series.healing = False
                    series.fresh = ok and series.refused is None
                if closing and ok and series.open_seen_ms is not None and series.open_seen_ms == reading[name]:
                    # Read after its close time: stored final unless the venue still had it open,
                    # in which case the next open update or close says so again.
                    series.open_seen_ms = None
            self._closed_ready.set()  # what waited for the heal goes now
        retry = {n for n in names if n in self.series and (self.series[n].symbol, self.series[n].timeframe) in failed}
        if retry and not closing:
            self.spawn(self._heal_later(retry))
        log.info("live_healed", exchange=self.venue, series=len(names), written=written, failed=len(failed))

    async def _heal_later(self, names: set[str]) -> None:
        await asyncio.sleep(HEAL_RETRY_SECONDS)
        await self.heal(names)

    # -- writers ------------------------------------------------------------------------------

    async def _write_closed_loop(self) -> None:
        while True:
            await self._closed_ready.wait()
            self._closed_ready.clear()
            # Series under heal keep theirs until it is done (heal sets the event again then).
            batch = {n: ks for n, ks in self._closed.items() if not self._healing(n)}
            for name in batch:
                del self._closed[name]
            if not batch:
                continue
            try:
                await self._write_closed(batch)
            except Exception as exc:  # the database down, or a refusal: kept, in front of what came since
                for name, klines in batch.items():
                    self._closed[name] = klines + self._closed.get(name, [])
                log.warning("live_write_postponed", exchange=self.venue, series=len(batch), error=str(exc)[:300])
                await asyncio.sleep(1.0)
                self._closed_ready.set()

    def _healing(self, name: str) -> bool:
        series = self.series.get(name)
        return series is not None and series.healing

    async def _write_closed(self, batch: dict[str, list[Kline]]) -> None:
        pages: list[klines_db.PageWrite] = []
        announced: list[dict[str, Any]] = []
        now_ms = int(self._clock() * 1000)
        # In series order: batches that meet in PostgreSQL lock rows in the same order (no deadlock).
        for name, klines in sorted(batch.items(), key=lambda item: self._ids.get(item[0], 0)):
            series = self.series.get(name)
            if series is None:
                continue
            grid = self._client.grid(series.timeframe)
            by_open = {k.open_time: k for k in klines}  # one candle per slot, the newest word
            ordered = [by_open[t] for t in sorted(by_open)]
            valid, rejected = check_klines(ordered, grid, now_ms)
            # Final as the venue says, if its close time has passed by our clock, give or take the
            # clocks' skew (the venue closes by its own); a close from the future stays open.
            page = KlinePage(valid, as_of_ms=now_ms + CLOCK_SKEW_ALLOWANCE_MS, closed=len(valid))
            final = page.closed_count()
            announced.extend(self._event(series, k, closed=i < final) for i, k in enumerate(valid))
            encoded = klines_db.encode_page(self._ids[name], [page], stored_until=ordered[-1].open_time)
            ranges = _runs(valid, grid)
            pages.append(klines_db.PageWrite(encoded, ranges, [(r.kline, r.reason) for r in rejected]))
            if valid:
                series.last_closed_at = self._clock()
        if pages:
            async with connection(self._pool) as conn:
                await klines_db.store_pages(conn, pages)
                await live_db.announce_candles(conn, announced)
            if self.metrics is not None:
                stored = self._clock()
                lag = self.metrics.live_close_lag.labels(self.venue)
                for event in announced:
                    if event["is_closed"]:
                        close_ms = self._client.grid(event["timeframe"]).next_open(event["open_time"])
                        lag.observe(max(stored - close_ms / 1000, 0.0))

    async def _flush_open_loop(self) -> None:
        while True:
            await asyncio.sleep(OPEN_FLUSH_SECONDS)
            if not self._open:
                continue
            batch = {n: k for n, k in self._open.items() if not self._healing(n)}
            for name in batch:
                del self._open[name]
            now_ms = int(self._clock() * 1000)
            rows: list[tuple[int, Kline]] = []
            announced: list[dict[str, Any]] = []
            for name, kline in batch.items():
                series = self.series.get(name)
                if series is None:
                    continue
                valid, _ = check_klines([kline], self._client.grid(series.timeframe), now_ms)
                rows.extend((self._ids[name], k) for k in valid)  # a refused one waits for its close
                announced.extend(self._event(series, k, closed=False) for k in valid)
            try:
                async with connection(self._pool) as conn:
                    await live_db.upsert_open_candles(conn, rows)
                    await live_db.announce_candles(conn, announced)
            except (DatabaseUnavailableError, RowRefusedError) as exc:
                log.warning("live_open_flush_failed", exchange=self.venue, error=str(exc)[:300])

    async def _close_late_loop(self) -> None:
        """Read over REST the candles whose close is late (see CLOSE_GRACE_SECONDS): the heal's
        resume starts at the oldest candle stored open, so it stores that one final."""
        while True:
            await asyncio.sleep(1.0)
            now_ms = int(self._clock() * 1000)
            late = {
                name for name, series in self.series.items()
                if series.open_seen_ms is not None and not series.closing
                and self._client.grid(series.timeframe).next_open(series.open_seen_ms) + CLOSE_GRACE_SECONDS * 1000
                <= now_ms
            }  # fmt: skip
            if late:
                log.info("live_closes_late", exchange=self.venue, series=len(late))
                self.spawn(self._close_late(late))

    async def _close_late(self, names: set[str]) -> None:
        if self.metrics is not None:
            self.metrics.live_late_closes.labels(self.venue).inc(len(names))
        for name in names:
            self.series[name].closing = True
        try:
            await self.heal(names, closing=True)
        finally:
            for name in names:
                if (series := self.series.get(name)) is not None:
                    series.closing = False

    def _event(self, series: SeriesLive, k: Kline, *, closed: bool) -> dict[str, Any]:
        """A `candle` event of the event stream, its prices the venue's decimal text."""
        return {
            "exchange": self.venue, "symbol": series.symbol, "timeframe": series.timeframe,
            "open_time": k.open_time, "open": k.open, "high": k.high, "low": k.low, "close": k.close,
            "volume": k.volume, "is_closed": closed,
        }

    # -- for /api/v1/live ---------------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    def grid(self, timeframe: str) -> Grid:
        return self._client.grid(timeframe)

    def snapshot(self) -> list[LiveConnectionState]:
        """Its connections (or REST closer) and their series as they stand, for /api/v1/live."""
        now = self._clock()
        connections: list[LiveConnectionState] = []
        for shard in self.shards:
            state = shard.state
            series: list[LiveSeriesState] = []
            for name in sorted(state.streams):
                found = self.series.get(name)
                if found is None:
                    continue
                closed = found.last_closed_open_ms
                lag = None if closed is None else round(now - self.grid(found.timeframe).next_open(closed) / 1000, 3)
                series.append(LiveSeriesState(found.symbol, found.timeframe, name, found.fresh, closed, lag))
            connections.append(LiveConnectionState(
                self.venue, state.connected_since, sorted(state.streams), state.messages,
                state.messages_per_second(now), state.last_message_at, state.reconnects, series,
            ))  # fmt: skip
        return connections


def _runs(klines: Sequence[Kline], grid: Grid) -> list[LedgerRange]:
    """The verified ranges the candles prove: one per run of consecutive slots."""
    ranges: list[LedgerRange] = []
    for k in klines:
        end = grid.next_open(k.open_time)
        if ranges and ranges[-1].end == k.open_time:
            ranges[-1] = LedgerRange(ranges[-1].start, end, VERIFIED)
        else:
            ranges.append(LedgerRange(k.open_time, end, VERIFIED))
    return ranges


class RestCloser:
    """A venue without a usable candle stream (Coinbase Exchange has none; Kraken's has no closed
    marker): each live series is read over REST once its candle's close time plus
    CLOSE_GRACE_SECONDS has passed, which stores that candle final (and the one now open)."""

    def __init__(self, venue: LiveVenue) -> None:
        self._venue = venue
        self.state = ShardState()
        self._task: asyncio.Task[None] | None = None

    def want(self, streams: set[str]) -> None:
        self.state.streams = set(streams)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        self._task = asyncio.current_task()
        venue = self._venue
        self.state.connected_since = venue.now()
        read_through: dict[str, int] = {}
        while True:
            now_ms = int(venue.now() * 1000)
            due: dict[str, int] = {}
            for name in self.state.streams:
                series = venue.series.get(name)
                if series is None:
                    continue
                grid = venue.grid(series.timeframe)
                # The newest candle whose close (plus the grace) has passed.
                closed = grid.shift(grid.align_open(now_ms - int(CLOSE_GRACE_SECONDS * 1000)), -1)
                if read_through.get(name) != closed:
                    due[name] = closed
            if due:
                fresh = all(name in read_through for name in due)
                await venue.heal(set(due), closing=fresh)
                for name, closed in due.items():
                    read_through[name] = closed
                    if (series := venue.series.get(name)) is not None:
                        series.last_closed_open_ms, series.last_closed_at = closed, venue.now()
                self.state.messages += len(due)
                self.state.last_message_at = venue.now()
            await asyncio.sleep(1.0)


class _Connection:
    """One open connection of a shard: what it has subscribed, and which streams spoke on it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.subscribed: set[str] = set()
        self.sent: dict[str, list[str]] = {}
        """The names of each subscribe message by its id, until the venue answers."""
        self.subscribed_all = asyncio.Event()
        """Set once the shard's streams have all been subscribed here."""
        self.spoken: set[str] = set()
        self.spoke = asyncio.Event()
        """Set when every stream of the shard has sent a message on this connection."""


class Shard:
    """One stream connection and the streams it carries.

    The connection is replaced make-before-break when the venue asks (`serverShutdown`) or before
    its own cut: a new connection is opened and subscribed while the old one goes on; once every
    stream has spoken on the new one (or after HANDOVER_SECONDS) the old one is closed. Nothing is
    missed, so nothing is healed. A connection that drops has no successor: the shard reconnects,
    pausing longer each time, and heals its series over REST.
    """

    def __init__(
        self, venue: LiveVenue, stream: KlineStream, session: aiohttp.ClientSession, streams: set[str]
    ) -> None:
        self._venue = venue
        self._stream = stream
        self._session = session
        self.state = ShardState(streams=set(streams))
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def want(self, streams: set[str]) -> None:
        if streams != self.state.streams:
            self.state.streams = set(streams)
            self._changed.set()

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        self._task = asyncio.current_task()
        pause = RECONNECT_FIRST
        first = True
        while not self._stopped and self.state.streams:
            began = self._venue.now()
            try:
                successor = await self._serve(await self._open(reconnect=not first), previous=None)
                while successor is not None:  # rotated: the new connection goes on
                    successor = await successor
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning(
                    "live_connection_failed", exchange=self._venue.venue, error=f"{exc.__class__.__name__}: {exc}"[:300]
                )
            except Exception:  # a message it could not read, a bug: logged, and the stream is opened again
                log.exception("live_connection_broken", exchange=self._venue.venue)
            finally:
                self.state.connected_since = None
                self._venue.stale(self.state.streams)  # until healed after the next connect
            first = False
            self.state.reconnects += 1
            if self._venue.now() - began >= STABLE_CONNECTION_SECONDS:
                pause = RECONNECT_FIRST  # a connection that held: the venue is fine again
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECONNECT_MAX)

    async def _open(self, *, reconnect: bool) -> _Connection:
        venue = self._venue
        ws = await self._session.ws_connect(
            self._stream.connect_url(), autoping=True, heartbeat=None,
            timeout=aiohttp.ClientWSTimeout(ws_receive=RECEIVE_TIMEOUT),
        )
        log.info("live_connected", exchange=venue.venue, streams=len(self.state.streams), reconnect=reconnect)
        if venue.metrics is not None:
            venue.metrics.live_connections.labels(venue.venue).inc()
            if reconnect:
                venue.metrics.live_reconnects.labels(venue.venue).inc()
        return _Connection(ws)

    async def _serve(
        self, conn: _Connection, *, previous: _Connection | None
    ) -> asyncio.Task[asyncio.Task[Any] | None] | None:
        """Read the connection until it ends; the successor's task if it was replaced, else None."""
        venue = self._venue
        metrics = venue.metrics
        counted = None if metrics is None else metrics.live_messages.labels(venue.venue)
        opened_at = venue.now()
        # A successor's streams that flow on the connection it replaces miss nothing: not healed.
        flowing = set() if previous is None else previous.subscribed
        pacer = asyncio.create_task(self._pace_control(conn, flowing=flowing))
        keeping = None if (keepalive := self._stream.keepalive()) is None else asyncio.create_task(
            self._keep_alive(conn, *keepalive)
        )
        handover = None if previous is None else asyncio.create_task(self._hand_over(previous, conn))
        successor: asyncio.Task[asyncio.Task[Any] | None] | None = None
        if previous is None:
            self.state.connected_since = opened_at
        try:
            async for message in conn.ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                now = venue.now()
                if counted is not None:
                    counted.inc()
                self.state.arrived(now)
                said = self._stream.parse(message.data.encode())
                if said.refused is not None:
                    venue.refused(conn.sent.get(said.refused[0] or "", []), said.refused[1])
                for candle in said.candles:
                    venue.received(candle)
                    conn.spoken.add(self._stream.stream_name(candle.symbol, candle.timeframe))
                if conn.subscribed_all.is_set() and conn.spoken >= self.state.streams:
                    conn.spoke.set()
                if successor is None and not self._stopped and (
                    said.reconnect or now - opened_at > self._stream.max_connection_seconds
                ):
                    log.info("live_rotating", exchange=venue.venue, asked=said.reconnect)
                    successor = asyncio.create_task(self._successor(conn))
        except BaseException:
            if successor is not None:
                successor.cancel()  # stopped or broken: its new connection with it
            raise
        finally:
            for task in (pacer, handover, keeping):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, OSError):
                        await task
            await conn.ws.close()
            if metrics is not None:
                metrics.live_connections.labels(venue.venue).dec()
        # Replaced: the new connection goes on (unless it failed; then this one's end is a drop).
        if successor is not None and (
            not successor.done() or (not successor.cancelled() and successor.exception() is None)
        ):
            return successor
        return None

    @staticmethod
    async def _keep_alive(conn: _Connection, seconds: float, text: str) -> None:
        """The venue's keepalive from our side (Bybit's ping, OKX's `ping`)."""
        while True:
            await asyncio.sleep(seconds)
            await conn.ws.send_str(text)

    async def _successor(self, old: _Connection) -> asyncio.Task[Any] | None:
        new = await self._open(reconnect=False)
        return await self._serve(new, previous=old)

    async def _hand_over(self, old: _Connection, new: _Connection) -> None:
        """Close the old connection once every stream of the shard is subscribed on the new one and
        has spoken there (or HANDOVER_SECONDS after the last subscribe); heal the streams that had
        not spoken by then, or all of them if the old connection ended first."""
        await new.subscribed_all.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(new.spoke.wait(), HANDOVER_SECONDS)
        self.state.connected_since = self._venue.now()
        old_ended = old.ws.closed
        await old.ws.close()
        silent = (set(self.state.streams) if old_ended else self.state.streams - new.spoken) & new.subscribed
        if silent:
            self._venue.spawn(self._venue.heal(silent))

    async def _pace_control(self, conn: _Connection, *, flowing: set[str]) -> None:
        """Send the subscription changes, a batch per control message, at the venue's pace; each
        batch subscribed is healed over REST (its series may have missed candles before it), but
        for the streams `flowing` on the connection this one replaces."""
        gap = 1.0 / self._stream.control_messages_per_second
        batch = self._stream.max_per_subscribe
        while True:
            self._changed.clear()
            drop = sorted(conn.subscribed - self.state.streams)
            for i in range(0, len(drop), batch):
                part = drop[i : i + batch]
                await conn.ws.send_str(self._stream.unsubscribe(part, self._venue.next_message_id()))
                conn.subscribed -= set(part)
                await asyncio.sleep(gap)
            add = sorted(self.state.streams - conn.subscribed)
            for i in range(0, len(add), batch):
                part = add[i : i + batch]
                message_id = self._venue.next_message_id()
                conn.sent[str(message_id)] = part
                await conn.ws.send_str(self._stream.subscribe(part, message_id))
                conn.subscribed |= set(part)
                self._venue.asked(part)
                if to_heal := set(part) - flowing:
                    # Outlives this connection: the candles it fetches are as good after a drop.
                    self._venue.spawn(self._venue.heal(to_heal))
                await asyncio.sleep(gap)
            if conn.subscribed >= self.state.streams:
                conn.subscribed_all.set()
            await self._changed.wait()

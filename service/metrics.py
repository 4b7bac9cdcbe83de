"""Prometheus metrics: one registry per app, the metric objects the service records into, and the
values read at scrape time.

Counters and histograms move when their event happens in this process (an HTTP request, a page of
candles written, a request to the exchange, a scheduled run submitted). What is shared by every
process (tasks, execution logs, the freshness of the stored series) is read from the database at
scrape time and handed to `render` as a `ScrapeState`, so each process's scrape tells the same
truth; what belongs to the process itself (its weight budget as it sees it, its event loop, its
pool) is read from those objects at scrape time too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.exchanges.base import LimiterState
from service.loop_monitor import LoopLag

__all__ = ["CONTENT_TYPE", "DatabaseCounts", "Metrics", "PoolUsage", "ScrapeState", "SeriesFreshness"]

#: The Prometheus text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: HTTP answers are milliseconds; exports and long reads take seconds.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: A streamed close is stored within a second or two of its close time; a late one minutes after.
_LIVE_LAG_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)
#: A scheduler wakes when a run is due; a late run is seconds or minutes late (a busy or restarted process).
_SCHEDULER_LAG_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class SeriesFreshness:
    """How long ago the newest closed candle of one configured series closed."""

    exchange: str
    symbol: str
    timeframe: str
    lag_seconds: float


@dataclass(frozen=True)
class DatabaseCounts:
    """What the database tells at scrape time, across every process."""

    tasks: Mapping[tuple[str, str], int]
    """(task_type, status) → tasks."""
    execution_runs: Mapping[tuple[str, str], int]
    """(job_type, status) → execution log rows (kept LOG_RETENTION_DAYS)."""
    freshness: Sequence[SeriesFreshness]


@dataclass(frozen=True)
class PoolUsage:
    size: int
    idle: int
    max_size: int


@dataclass(frozen=True)
class ScrapeState:
    """Everything read at scrape time; `database` None when the database did not answer."""

    database: DatabaseCounts | None
    limiters: Mapping[str, LimiterState] = field(default_factory=dict)
    loop_lag: LoopLag | None = None
    pool: PoolUsage | None = None


class Metrics:
    """The app's registry and its metrics. Recording methods never fail and never wait."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_request_duration = Histogram(
            "kline_http_request_duration_seconds",
            "HTTP requests by method, route template and status, and how long they took.",
            ["method", "route", "status"], buckets=_HTTP_BUCKETS, registry=self.registry,
        )
        self.candles_written = Counter(
            "kline_candles_written", "Candles written to the database by this process.",
            ["exchange", "timeframe"], registry=self.registry,
        )
        self.candles_quarantined = Counter(
            "kline_candles_quarantined",
            "Candles the exchange sent that failed an ingest check: kept in quarantined_klines, not in klines.",
            ["exchange", "timeframe", "reason"], registry=self.registry,
        )
        self.exchange_requests = Counter(
            "kline_exchange_requests",
            "Requests sent to the exchange, by endpoint and HTTP status (`timeout`, `error`: no answer).",
            ["exchange", "endpoint", "status"], registry=self.registry,
        )
        self.exchange_pauses = Counter(
            "kline_exchange_pauses",
            "Orders from the exchange to wait: 429 (rate limited) and 418 (IP ban) answers.",
            ["exchange", "status"], registry=self.registry,
        )
        self.exchange_pause_seconds = Counter(
            "kline_exchange_pause_seconds",
            "Seconds of pause the exchange ordered with its 429 and 418 answers.",
            ["exchange", "status"], registry=self.registry,
        )
        self.scheduler_lag = Histogram(
            "kline_scheduler_lag_seconds",
            "From a scheduled run's due time to its submission by the scheduler.",
            buckets=_SCHEDULER_LAG_BUCKETS, registry=self.registry,
        )
        self.ingest_seconds = Counter(
            "kline_ingest_seconds",
            "Seconds spent by phase of ingest: `fetch` (wall time with at least one exchange request of a"
            " collection in flight), `check_encode` (checking candles and building COPY rows, on the event"
            " loop), `write` (page-write transactions, summed over the writers).",
            ["phase"], registry=self.registry,
        )
        self.page_writes = Counter(
            "kline_page_writes", "Page-write transactions (several series' pages share one).", registry=self.registry,
        )
        self.pages_written = Counter(
            "kline_pages_written", "Pages of candles written (one exchange answer each, or a window's answers).",
            registry=self.registry,
        )
        self.last_page_write = Gauge(
            "kline_last_page_write_timestamp_seconds", "When the last page-write transaction committed (epoch).",
            registry=self.registry,
        )
        self.live_connections = Gauge(
            "kline_live_connections", "Open stream connections of live configs in this process.",
            ["exchange"], registry=self.registry,
        )
        self.live_messages = Counter(
            "kline_live_messages", "Messages received on the stream connections.", ["exchange"], registry=self.registry,
        )
        self.live_reconnects = Counter(
            "kline_live_reconnects", "Stream connections opened again after a drop, a stall or the venue's notice.",
            ["exchange"], registry=self.registry,
        )
        self.live_late_closes = Counter(
            "kline_live_late_closes",
            "Streamed candles whose close did not come within a few seconds of their close time: read over REST.",
            ["exchange"], registry=self.registry,
        )
        self.live_close_lag = Histogram(
            "kline_live_close_lag_seconds",
            "From a streamed candle's close time (our clock) to its closed row being stored.",
            ["exchange"], buckets=_LIVE_LAG_BUCKETS, registry=self.registry,
        )
        self._scrape = _ScrapeCollector()
        self.registry.register(self._scrape)

    # The exchange client's RequestObserver (service/exchanges/base.py).
    def request_done(self, exchange: str, endpoint: str, status: str) -> None:
        self.exchange_requests.labels(exchange, endpoint, status).inc()

    def paused(self, exchange: str, status: str, seconds: float) -> None:
        self.exchange_pauses.labels(exchange, status).inc()
        self.exchange_pause_seconds.labels(exchange, status).inc(max(seconds, 0.0))

    def candles_stored(self, exchange: str, timeframe: str, count: int) -> None:
        self.candles_written.labels(exchange, timeframe).inc(count)

    def candle_quarantined(self, exchange: str, timeframe: str, reason: str) -> None:
        # The reason's kind only (before any ':'): the offending value must not become a label.
        self.candles_quarantined.labels(exchange, timeframe, reason.split(":", 1)[0]).inc()

    def ingest_phase(self, phase: str, seconds: float) -> None:
        self.ingest_seconds.labels(phase).inc(max(seconds, 0.0))

    def page_write(self, pages: int, seconds: float, committed_at: float) -> None:
        """One page-write transaction of `pages` pages, `seconds` long, committed at `committed_at` (epoch)."""
        self.page_writes.inc()
        self.pages_written.inc(pages)
        self.ingest_seconds.labels("write").inc(max(seconds, 0.0))
        self.last_page_write.set(committed_at)

    def scheduled_run_submitted(self, lag_seconds: float) -> None:
        self.scheduler_lag.observe(max(lag_seconds, 0.0))

    def render(self, state: ScrapeState) -> bytes:
        """The exposition text with `state` as the scrape-time values.

        No await between setting the state and generating the text: concurrent scrapes cannot mix.
        """
        self._scrape.state = state
        try:
            return generate_latest(self.registry)
        finally:
            self._scrape.state = None


class _ScrapeCollector(Collector):
    """Gauges of the values read at scrape time (nothing outside `Metrics.render`)."""

    def __init__(self) -> None:
        self.state: ScrapeState | None = None

    def describe(self) -> Iterable[Metric]:
        # Described as nothing: the registry must not call collect() (and find no state) at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        state = self.state
        if state is None:
            return
        yield from _database_metrics(state.database)
        yield from _limiter_metrics(state.limiters)
        if state.loop_lag is not None:
            lag = GaugeMetricFamily(
                "kline_event_loop_lag_seconds",
                "How late a 50 ms sleep on the event loop woke up, over the last minute (quantile 1: the worst).",
                labels=["quantile"],
            )
            for quantile, milliseconds in (
                ("0.5", state.loop_lag.p50), ("0.99", state.loop_lag.p99), ("1", state.loop_lag.max)
            ):
                lag.add_metric([quantile], milliseconds / 1000)
            yield lag
        if state.pool is not None:
            yield GaugeMetricFamily(
                "kline_db_pool_connections_in_use", "Pool connections lent out now.",
                value=state.pool.size - state.pool.idle,
            )
            yield GaugeMetricFamily(
                "kline_db_pool_connections_open", "Pool connections open now (in use or idle).", value=state.pool.size
            )
            yield GaugeMetricFamily(
                "kline_db_pool_connections_max", "Most connections the pool opens (DB_POOL_MAX).",
                value=state.pool.max_size,
            )


def _database_metrics(counts: DatabaseCounts | None) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "kline_database_up", "1 if the database answered this scrape's reads; 0: the database series are left out.",
        value=0 if counts is None else 1,
    )
    if counts is None:
        return
    tasks = GaugeMetricFamily(
        "kline_tasks", "Tasks in the database by type and status (every process's).", labels=["type", "status"]
    )
    for (task_type, status), count in sorted(counts.tasks.items()):
        tasks.add_metric([task_type, status], count)
    yield tasks
    runs = GaugeMetricFamily(
        "kline_execution_runs",
        "Execution log rows by job type and status (kept LOG_RETENTION_DAYS).",
        labels=["job_type", "status"],
    )
    for (job_type, status), count in sorted(counts.execution_runs.items()):
        runs.add_metric([job_type, status], count)
    yield runs
    freshness = GaugeMetricFamily(
        "kline_series_freshness_lag_seconds",
        "Now less the close of the newest closed candle, per configured series (enabled configs).",
        labels=["exchange", "symbol", "timeframe"],
    )
    for series in counts.freshness:
        freshness.add_metric([series.exchange, series.symbol, series.timeframe], series.lag_seconds)
    yield freshness


def _limiter_metrics(limiters: Mapping[str, LimiterState]) -> Iterator[Metric]:
    used = GaugeMetricFamily(
        "kline_exchange_weight_used", "Request weight used in the current minute, as this process sees it.",
        labels=["exchange"],
    )
    limit = GaugeMetricFamily(
        "kline_exchange_weight_limit", "The exchange's weight limit per minute as learnt (absent: unknown).",
        labels=["exchange"],
    )
    budget = GaugeMetricFamily(
        "kline_exchange_weight_budget", "The part of the weight limit this service spends (limit less the margin).",
        labels=["exchange"],
    )
    paused = GaugeMetricFamily(
        "kline_exchange_paused", "1 while every request to the exchange waits (429 or 418), else 0.",
        labels=["exchange"],
    )
    for exchange, state in sorted(limiters.items()):
        used.add_metric([exchange], state.used_in_window)
        if state.limit is not None:
            limit.add_metric([exchange], state.limit)
        if state.budget is not None:
            budget.add_metric([exchange], state.budget)
        paused.add_metric([exchange], 0 if state.paused_until is None else 1)
    yield from (used, limit, budget, paused)

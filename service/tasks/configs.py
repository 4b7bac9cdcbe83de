"""Collection configs: what the scheduler collects, checked, stored and scheduled.

One config per (exchange, symbol). Every change is stored first, then the scheduler is woken, so
the new schedule applies at once without a restart. A new or re-enabled config runs promptly; a
changed interval counts from the config's last run. The API only translates HTTP to these calls.

A config whose symbol does not trade (BREAK, HALT, delisted) is paused: kept, shown with the reason,
but not scheduled until the symbol trades again. The symbol refresh pauses and resumes configs; a
config created for (or moved to) such a symbol is paused at once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec
from msgspec import UNSET, UnsetType

from service.collection import ranges
from service.db import configs as configs_db
from service.db.pool import Connection, Pool, Row, connection
from service.errors import ConflictError, DuplicateError, InvalidInputError, NotFoundError
from service.logging import get_logger
from service.tasks.jobs import CollectionJobs
from service.tasks.registry import TaskView
from service.tasks.scheduler import Scheduler

__all__ = ["CollectionConfig", "ConfigChanges", "Configs"]

log = get_logger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CollectionConfig(msgspec.Struct, frozen=True):
    """One stored config and its schedule."""

    id: int
    symbol: str
    exchange: str
    timeframes: list[str]
    interval_minutes: int | None
    live: bool
    enabled: bool
    job_id: str
    description: str | None
    created_at: datetime
    updated_at: datetime | None
    created_by: str | None
    last_run_at: datetime | None
    next_run_at: datetime | None
    history_start: str | None
    """Where a series with no candles starts: "listing", an ISO 8601 time, or None (the recent
    DEFAULT_HISTORY_CANDLES)."""
    paused_reason: str | None
    """Why the config is not scheduled (its symbol does not trade); None while it runs on schedule."""
    paused_at: datetime | None

    @classmethod
    def from_row(cls, row: Row) -> CollectionConfig:
        start: ranges.HistoryStart | None = None
        if row["history_from_listing"]:
            start = ranges.LISTING
        elif row["history_start"] is not None:
            start = ranges.to_ms(row["history_start"])
        return cls(
            id=row["id"], symbol=row["symbol"], exchange=row["exchange"], timeframes=list(row["timeframes"]),
            interval_minutes=row["interval_minutes"], live=row["live"], enabled=row["enabled"], job_id=row["job_id"],
            description=row["description"], created_at=row["created_at"], updated_at=row["updated_at"],
            created_by=row["created_by"], last_run_at=row["last_run_at"], next_run_at=row["next_run_at"],
            history_start=ranges.format_start(start), paused_reason=row["paused_reason"], paused_at=row["paused_at"],
        )


class ConfigChanges(msgspec.Struct, frozen=True):
    """The fields an update changes; UNSET ones stay. `description=None` clears the description,
    `history_start=None` the history start (back to the recent DEFAULT_HISTORY_CANDLES)."""

    symbol: str | UnsetType = UNSET
    exchange: str | UnsetType = UNSET
    timeframes: list[str] | UnsetType = UNSET
    interval_minutes: int | UnsetType | None = UNSET
    live: bool | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    description: str | UnsetType | None = UNSET
    history_start: str | UnsetType | None = UNSET


class Configs:
    """Create, read, change, delete and trigger collection configs; the scheduler follows each change."""

    def __init__(
        self,
        pool: Pool,
        jobs: CollectionJobs,
        scheduler: Scheduler,
        *,
        min_interval_minutes: int,
        clock: Callable[[], float],
    ) -> None:
        self._pool = pool
        self._jobs = jobs
        self._scheduler = scheduler
        self._min_interval_minutes = min_interval_minutes
        self._clock = clock

    async def list_configs(
        self, *, enabled: bool | None, exchange: str | None, skip: int, limit: int
    ) -> list[CollectionConfig]:
        """Configs by id, optionally only enabled (or disabled) ones, or those of one exchange."""
        async with connection(self._pool) as conn:
            rows = await configs_db.list_configs(conn, enabled=enabled, exchange=exchange, skip=skip, limit=limit)
        return [CollectionConfig.from_row(r) for r in rows]

    async def get(self, config_id: int) -> CollectionConfig:
        """The config; NotFoundError if there is none with this id."""
        async with connection(self._pool) as conn:
            row = await configs_db.get_config(conn, config_id)
        if row is None:
            raise _not_found(config_id)
        return CollectionConfig.from_row(row)

    async def create(
        self,
        *,
        symbol: str,
        exchange: str,
        timeframes: list[str],
        interval_minutes: int | None,
        enabled: bool,
        description: str | None,
        created_by: str | None,
        history_start: str | None = None,
        live: bool = False,
    ) -> CollectionConfig:
        """Store a config and schedule it (its first run is due at once; paused if its symbol does not trade).

        InvalidInputError for an unknown exchange, symbol or timeframe, a too short interval or a bad
        or future history_start, no interval on a config that is not live; ConflictError
        (`config_id`) if the pair has a config already.
        """
        self._jobs.check_exchange(exchange)
        frames = self._jobs.venues.timeframes(exchange, timeframes)
        self._check_schedule(interval_minutes, live)
        start_at, from_listing = self._history_columns(history_start)
        name = await self._resolve_symbol(exchange, symbol)
        try:
            async with connection(self._pool) as conn:
                if (conflict := await _duplicate(conn, exchange, name, except_id=None)) is not None:
                    raise conflict
                async with conn.transaction():
                    inserted = await configs_db.insert_config(
                        conn, symbol=name, exchange=exchange, timeframes=frames,
                        interval_minutes=interval_minutes, enabled=enabled,
                        description=description, created_by=created_by, next_run_at=None,
                        history_start=start_at, history_from_listing=from_listing, live=live,
                    )
                    listing = await configs_db.sync_listing_pauses(conn, exchange, self._now())
                    await configs_db.reschedule(conn, inserted["id"], self._now())
                    row = await configs_db.get_config(conn, inserted["id"])
        except DuplicateError:
            raise await self._conflict_after_race(exchange, name, None) from None
        _log_listing_changes(*listing)
        await self._scheduler.changed()
        assert row is not None  # read back in the transaction that inserted it
        return CollectionConfig.from_row(row)

    async def update(self, config_id: int, changes: ConfigChanges) -> CollectionConfig:
        """Change the fields set in `changes` and reschedule from the last run.

        NotFoundError if unknown (checked first); then the checks of `create` for each field sent.
        """
        async with connection(self._pool) as conn:
            current = await configs_db.get_config(conn, config_id)
        if current is None:
            raise _not_found(config_id)
        columns: dict[str, object] = {}
        exchange: str = current["exchange"]
        if changes.exchange is not UNSET:
            self._jobs.check_exchange(changes.exchange)
            columns["exchange"] = exchange = changes.exchange
        if changes.timeframes is not UNSET:
            columns["timeframes"] = self._jobs.venues.timeframes(exchange, changes.timeframes)
        elif changes.exchange is not UNSET:  # the config's timeframes must exist on its new venue
            self._jobs.venues.timeframes(exchange, list(current["timeframes"]))
        if changes.interval_minutes is not UNSET:
            columns["interval_minutes"] = changes.interval_minutes
        if changes.live is not UNSET:
            columns["live"] = changes.live
        if {"interval_minutes", "live"} & set(columns):
            interval = columns.get("interval_minutes", current["interval_minutes"])
            live = bool(columns.get("live", current["live"]))
            self._check_schedule(interval if isinstance(interval, int) else None, live)
        if changes.symbol is not UNSET:
            columns["symbol"] = await self._resolve_symbol(exchange, changes.symbol)
        elif changes.exchange is not UNSET:  # and its symbol, spelt as that venue spells it
            columns["symbol"] = await self._resolve_symbol(exchange, current["symbol"])
        if changes.enabled is not UNSET:
            columns["enabled"] = changes.enabled
        if changes.description is not UNSET:
            columns["description"] = changes.description
        if changes.history_start is not UNSET:
            columns["history_start"], columns["history_from_listing"] = self._history_columns(changes.history_start)
        exchange = str(columns.get("exchange", current["exchange"]))
        symbol = str(columns.get("symbol", current["symbol"]))
        try:
            async with connection(self._pool) as conn:
                if (conflict := await _duplicate(conn, exchange, symbol, except_id=config_id)) is not None:
                    raise conflict
                async with conn.transaction():
                    row = await configs_db.update_config(conn, config_id, changes=columns)
                    listing: tuple[list[Row], list[Row]] = ([], [])
                    if row is not None:
                        await configs_db.reschedule(conn, config_id, self._now())
                        # A new symbol (or exchange) may trade where the old one did not, or not at all.
                        listing = await configs_db.sync_listing_pauses(conn, exchange, self._now())
                        row = await configs_db.get_config(conn, config_id)
        except DuplicateError:
            raise await self._conflict_after_race(exchange, symbol, config_id) from None
        if row is None:  # deleted meanwhile
            raise _not_found(config_id)
        _log_listing_changes(*listing)
        await self._scheduler.changed()
        return CollectionConfig.from_row(row)

    async def delete(self, config_id: int) -> None:
        """Delete the config and unschedule it (its execution logs stay); NotFoundError if unknown."""
        async with connection(self._pool) as conn:
            deleted = await configs_db.delete_config(conn, config_id)
        if not deleted:
            raise _not_found(config_id)
        await self._scheduler.changed()

    async def enable(self, config_id: int) -> CollectionConfig:
        """Enable the config and schedule it at once; NotFoundError if unknown."""
        async with connection(self._pool) as conn, conn.transaction():
            row = await configs_db.set_enabled(conn, config_id, True)
            if row is not None:
                await configs_db.reschedule(conn, config_id, self._now())
                row = await configs_db.get_config(conn, config_id)
        if row is None:
            raise _not_found(config_id)
        await self._scheduler.changed()
        return CollectionConfig.from_row(row)

    async def disable(self, config_id: int) -> CollectionConfig:
        """Disable the config: no further scheduled runs (a run under way finishes); NotFoundError if unknown."""
        async with connection(self._pool) as conn:
            row = await configs_db.set_enabled(conn, config_id, False)
        if row is None:
            raise _not_found(config_id)
        await self._scheduler.changed()
        return CollectionConfig.from_row(row)

    async def trigger(self, config_id: int) -> TaskView:
        """Run the config now, outside its schedule; NotFoundError if unknown, ConflictError if its run is active."""
        return await self._scheduler.trigger(config_id)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _history_columns(self, value: str | None) -> tuple[datetime | None, bool]:
        """(history_start, history_from_listing) as stored; InvalidInputError naming history_start if
        the value is neither "listing" nor an ISO 8601 time, or is in the future."""
        if value is None:
            return None, False
        start = ranges.parse_start(value, "history_start")
        if not isinstance(start, int):  # "listing"
            return None, True
        moment = _EPOCH + timedelta(milliseconds=start)
        if moment > self._now():
            raise InvalidInputError(
                f"history_start must not be in the future, got {value[:40]!r}", field="history_start"
            )
        return moment, False

    def _check_schedule(self, minutes: int | None, live: bool) -> None:
        """InvalidInputError unless the config is live (every venue is: streamed, or closed over
        REST) or has an interval of at least MIN_INTERVAL_MINUTES."""
        if minutes is None:
            if not live:
                raise InvalidInputError(
                    "interval_minutes is required unless the config is live", field="interval_minutes"
                )
            return
        minimum = self._min_interval_minutes
        if minutes < minimum:
            raise InvalidInputError(
                f"interval_minutes must be at least {minimum} (MIN_INTERVAL_MINUTES); got {minutes}",
                minimum=minimum,
            )

    async def _resolve_symbol(self, exchange: str, symbol: str) -> str:
        """The venue's own name of the symbol (BTC/USDT → BTCUSDT); InvalidInputError naming it if unknown."""
        return (await self._jobs.resolve_symbols(exchange, [symbol]))[0]

    async def _conflict_after_race(self, exchange: str, symbol: str, except_id: int | None) -> ConflictError:
        """The conflict for a unique violation another request won between our check and our write."""
        async with connection(self._pool) as conn:
            found = await _duplicate(conn, exchange, symbol, except_id=except_id)
        return found or ConflictError(f"a collection config for {symbol} on {exchange} already exists")


def _log_listing_changes(paused: list[Row], resumed: list[Row]) -> None:
    for row in paused:
        log.warning("config_paused", config_id=row["id"], symbol=row["symbol"], status=row["status"],
                    reason=row["reason"])
    for row in resumed:
        log.info("config_resumed", config_id=row["id"], symbol=row["symbol"], status=row["status"])


def _not_found(config_id: int) -> NotFoundError:
    return NotFoundError(f"no collection config with id {config_id}")


async def _duplicate(conn: Connection, exchange: str, symbol: str, *, except_id: int | None) -> ConflictError | None:
    existing = await configs_db.find_by_pair(conn, exchange, symbol)
    if existing is None or existing["id"] == except_id:
        return None
    return ConflictError(
        f"a collection config for {symbol} on {exchange} already exists (id {existing['id']})",
        config_id=existing["id"],
    )

"""/api/v1/admin/data-collection/configs: what the scheduler collects, created and changed live.

Every change (create, update, enable, disable, delete) is stored first, then the scheduler is
woken, so the new schedule applies at once without a restart. A new or re-enabled config runs
promptly; a changed interval counts from the config's last run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.params import FromQuery, JSONBody, QueryParameter
from litestar.security.jwt import Token
from msgspec import UNSET, UnsetType

from service.api.collector import TaskReply
from service.api.deps import RuntimeDep
from service.api.enums import ExchangeChoice, TaskReplyStatus
from service.api.openapi import error_responses
from service.api.schemas import (
    INT4_MAX,
    Description,
    ExchangeName,
    Schema,
    SymbolName,
    TimeframeText,
    id_path,
    skip_query,
    text_query,
)
from service.auth.accounts import User
from service.auth.guards import BEARER_SECURITY, requires_admin
from service.collection.jobs import validate_timeframes
from service.collection.runtime import Runtime
from service.db import configs as configs_db
from service.db.pool import Connection
from service.errors import ConflictError, InvalidInputError, NotFoundError
from service.settings import TimeframeName

__all__ = ["Config", "ConfigsController", "CreateConfig", "UpdateConfig"]

# At most a week; the minimum (MIN_INTERVAL_MINUTES, a setting) is checked with a 422.
IntervalMinutes = Annotated[int, msgspec.Meta(le=10_080, description="Minutes between runs (at most 10080, a week)")]
Timeframes = Annotated[
    list[TimeframeText], msgspec.Meta(max_length=16, description="Binance intervals, e.g. 1m 5m 1h 1d")
]
# An int4 column: a larger id is a 400 naming config_id, not a driver error.
ConfigId = Annotated[int, id_path(INT4_MAX, "Id of the collection config")]

_DUPLICATE = "A config for this symbol on this exchange already exists (`extra.config_id`)"


class Config(Schema):
    id: int
    symbol: str
    """As the exchange names it (BTCUSDT), whatever form was sent."""
    exchange: ExchangeChoice
    timeframes: list[TimeframeName]
    interval_minutes: int
    enabled: bool
    job_id: str
    """`collect_data_{id}`: the job_name of this config's execution logs."""
    description: str | None
    created_at: datetime
    updated_at: datetime | None
    created_by: str | None
    last_run_at: datetime | None
    """When the scheduler last started a run of this config."""
    next_run_at: datetime | None
    """When it runs next; null while disabled."""


class CreateConfig(Schema):
    symbol: SymbolName
    timeframes: Timeframes
    interval_minutes: IntervalMinutes
    exchange: ExchangeName = "binance"
    enabled: bool = True
    description: Description | None = None


class UpdateConfig(Schema):
    """Only the fields sent change; `description: null` clears the description."""

    symbol: SymbolName | UnsetType = UNSET
    exchange: ExchangeName | UnsetType = UNSET
    timeframes: Timeframes | UnsetType = UNSET
    interval_minutes: IntervalMinutes | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    description: Description | UnsetType | None = UNSET


def _config(row: asyncpg.Record) -> Config:
    return Config(
        id=row["id"], symbol=row["symbol"], exchange=row["exchange"], timeframes=list(row["timeframes"]),
        interval_minutes=row["interval_minutes"], enabled=row["enabled"], job_id=row["job_id"],
        description=row["description"], created_at=row["created_at"], updated_at=row["updated_at"],
        created_by=row["created_by"], last_run_at=row["last_run_at"], next_run_at=row["next_run_at"],
    )


def _now(runtime: Runtime) -> datetime:
    return datetime.fromtimestamp(runtime.clock(), UTC)


def _not_found(config_id: int) -> NotFoundError:
    return NotFoundError(f"no collection config with id {config_id}")


def _check_interval(runtime: Runtime, minutes: int) -> None:
    minimum = runtime.settings.min_interval_minutes
    if minutes < minimum:
        raise InvalidInputError(
            f"interval_minutes must be at least {minimum} (MIN_INTERVAL_MINUTES); got {minutes}",
            minimum=minimum,
        )


async def _resolve_symbol(runtime: Runtime, symbol: str) -> str:
    """The exchange's own name of the symbol (BTC/USDT → BTCUSDT); 422 naming it if unknown."""
    return (await runtime.jobs.resolve_symbols([symbol]))[0]


async def _duplicate(conn: Connection, exchange: str, symbol: str, *, except_id: int | None) -> ConflictError | None:
    existing = await configs_db.find_by_pair(conn, exchange, symbol)
    if existing is None or existing["id"] == except_id:
        return None
    return ConflictError(
        f"a collection config for {symbol} on {exchange} already exists (id {existing['id']})",
        config_id=existing["id"],
    )


async def _conflict_after_race(conn: Connection, exchange: str, symbol: str, except_id: int | None) -> ConflictError:
    """The 409 for a unique violation another request won between our check and our write."""
    found = await _duplicate(conn, exchange, symbol, except_id=except_id)
    return found or ConflictError(f"a collection config for {symbol} on {exchange} already exists")


class ConfigsController(Controller):
    path = "/api/v1/admin/data-collection/configs"
    tags = ["admin"]
    guards = [requires_admin]
    security = BEARER_SECURITY

    @get(operation_id="listConfigs", summary="Collection configs, by id", responses=error_responses(400, 401, 403))
    async def list_configs(
        self,
        runtime: RuntimeDep,
        enabled: FromQuery[bool | None] = None,
        exchange: Annotated[ExchangeChoice | None, text_query(max_length=40)] = None,
        skip: Annotated[int, skip_query()] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 100,
    ) -> list[Config]:
        async with runtime.pool.acquire() as conn:
            rows = await configs_db.list_configs(conn, enabled=enabled, exchange=exchange, skip=skip, limit=limit)
        return [_config(r) for r in rows]

    @post(
        operation_id="createConfig", status_code=201,
        summary="Add a symbol to collect on an interval; it is scheduled at once (first run promptly)",
        responses=error_responses(400, 401, 403, 409, 413, 415, 422, descriptions={409: _DUPLICATE}),
    )
    async def create_config(
        self, data: JSONBody[CreateConfig], runtime: RuntimeDep, request: Request[User, Token, Any]
    ) -> Config:
        runtime.jobs.check_exchange(data.exchange)
        timeframes = validate_timeframes(data.timeframes)
        _check_interval(runtime, data.interval_minutes)
        symbol = await _resolve_symbol(runtime, data.symbol)
        async with runtime.pool.acquire() as conn:
            if (conflict := await _duplicate(conn, data.exchange, symbol, except_id=None)) is not None:
                raise conflict
            try:
                async with conn.transaction():
                    inserted = await configs_db.insert_config(
                        conn, symbol=symbol, exchange=data.exchange, timeframes=timeframes,
                        interval_minutes=data.interval_minutes, enabled=data.enabled,
                        description=data.description, created_by=request.user.email, next_run_at=None,
                    )
                    await configs_db.reschedule(conn, inserted["id"], _now(runtime))
                    row = await configs_db.get_config(conn, inserted["id"])
            except asyncpg.UniqueViolationError:
                raise await _conflict_after_race(conn, data.exchange, symbol, None) from None
        runtime.scheduler.notify_changed()
        assert row is not None
        return _config(row)

    @get(
        "/{config_id:int}", operation_id="getConfig", summary="One collection config",
        responses=error_responses(400, 401, 403, 404),
    )
    async def get_config(self, config_id: ConfigId, runtime: RuntimeDep) -> Config:
        async with runtime.pool.acquire() as conn:
            row = await configs_db.get_config(conn, config_id)
        if row is None:
            raise _not_found(config_id)
        return _config(row)

    @put(
        "/{config_id:int}", operation_id="updateConfig",
        summary="Change some fields of a config (the others stay); the schedule follows at once",
        responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, descriptions={409: _DUPLICATE}),
    )
    async def update_config(
        self, config_id: ConfigId, data: JSONBody[UpdateConfig], runtime: RuntimeDep
    ) -> Config:
        async with runtime.pool.acquire() as conn:
            current = await configs_db.get_config(conn, config_id)
        if current is None:
            raise _not_found(config_id)
        changes: dict[str, object] = {}
        if data.exchange is not UNSET:
            runtime.jobs.check_exchange(data.exchange)
            changes["exchange"] = data.exchange
        if data.timeframes is not UNSET:
            changes["timeframes"] = validate_timeframes(data.timeframes)
        if data.interval_minutes is not UNSET:
            _check_interval(runtime, data.interval_minutes)
            changes["interval_minutes"] = data.interval_minutes
        if data.symbol is not UNSET:
            changes["symbol"] = await _resolve_symbol(runtime, data.symbol)
        if data.enabled is not UNSET:
            changes["enabled"] = data.enabled
        if data.description is not UNSET:
            changes["description"] = data.description
        exchange = str(changes.get("exchange", current["exchange"]))
        symbol = str(changes.get("symbol", current["symbol"]))
        async with runtime.pool.acquire() as conn:
            if (conflict := await _duplicate(conn, exchange, symbol, except_id=config_id)) is not None:
                raise conflict
            try:
                async with conn.transaction():
                    row = await configs_db.update_config(conn, config_id, changes=changes)
                    if row is not None:
                        await configs_db.reschedule(conn, config_id, _now(runtime))
                        row = await configs_db.get_config(conn, config_id)
            except asyncpg.UniqueViolationError:
                raise await _conflict_after_race(conn, exchange, symbol, config_id) from None
        if row is None:  # deleted meanwhile
            raise _not_found(config_id)
        runtime.scheduler.notify_changed()
        return _config(row)

    @delete(
        "/{config_id:int}", operation_id="deleteConfig", status_code=204,
        summary="Delete a config; it is unscheduled at once (its execution logs stay)",
        responses=error_responses(400, 401, 403, 404),
    )
    async def delete_config(self, config_id: ConfigId, runtime: RuntimeDep) -> None:
        async with runtime.pool.acquire() as conn:
            deleted = await configs_db.delete_config(conn, config_id)
        if not deleted:
            raise _not_found(config_id)
        runtime.scheduler.notify_changed()

    @post(
        "/{config_id:int}/enable", operation_id="enableConfig", status_code=200,
        summary="Enable a config; it is scheduled at once",
        responses=error_responses(400, 401, 403, 404),
    )
    async def enable(self, config_id: ConfigId, runtime: RuntimeDep) -> Config:
        async with runtime.pool.acquire() as conn, conn.transaction():
            row = await configs_db.set_enabled(conn, config_id, True)
            if row is not None:
                await configs_db.reschedule(conn, config_id, _now(runtime))
                row = await configs_db.get_config(conn, config_id)
        if row is None:
            raise _not_found(config_id)
        runtime.scheduler.notify_changed()
        return _config(row)

    @post(
        "/{config_id:int}/disable", operation_id="disableConfig", status_code=200,
        summary="Disable a config; no further scheduled runs (a run under way finishes)",
        responses=error_responses(400, 401, 403, 404),
    )
    async def disable(self, config_id: ConfigId, runtime: RuntimeDep) -> Config:
        async with runtime.pool.acquire() as conn:
            row = await configs_db.set_enabled(conn, config_id, False)
        if row is None:
            raise _not_found(config_id)
        runtime.scheduler.notify_changed()
        return _config(row)

    @post(
        "/{config_id:int}/trigger", operation_id="triggerConfig", status_code=202,
        summary="Run a config now, outside its schedule; returns the task id (409 if its run is active)",
        responses=error_responses(
            400, 401, 403, 404, 409,
            descriptions={409: "A pending or running task already collects this config's series "
                               "(`extra.active_task_id`), or the service is shutting down"},
        ),
    )
    async def trigger(self, config_id: ConfigId, runtime: RuntimeDep) -> TaskReply:
        view = await runtime.scheduler.trigger(config_id)
        return TaskReply(
            task_id=view.task_id, status=TaskReplyStatus.SUBMITTED,
            message=f"Collection of config {config_id} submitted. Use the task_id to check status.",
        )

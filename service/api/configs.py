"""/api/v1/admin/data-collection/configs: what the scheduler collects, created and changed live.

HTTP only: the rules and the schedule are service/tasks/configs.py's. Every change applies
at once, without a restart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.params import FromQuery, JSONBody, QueryParameter
from litestar.security.jwt import Token
from msgspec import UNSET, UnsetType

from service.api.collector import TaskReply
from service.api.deps import ConfigsDep
from service.api.enums import ExchangeChoice, TaskReplyStatus
from service.api.openapi import error_responses
from service.api.schemas import (
    INT4_MAX,
    NO_NUL_PATTERN,
    Description,
    ExchangeName,
    Schema,
    SymbolName,
    TimeframeText,
    id_path,
    skip_query,
    text_query,
)
from service.auth.guards import BEARER_SECURITY, requires_admin
from service.auth.users import User
from service.exchanges.grid import Timeframe, TimeframeName
from service.exchanges.venues import DEFAULT_VENUE
from service.tasks.configs import CollectionConfig, ConfigChanges

__all__ = ["Config", "ConfigsController", "CreateConfig", "UpdateConfig"]

# At most a week; the minimum (MIN_INTERVAL_MINUTES, a setting) is checked with a 422.
IntervalMinutes = Annotated[int, msgspec.Meta(le=10_080, description="Minutes between runs (at most 10080, a week)")]
Timeframes = Annotated[
    list[TimeframeText],
    msgspec.Meta(
        max_length=len(Timeframe), description="Timeframes the venue serves (GET /api/v1/exchanges), e.g. 1m 1h 1d"
    ),
]
# An int4 column: a larger id is a 400 naming config_id, not a driver error.
ConfigId = Annotated[int, id_path(INT4_MAX, "Id of the collection config")]

HistoryStartText = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=64, pattern=NO_NUL_PATTERN,
        description='"listing" (from the symbol\'s first candle on the exchange) or an ISO 8601 date or time '
                    "(UTC unless it has an offset), not in the future",
        examples=["listing", "2024-01-01", "2024-01-01T00:00:00Z"],
    ),
]

_DUPLICATE = "A config for this symbol on this exchange already exists (`extra.config_id`)"


class Config(Schema):
    id: int
    symbol: str
    """As the exchange names it (BTCUSDT), whatever form was sent."""
    exchange: ExchangeChoice
    timeframes: list[TimeframeName]
    interval_minutes: int | None
    """Minutes between scheduled runs; null for a live config."""
    live: bool
    """Collected from the venue's kline stream, continuously (GET /api/v1/live), not on an interval."""
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
    """When it runs next; null while disabled. Not run while paused, whatever it says."""
    history_start: str | None
    """Where a series with no candles yet starts: "listing", an ISO 8601 UTC time, or null (the last
    DEFAULT_HISTORY_CANDLES only)."""
    paused_reason: str | None
    """Set while the symbol does not trade (BREAK, HALT, delisted): the config is not scheduled (a
    trigger still runs it) and resumes by itself when the symbol trades again. Independent of `enabled`."""
    paused_at: datetime | None
    """When the symbol refresh paused it; null while not paused."""


class CreateConfig(Schema):
    symbol: SymbolName
    timeframes: Timeframes
    interval_minutes: IntervalMinutes | None = None
    """Required unless `live`; optional and unused for a live config."""
    live: bool = False
    """Collect continuously instead of on an interval: from the venue's kline stream (binance,
    binance_usdm, bybit, okx), or over REST at each candle's close (coinbase, kraken)."""
    exchange: ExchangeName = DEFAULT_VENUE
    enabled: bool = True
    description: Description | None = None
    history_start: HistoryStartText | None = None
    """null: the last DEFAULT_HISTORY_CANDLES of a series with no candles yet."""


class UpdateConfig(Schema):
    """Only the fields sent change; `description: null` clears the description, `history_start: null`
    the history start."""

    symbol: SymbolName | UnsetType = UNSET
    exchange: ExchangeName | UnsetType = UNSET
    timeframes: Timeframes | UnsetType = UNSET
    interval_minutes: IntervalMinutes | UnsetType | None = UNSET
    live: bool | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    description: Description | UnsetType | None = UNSET
    history_start: HistoryStartText | UnsetType | None = UNSET


def _config(config: CollectionConfig) -> Config:
    # The same fields: the API's struct only adds documentation and enum types for the document.
    return Config(**msgspec.structs.asdict(config))


class ConfigsController(Controller):
    path = "/api/v1/admin/data-collection/configs"
    tags = ["admin"]
    guards = [requires_admin]
    security = BEARER_SECURITY

    @get(operation_id="listConfigs", summary="Collection configs, by id", responses=error_responses(400, 401, 403))
    async def list_configs(
        self,
        configs: ConfigsDep,
        enabled: FromQuery[bool | None] = None,
        exchange: Annotated[ExchangeChoice | None, text_query(max_length=40)] = None,
        skip: Annotated[int, skip_query()] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 100,
    ) -> list[Config]:
        found = await configs.list_configs(enabled=enabled, exchange=exchange, skip=skip, limit=limit)
        return [_config(c) for c in found]

    @post(
        operation_id="createConfig", status_code=201,
        summary="Add a symbol to collect on an interval (first run promptly) or live, from the venue's stream",
        responses=error_responses(400, 401, 403, 409, 413, 415, 422, descriptions={409: _DUPLICATE}),
    )
    async def create_config(
        self, data: JSONBody[CreateConfig], configs: ConfigsDep, request: Request[User, Token, Any]
    ) -> Config:
        created = await configs.create(
            symbol=data.symbol, exchange=data.exchange, timeframes=data.timeframes,
            interval_minutes=data.interval_minutes, enabled=data.enabled, description=data.description,
            created_by=request.user.email, history_start=data.history_start, live=data.live,
        )
        return _config(created)

    @get(
        "/{config_id:int}", operation_id="getConfig", summary="One collection config",
        responses=error_responses(400, 401, 403, 404),
    )
    async def get_config(self, config_id: ConfigId, configs: ConfigsDep) -> Config:
        return _config(await configs.get(config_id))

    @put(
        "/{config_id:int}", operation_id="updateConfig",
        summary="Change some fields of a config (the others stay); the schedule follows at once",
        responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, descriptions={409: _DUPLICATE}),
    )
    async def update_config(
        self, config_id: ConfigId, data: JSONBody[UpdateConfig], configs: ConfigsDep
    ) -> Config:
        changes = ConfigChanges(**msgspec.structs.asdict(data))
        return _config(await configs.update(config_id, changes))

    @delete(
        "/{config_id:int}", operation_id="deleteConfig", status_code=204,
        summary="Delete a config; it is unscheduled at once (its execution logs stay)",
        responses=error_responses(400, 401, 403, 404),
    )
    async def delete_config(self, config_id: ConfigId, configs: ConfigsDep) -> None:
        await configs.delete(config_id)

    @post(
        "/{config_id:int}/enable", operation_id="enableConfig", status_code=200,
        summary="Enable a config; it is scheduled at once",
        responses=error_responses(400, 401, 403, 404),
    )
    async def enable(self, config_id: ConfigId, configs: ConfigsDep) -> Config:
        return _config(await configs.enable(config_id))

    @post(
        "/{config_id:int}/disable", operation_id="disableConfig", status_code=200,
        summary="Disable a config; no further scheduled runs (a run under way finishes)",
        responses=error_responses(400, 401, 403, 404),
    )
    async def disable(self, config_id: ConfigId, configs: ConfigsDep) -> Config:
        return _config(await configs.disable(config_id))

    @post(
        "/{config_id:int}/trigger", operation_id="triggerConfig", status_code=202,
        summary="Run a config now, outside its schedule; returns the task id (409 if its run is active)",
        responses=error_responses(
            400, 401, 403, 404, 409,
            descriptions={409: "A pending or running task already collects this config's series "
                               "(`extra.active_task_id`), or the service is shutting down"},
        ),
    )
    async def trigger(self, config_id: ConfigId, configs: ConfigsDep) -> TaskReply:
        view = await configs.trigger(config_id)
        return TaskReply(
            task_id=view.task_id, status=TaskReplyStatus.SUBMITTED,
            message=f"Collection of config {config_id} submitted. Use the task_id to check status.",
        )

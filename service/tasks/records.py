"""What tasks and execution logs record besides their columns: task params, task results, log metadata.

Each is stored as jsonb and shown by the API as stored. Fields that only some tasks or runs have
default to UNSET and are left out of the JSON when absent, so the JSON is the one written before
these types existed; a row holding `{}` (a skipped run, a row written by hand) reads back with
every optional field absent.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from service.collection.collector import CollectionResult
from service.exchanges.grid import TimeframeName

__all__ = [
    "DATA_COLLECTION",
    "GAP_REPAIR",
    "SCHEDULED_DATA_COLLECTION",
    "SYMBOL_REFRESH",
    "TASK_TYPES",
    "LogMetadata",
    "SymbolRefreshResult",
    "TaskParams",
    "TaskResult",
    "task_params_from_json",
    "task_result_from_json",
]


# Task types; also the job_type of their execution logs.
DATA_COLLECTION = "data_collection"  # started by hand (/start) or by triggering a config
SCHEDULED_DATA_COLLECTION = "scheduled_data_collection"  # a config's run started by the scheduler
SYMBOL_REFRESH = "symbol_refresh"  # a reload of the exchange's symbol list and weight limit
GAP_REPAIR = "gap_repair"  # re-fetches the holes and failed ranges of the coverage ledger
TASK_TYPES: tuple[str, ...] = (DATA_COLLECTION, SCHEDULED_DATA_COLLECTION, SYMBOL_REFRESH, GAP_REPAIR)


class TaskParams(msgspec.Struct, kw_only=True):
    """What a task was asked to do."""

    exchange: str | UnsetType = UNSET
    symbols: list[str] | UnsetType = UNSET
    """The symbols collected, as the exchange names them (collections only)."""
    timeframes: list[TimeframeName] | UnsetType = UNSET
    """Collections only."""
    config_id: int | UnsetType = UNSET
    """The collection config run (a config's run only)."""
    job_name: str | UnsetType = UNSET
    """`collect_data_{config_id}`, the job_name of its execution logs (a config's run only)."""
    start: str | UnsetType = UNSET
    """Where the history collected starts: "listing" or an ISO 8601 UTC time (absent: resume)."""
    end: str | UnsetType = UNSET
    """Where it ends (exclusive, ISO 8601 UTC; absent: up to now)."""


class SymbolRefreshResult(msgspec.Struct, kw_only=True):
    """How a symbol refresh ended."""

    exchange: str
    symbols: int
    """How many symbols the exchange lists."""


#: A finished task's result: a collection's (per series) or a symbol refresh's.
TaskResult = CollectionResult | SymbolRefreshResult


class LogMetadata(msgspec.Struct, kw_only=True):
    """Details of one execution log (a symbol's run, or a symbol refresh)."""

    timeframes: list[TimeframeName] | UnsetType = UNSET
    """The timeframes the run collects for its symbol (collections)."""
    timeframes_collected: int | UnsetType = UNSET
    """How many of them completed (a finished collection)."""
    timeframes_failed: int | UnsetType = UNSET
    """How many of them failed (a finished collection)."""
    records_per_timeframe: dict[str, int] | UnsetType = UNSET
    """Candles written (inserted or changed) per timeframe (a finished collection)."""
    failed_timeframes: dict[str, str] | UnsetType = UNSET
    """The error of each failed timeframe (a finished collection with failures)."""
    records_quarantined: int | UnsetType = UNSET
    """Candles the exchange sent that failed an ingest check: quarantined, not stored (a finished collection)."""
    exchange_gaps: int | UnsetType = UNSET
    """Exchange gaps (ranges the exchange has no candles for) this run found (a finished collection)."""
    symbols: int | UnsetType = UNSET
    """How many symbols the exchange lists (a successful symbol refresh)."""


def task_params_from_json(data: dict[str, Any]) -> TaskParams:
    """A task's stored params, typed."""
    return msgspec.convert(data, TaskParams)


def task_result_from_json(task_type: str, data: dict[str, Any] | None) -> TaskResult | None:
    """A task's stored result, typed by what the task does (None: no result, e.g. cancelled)."""
    if data is None:
        return None
    if task_type == SYMBOL_REFRESH:
        return msgspec.convert(data, SymbolRefreshResult)
    return msgspec.convert(data, CollectionResult)

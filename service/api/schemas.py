"""Shared msgspec base for request and response bodies, the one error shape, and the input bounds.

Every value a client sends is bounded here by what PostgreSQL can take: integers by the column
they address (int4, bigint), strings by a length and by the one character `text` cannot hold
(NUL). Out of bounds is a 400 naming the field, never a 500 from the driver.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar.params import ParameterKwarg, PathParameter, QueryParameter

from service.api.enums import Exchange, ExchangeChoice
from service.exchanges.grid import Timeframe, TimeframeName

__all__ = [
    "INT4_MAX",
    "INT8_MAX",
    "NO_NUL_PATTERN",
    "Description",
    "ErrorBody",
    "ExchangeName",
    "ExchangeQuery",
    "Schema",
    "SymbolName",
    "SymbolQuery",
    "TimeframeQuery",
    "TimeframeText",
    "datetime_to_ms",
    "id_path",
    "ms_to_datetime",
    "skip_query",
    "text_query",
]

#: Largest value of a PostgreSQL `integer` (int4) and `bigint` (int8) column.
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1

#: PostgreSQL `text` holds every character but NUL (U+0000). (Unpaired surrogates cannot reach a
#: string: the JSON decoder refuses them, and query strings are decoded with replacement.)
NO_NUL_PATTERN = "^[^\\x00]*$"

SymbolName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=40, pattern=NO_NUL_PATTERN, description="BTCUSDT or BTC/USDT")
]
# Documented as the Exchange enum; another name is a 422 naming the supported ones.
ExchangeName = Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern=NO_NUL_PATTERN), Exchange]
# A str at run time (an unknown timeframe is a 422 listing the allowed ones); the document shows
# the Timeframe enum (service/api/openapi.py reads the enum from the metadata).
TimeframeText = Annotated[str, msgspec.Meta(min_length=1, max_length=8, pattern=NO_NUL_PATTERN), Timeframe]
Description = Annotated[str, msgspec.Meta(max_length=1000, pattern=NO_NUL_PATTERN)]


def text_query(*, max_length: int, description: str | None = None) -> ParameterKwarg:
    """A free-text query parameter: at most `max_length` characters, no NUL."""
    return QueryParameter(max_length=max_length, pattern=NO_NUL_PATTERN, description=description)


#: The series a read names, as query parameters (/klines, /coverage).
SymbolQuery = Annotated[
    str,
    QueryParameter(
        description="Any spelling: the venue's own (BTCUSDT, BTC-USDT, XBTUSD) or BTC/USDT",
        min_length=1, max_length=40, pattern=NO_NUL_PATTERN,
    ),
]
TimeframeQuery = Annotated[
    TimeframeName, text_query(max_length=8, description="One the venue serves (GET /api/v1/exchanges), e.g. 1m, 1h, 1d")
]
ExchangeQuery = Annotated[ExchangeChoice, text_query(max_length=40, description="The venue (default binance)")]


def skip_query() -> ParameterKwarg:
    """`skip` of a list: an OFFSET, which PostgreSQL takes as a bigint."""
    return QueryParameter(ge=0, le=INT8_MAX, description="Rows to skip (for paging)")


def id_path(column_max: int, description: str) -> ParameterKwarg:
    """A row id in the path, bounded by its column's type so a larger one is a 400, not a driver error."""
    return PathParameter(ge=1, le=column_max, description=description)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms_to_datetime(ms: int) -> datetime:
    """Exchange epoch milliseconds as an aware UTC datetime (exact: no float on the way)."""
    return _EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(value: datetime) -> int:
    """A datetime (naive means UTC) as epoch milliseconds."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(milliseconds=1)


class Schema(msgspec.Struct, kw_only=True):
    """Base of every API body."""


class ErrorBody(Schema):
    """Every 4xx/5xx body: the status again, what is wrong, and details where useful.

    `extra` is always an object (empty when there is nothing to add), so clients read it one way:
    e.g. `unknown_symbols`, `active_task_id`, `errors` (one `{key, message, source}` per invalid
    field of a 400), `request_id` (a 500: the id of the log line with the details).
    """

    status_code: int
    detail: str
    extra: dict[str, Any] = msgspec.field(default_factory=dict)

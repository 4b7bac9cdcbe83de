"""Shared msgspec base for request and response bodies, and the one error shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

__all__ = ["ErrorBody", "Schema", "datetime_to_ms", "ms_to_datetime"]

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
    """Every 4xx/5xx body: the status again, what is wrong, and details where useful."""

    status_code: int
    detail: str
    extra: dict[str, Any] | list[Any] | None = None

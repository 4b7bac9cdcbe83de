"""History ranges as users give them: `start` / `end` (ISO 8601), or `start: "listing"`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from service.errors import InvalidInputError

__all__ = ["LISTING", "HistoryStart", "format_start", "parse_end", "parse_start", "to_ms"]

LISTING: Literal["listing"] = "listing"
#: Where a history starts: epoch ms, or the symbol's first candle on the exchange.
HistoryStart = int | Literal["listing"]


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _parse_time(value: str, field: str) -> int:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(
            f"{field} must be an ISO 8601 date or time (such as 2024-01-01 or 2024-01-01T00:00:00Z)"
            + (' or "listing"' if field.endswith("start") else "") + f", got {value[:40]!r}",
            field=field,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # a time without an offset is UTC, as the exchange's times are
    ms = to_ms(moment)
    if ms < 0:
        raise InvalidInputError(f"{field} must not be before 1970-01-01, got {value[:40]!r}", field=field)
    return ms


def parse_start(value: str, field: str = "start") -> HistoryStart:
    """`"listing"` or an ISO 8601 time as epoch ms; InvalidInputError (422) naming `field` otherwise."""
    if value.strip().lower() == LISTING:
        return LISTING
    return _parse_time(value, field)


def parse_end(value: str, field: str = "end") -> int:
    return _parse_time(value, field)


def format_start(start: HistoryStart | None) -> str | None:
    """How the API shows a history start: "listing", an ISO 8601 UTC time, or null."""
    if start is None or start == LISTING:
        return start
    return datetime.fromtimestamp(start / 1000, UTC).isoformat().replace("+00:00", "Z")

"""The API's closed sets of values, as enums the OpenAPI document names (and generated clients type).

Each mirrors the domain's own constants (tests/api/test_openapi_document.py checks they agree);
the timeframes' enum is the domain's own (service.settings.Timeframe). Fields and parameters hold
plain str at run time and are declared `Annotated[str, TheEnum]` (the `...Name` aliases): the
document shows the enum (service/api/openapi.py), the domain keeps its strings, a stored value is
shown as stored, and an unknown value sent as a filter gets the service's own answer (a 422
listing the allowed values, `require_one_of`, or simply no match) rather than a decoding error.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from service.errors import InvalidInputError
from service.exchanges.venues import Exchange, VenueId

__all__ = [
    "Exchange",
    "ExchangeChoice",
    "LogStatus",
    "LogStatusName",
    "TaskReplyStatus",
    "TaskReplyStatusName",
    "TaskStatus",
    "TaskStatusName",
    "TaskType",
    "TaskTypeName",
    "require_one_of",
]


class TaskStatus(StrEnum):
    """Where a task is: pending and running are active; the others are final."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskReplyStatus(StrEnum):
    """`submitted` when a task was just submitted; after a cancel, the task's status (`cancelled`)."""

    SUBMITTED = "submitted"
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskType(StrEnum):
    """What a task does; also the `job_type` of its execution logs."""

    DATA_COLLECTION = "data_collection"
    SCHEDULED_DATA_COLLECTION = "scheduled_data_collection"
    SYMBOL_REFRESH = "symbol_refresh"
    GAP_REPAIR = "gap_repair"


class LogStatus(StrEnum):
    """How an execution log's run went: running, or ended as success, failed or skipped."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"


#: The venue ids are declared once, in the venue table (service/exchanges/venues.py); the API calls a
#: venue an exchange.
ExchangeChoice = VenueId
TaskStatusName = Annotated[str, TaskStatus]
TaskReplyStatusName = Annotated[str, TaskReplyStatus]
TaskTypeName = Annotated[str, TaskType]
LogStatusName = Annotated[str, LogStatus]


def require_one_of(field: str, value: str | None, allowed: type[StrEnum]) -> None:
    """InvalidInputError (422) naming `field` and listing the allowed values, unless `value` is one (or None)."""
    values = [member.value for member in allowed]
    if value is not None and value not in values:
        raise InvalidInputError(f"unknown {field} {value!r}; one of: {', '.join(values)}", allowed=values)

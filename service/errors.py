"""Domain errors. They say what is wrong in words a user understands; api/errors.py maps them to HTTP."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "ConflictError",
    "DatabaseUnavailableError",
    "DomainError",
    "DuplicateError",
    "InvalidInputError",
    "NotFoundError",
    "RowRefusedError",
    "ServiceUnavailableError",
    "TooManyAttemptsError",
]


class DomainError(Exception):
    """Base of errors a caller can act on."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInputError(DomainError):
    """The request names something that does not exist or is not allowed (unknown symbol, bad timeframe)."""


class NotFoundError(DomainError):
    """The addressed resource does not exist."""


class ConflictError(DomainError):
    """The request collides with work already under way (overlapping collection)."""


class DuplicateError(ConflictError):
    """A row with the same unique key exists already; `constraint` names the unique constraint.

    The constraint stays out of `extra` (the error body): it names the schema, not the user's request.
    Callers that know what the constraint means catch this and say so in their own words.
    """

    def __init__(self, detail: str, *, constraint: str | None) -> None:
        super().__init__(detail)
        self.constraint = constraint


class RowRefusedError(InvalidInputError):
    """PostgreSQL refused a value: a check constraint (named by `constraint`) or a value it cannot
    read as its column's type (`constraint` None). Like DuplicateError's, the constraint stays out
    of `extra`."""

    def __init__(self, detail: str, *, constraint: str | None) -> None:
        super().__init__(detail)
        self.constraint = constraint


class ServiceUnavailableError(DomainError):
    """A dependency (database, exchange) cannot answer right now."""


class DatabaseUnavailableError(ServiceUnavailableError):
    """The database cannot be reached, or dropped the connection in the middle of the work."""


class AuthenticationError(DomainError):
    """The credentials are wrong; never says which part (an unknown email looks like a wrong password)."""


class TooManyAttemptsError(DomainError):
    """Too many failed attempts lately; `retry_after` is how many seconds until the next is allowed."""

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after

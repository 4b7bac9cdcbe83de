"""One typed settings object, read once from the environment and passed down explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

__all__ = ["TIMEFRAMES", "Settings", "SettingsError"]

#: Binance's kline intervals; the only timeframes the service accepts.
TIMEFRAMES: tuple[str, ...] = (
    "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M",
)

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, lt=1)]


class SettingsError(ValueError):
    """A bad environment value; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Service configuration. Each attribute is read from the upper-cased environment variable."""

    database_url: str | None = None
    """PostgreSQL URL (postgres:// or postgresql://). Unset: an embedded PostgreSQL is started."""
    embedded_pg_dir: str = "./.data/postgres"
    """Data directory of the embedded PostgreSQL."""
    host: str = "0.0.0.0"  # noqa: S104 - a service in a dyno/container listens on all interfaces
    """Address the HTTP server binds."""
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    """HTTP port (Heroku sets PORT)."""
    binance_api_url: str = "https://api.binance.com"
    """Base URL of Binance's spot REST API."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    max_concurrent_tasks: PositiveInt = 5
    """Collection tasks running at once; the rest wait as pending."""
    task_cleanup_delay: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    """Seconds a finished task stays in memory (it stays in the database for good)."""
    default_history_candles: PositiveInt = 100
    """Candles fetched for a series that has no data yet."""
    binance_weight_limit: PositiveInt | None = None
    """Request-weight budget per minute; unset: learnt from exchangeInfo's rateLimits."""
    binance_weight_margin: Fraction = 0.03
    """Share of the weight budget kept unused, for clock skew and requests in flight."""
    binance_max_concurrency: PositiveInt = 32
    """Requests in flight to the exchange at once."""
    binance_timeout: PositiveFloat = 10.0
    """Seconds before one exchange request is abandoned (and retried)."""
    binance_retry_attempts: PositiveInt = 5
    """Attempts per request on timeouts, dropped connections and 5xx."""
    binance_retry_wait: PositiveFloat = 0.5
    """First backoff in seconds (doubling, with as much jitter, capped at 30 times this)."""
    binance_weight_fallback: PositiveInt = 1200
    """Weight budget used until exchangeInfo has told the real one (Binance's older, lower limit)."""
    pages_ahead: PositiveInt = 2
    """Pages of one series fetched ahead of the page being written."""
    db_pool_min: Annotated[int, msgspec.Meta(ge=0)] = 2
    db_pool_max: Annotated[int, msgspec.Meta(ge=3)] = 10
    db_write_connections: PositiveInt = 2
    """Pool connections collection may hold at once; the rest stay free for the API and scheduler.

    Two writers keep PostgreSQL busy; more only add contention on a small machine."""
    db_retry_seconds: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    """Seconds a candle page keeps being retried on fresh connections while the database is away.

    A restart or a terminated connection costs a pause, not a failed series; past this the series
    fails and the next run resumes it."""
    symbol_refresh_interval: Annotated[float, msgspec.Meta(ge=60)] = 3600.0
    """Seconds between refreshes of the symbols table (and of the learnt weight limit)."""
    scheduler_enabled: bool = True
    """Run stored collection configs on their intervals (false: an API-only process)."""
    min_interval_minutes: PositiveInt = 1
    """Smallest interval_minutes a collection config may have."""
    log_retention_days: PositiveInt = 30
    """Execution logs and finished tasks older than this are deleted daily."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; empty values count as unset."""
        env = os.environ if environ is None else environ
        raw = {
            name: env[name.upper()]
            for name in cls.__struct_fields__
            if env.get(name.upper(), "") != ""
        }
        try:
            settings = msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(_name_the_variable(str(exc))) from None
        if settings.db_write_connections > settings.db_pool_max - 2:
            raise SettingsError(
                f"DB_WRITE_CONNECTIONS: must leave two of DB_POOL_MAX ({settings.db_pool_max}) free for the API"
            )
        if settings.database_url is not None:
            settings = msgspec.structs.replace(settings, database_url=normalise_dsn(settings.database_url))
        return settings

    @property
    def embedded_pg_path(self) -> Path:
        return Path(self.embedded_pg_dir).expanduser().resolve()


def normalise_dsn(url: str) -> str:
    """Heroku hands out postgres://; asyncpg and SQLAlchemy want postgresql://."""
    if url.startswith("postgres://"):
        return "postgresql://" + url.removeprefix("postgres://")
    if not url.startswith("postgresql://"):
        raise SettingsError(f"DATABASE_URL must start with postgres:// or postgresql://, got {url.split(':', 1)[0]!r}")
    return url


def _name_the_variable(message: str) -> str:
    """msgspec says `at $.max_concurrent_tasks`; users set MAX_CONCURRENT_TASKS."""
    if " - at `$." in message:
        what, where = message.rsplit(" - at `$.", 1)
        return f"{where.rstrip('`').upper()}: {what}"
    return message

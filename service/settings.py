"""One typed settings object, read once from the environment and passed down explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

from service.exchanges.venues import VENUES

__all__ = ["Settings", "SettingsError", "VenueSettings"]


PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, lt=1)]


class SettingsError(ValueError):
    """A bad environment value; the message names the variable."""


class VenueSettings(msgspec.Struct, frozen=True, kw_only=True):
    """One venue's settings, each read from `<VENUE>_<NAME>`: BINANCE_TIMEOUT, OKX_API_URL, …"""

    api_url: str
    """Base URL of the venue's REST API (http or https, with a host); default: the venue's own."""
    ws_url: str | None = None
    """Base URL of the venue's kline stream host (ws or wss), as the venue documents it (Binance:
    `wss://stream.binance.com:9443`); default: the venue's own; none where live mode is not built yet."""
    weight_limit: PositiveInt | None = None
    """The venue's request limit in its own unit and window (Binance weight per minute, Bybit requests
    per 5 s…); unset: learnt from the venue where it says (Binance), else its documented number."""
    weight_margin: Fraction = 0.03
    """Share of the limit kept unused, for clock skew and requests in flight."""
    weight_fallback: PositiveInt | None = None
    """The limit used until the venue has told its own (Binance's older 1200 when unset)."""
    max_concurrency: PositiveInt = 32
    """Requests in flight to the venue at once."""
    timeout: PositiveFloat = 10.0
    """Seconds before one request is abandoned (and retried)."""
    retry_attempts: PositiveInt = 5
    """Attempts per request on timeouts, dropped connections and 5xx."""
    retry_wait: PositiveFloat = 0.5
    """First backoff in seconds (doubling, with as much jitter, capped at 30 times this)."""


_VENUE_FIELDS = VenueSettings.__struct_fields__


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
    max_body_bytes: PositiveInt = 1_048_576
    """Largest request body accepted; a larger one is a 413 before it is parsed."""
    cors_origins: str | None = None
    """Comma-separated origins (https://app.example) allowed to call the API from a browser; unset: CORS off."""
    metrics_token: Annotated[str, msgspec.Meta(min_length=16)] | None = None
    """Unset: GET /metrics is public. Set: it requires `Authorization: Bearer <METRICS_TOKEN>`
    (Prometheus's `authorization` scrape setting); at least 16 characters."""
    metrics_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    """A `worker` serves GET /metrics on this port (on HOST); unset: no HTTP at all.

    `serve` answers /metrics on PORT."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    max_concurrent_tasks: PositiveInt = 5
    """Collection tasks running at once; the rest wait as pending."""
    task_cleanup_delay: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    """Seconds a finished task stays in memory (it stays in the database for good)."""
    default_history_candles: PositiveInt = 100
    """Candles fetched for a series that has no data yet."""
    exchanges: str = ",".join(VENUES)
    """Comma-separated venues this deployment collects from (`binance,okx`); default every venue. A
    venue left out is never called."""
    venues: dict[str, VenueSettings] = msgspec.field(default_factory=dict)
    """Each enabled venue's settings (from `<VENUE>_<NAME>`; not an environment variable itself)."""
    weight_budget_scope: Literal["shared", "per_process"] = "shared"
    """Whose weight budget a process spends: `shared` by every process on the database (they share one
    IP), through PostgreSQL; `per_process` for replicas that each have their own egress IP."""
    pages_ahead: PositiveInt = 2
    """Pages of one series fetched ahead of the page being written."""
    db_pool_min: Annotated[int, msgspec.Meta(ge=0)] = 2
    db_pool_max: Annotated[int, msgspec.Meta(ge=3)] = 10
    db_write_connections: PositiveInt = 2
    """Pool connections collection may hold at once; the rest stay free for the API and scheduler.

    Two writers keep PostgreSQL busy; more only add contention on a small machine."""
    db_statement_cache_size: Annotated[int, msgspec.Meta(ge=0)] = 100
    """Prepared statements kept per database connection (asyncpg's default, 100).

    0 for PgBouncer in transaction pooling mode: statements are then never kept on a server
    connection, which the next transaction may not get back."""
    db_retry_seconds: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    """Seconds a candle page keeps being retried on fresh connections while the database is away.

    A restart or a terminated connection costs a pause, not a failed series; past this the series
    fails and the next run resumes it."""
    symbol_refresh_interval: Annotated[float, msgspec.Meta(ge=60)] = 3600.0
    """Seconds between refreshes of the symbols table (and of the learnt weight limit)."""
    gap_repair_interval: Annotated[float, msgspec.Meta(ge=60)] = 6 * 3600.0
    """Seconds between scheduled gap repairs: holes and failed ranges of every enabled, trading config's
    series are fetched again."""
    exchange_gap_recheck_after: Annotated[float, msgspec.Meta(ge=0)] = 24 * 3600.0
    """Seconds after which a gap repair fetches a confirmed exchange gap once more (the exchange
    sometimes re-publishes history); after that re-check it is left alone."""
    scheduler_enabled: bool = True
    """Run stored collection configs on their intervals (false: an API-only process)."""
    min_interval_minutes: PositiveInt = 1
    """Smallest interval_minutes a collection config may have."""
    log_retention_days: PositiveInt = 30
    """Execution logs and finished tasks older than this are deleted daily."""
    secret_key: Annotated[str, msgspec.Meta(min_length=32)] | None = None
    """Signs the login tokens (HS256). Required with DATABASE_URL; embedded: generated once and kept
    beside the data directory."""
    access_token_expire_minutes: PositiveInt = 60
    """Minutes a login token stays valid."""
    admin_email: Annotated[str, msgspec.Meta(max_length=320, pattern=r"^\s*[^@\s]+@[^@\s]+\s*$")] | None = None
    """With ADMIN_PASSWORD: this admin is created, or given that password, at every start."""
    admin_password: Annotated[str, msgspec.Meta(min_length=8, max_length=1024)] | None = None
    public_reads: bool = True
    """GETs of /api/v1/data-collector and /api/v1/klines need no token (false: any valid token)."""
    trusted_proxy_count: Annotated[int, msgspec.Meta(ge=0, le=10)] = 0
    """Proxies in front of the service that append to X-Forwarded-For (Heroku: 1); 0 ignores the header."""
    web_runs_tasks: bool = True
    """`serve` also claims and runs tasks and the schedule (false: API only; run `kline-collector worker`)."""
    lease_seconds: Annotated[float, msgspec.Meta(ge=1)] = 30.0
    """A process whose heartbeat is older than this is dead; a peer takes its tasks back and resumes them."""
    task_poll_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """How often an idle process looks for tasks and cancel requests when no notification came."""
    shutdown_grace_seconds: Annotated[float, msgspec.Meta(ge=1)] = 20.0
    """On SIGTERM, seconds for running tasks to stop and be handed back before the process exits."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; empty values count as unset."""
        env = os.environ if environ is None else environ
        raw: dict[str, object] = {
            name: env[name.upper()]
            for name in cls.__struct_fields__
            if name != "venues" and env.get(name.upper(), "") != ""
        }
        enabled = _venue_list(str(raw.get("exchanges", ",".join(VENUES))))
        raw["venues"] = {venue: _venue_settings(venue, env) for venue in enabled}
        try:
            settings = msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(_name_the_variable(str(exc))) from None
        if settings.db_write_connections > settings.db_pool_max - 2:
            raise SettingsError(
                f"DB_WRITE_CONNECTIONS: must leave two of DB_POOL_MAX ({settings.db_pool_max}) free for the API"
            )
        if settings.database_url is not None:
            database_url = normalise_dsn(settings.database_url)
            _check_url("DATABASE_URL", database_url, ("postgresql",), host_required=False)
            settings = msgspec.structs.replace(settings, database_url=database_url)
        for venue, venue_settings in settings.venues.items():
            _check_url(f"{VENUES[venue].setting_prefix}_API_URL", venue_settings.api_url, ("http", "https"),
                       host_required=True)
            if venue_settings.ws_url is not None:
                _check_url(f"{VENUES[venue].setting_prefix}_WS_URL", venue_settings.ws_url, ("ws", "wss"),
                           host_required=True)
        for origin in settings.cors_origin_list:
            _check_origin(origin)
        if (settings.admin_email is None) != (settings.admin_password is None):
            missing = "ADMIN_PASSWORD" if settings.admin_password is None else "ADMIN_EMAIL"
            raise SettingsError(f"{missing}: ADMIN_EMAIL and ADMIN_PASSWORD go together; set both or neither")
        return settings

    def __repr__(self) -> str:
        # Settings end up in tracebacks and debug output: never with the key or the admin password.
        hidden = {"secret_key", "admin_password"}
        fields = ", ".join(
            f"{name}={'***' if name in hidden and getattr(self, name) is not None else repr(getattr(self, name))}"
            for name in self.__struct_fields__
        )
        return f"Settings({fields})"

    @classmethod
    def env_names(cls) -> set[str]:
        """Every environment variable the settings read, lower-cased (OKX_TIMEOUT -> okx_timeout)."""
        names = set(cls.__struct_fields__) - {"venues"}
        return names | {f"{spec.setting_prefix}_{field}".lower() for spec in VENUES.values() for field in _VENUE_FIELDS}

    @property
    def enabled_venues(self) -> tuple[str, ...]:
        """The venues this deployment collects from, in the order of the venue table."""
        return tuple(self.venues)

    @property
    def embedded_pg_path(self) -> Path:
        return Path(self.embedded_pg_dir).expanduser().resolve()

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        """CORS_ORIGINS as a tuple (empty: CORS off)."""
        if self.cors_origins is None:
            return ()
        return tuple(origin.strip() for origin in self.cors_origins.split(",") if origin.strip())


def normalise_dsn(url: str) -> str:
    """Heroku hands out postgres://; asyncpg and SQLAlchemy want postgresql://."""
    if url.startswith("postgres://"):
        return "postgresql://" + url.removeprefix("postgres://")
    if not url.startswith("postgresql://"):
        raise SettingsError(f"DATABASE_URL must start with postgres:// or postgresql://, got {url.split(':', 1)[0]!r}")
    return url


def _check_url(variable: str, url: str, schemes: tuple[str, ...], *, host_required: bool) -> None:
    """SettingsError naming `variable` unless `url` is a usable URL of one of `schemes`.

    The value itself is never repeated: a database URL holds a password.
    """
    expected = " or ".join(f"{scheme}://" for scheme in schemes)
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise SettingsError(f"{variable}: must be a URL ({expected}...) without spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in 0..65535
    except ValueError as exc:
        raise SettingsError(f"{variable}: not a usable URL ({exc})") from None
    if parts.scheme not in schemes:
        raise SettingsError(f"{variable}: must be a URL starting with {expected}")
    if host_required and not parts.hostname:
        raise SettingsError(f"{variable}: the URL has no host")


def _check_origin(origin: str) -> None:
    """A CORS origin is a scheme and a host (and port), nothing more: https://app.example:8443."""
    _check_url("CORS_ORIGINS", origin, ("http", "https"), host_required=True)
    parts = urlsplit(origin)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise SettingsError(f"CORS_ORIGINS: {origin!r} is not an origin (scheme://host[:port], no path)")


def _venue_list(value: str) -> list[str]:
    """EXCHANGES as venue ids in the venue table's order; SettingsError naming an unknown one."""
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in VENUES]
    if unknown:
        raise SettingsError(f"EXCHANGES: unknown venue {', '.join(map(repr, unknown))}; one of: {', '.join(VENUES)}")
    if not names:
        raise SettingsError("EXCHANGES: name at least one venue")
    return [venue for venue in VENUES if venue in names]


def _venue_settings(venue: str, env: Mapping[str, str]) -> VenueSettings:
    """One venue's settings from `<VENUE>_<NAME>` variables, its own URL by default."""
    prefix = VENUES[venue].setting_prefix
    raw: dict[str, str | None] = {"api_url": VENUES[venue].default_url, "ws_url": VENUES[venue].default_ws_url}
    for field in _VENUE_FIELDS:
        value = env.get(f"{prefix}_{field.upper()}", "")
        if value != "":
            raw[field] = value
    try:
        return msgspec.convert(raw, VenueSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_name_the_variable(str(exc), prefix=f"{prefix}_")) from None


def _name_the_variable(message: str, *, prefix: str = "") -> str:
    """msgspec says `at $.max_concurrent_tasks` (or `at $.timeout` of a venue's); users set
    MAX_CONCURRENT_TASKS (OKX_TIMEOUT)."""
    if " - at `$." in message:
        what, where = message.rsplit(" - at `$.", 1)
        where = where.rstrip("`")
        return f"{prefix}{where.upper()}: {what}"
    return message

"""Command line: `kline-collector serve | worker | migrate | create-user | healthcheck`.

Each setting is an environment variable.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

import click
import msgspec
import uvicorn

from service.auth.secret_key import with_secret_key
from service.db.embedded import EmbeddedPostgres, start_embedded_postgres
from service.db.migrate import is_at_head, migrate_if_behind, upgrade
from service.errors import DatabaseUnavailableError
from service.exchanges.venues import DEFAULT_VENUE, Exchange
from service.logging import configure_logging, get_logger
from service.settings import Settings, SettingsError

if TYPE_CHECKING:
    from service.auth.users import User

__all__ = ["main"]

log = get_logger(__name__)


def _settings(*, serving: bool = False) -> Settings:
    """The settings, or exit 2 naming the bad variable; `serving` also needs the token key (SECRET_KEY)."""
    try:
        settings = Settings.from_env()
        return with_secret_key(settings) if serving else settings
    except SettingsError as exc:
        click.echo(f"kline-collector: bad setting: {exc}", err=True)
        sys.exit(2)


class _StopRequest:
    """A SIGTERM or SIGINT that arrived before uvicorn took the signals over, kept for the next safe point.

    The default SIGTERM action kills the process on the spot, leaving the embedded PostgreSQL it
    was starting (or had started) running; instead start-up finishes its current step, then unwinds.
    """

    def __init__(self) -> None:
        self.signal: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum  # nothing else: a handler may interrupt any line, logging included

    def pending(self) -> bool:
        """Whether a signal came in; logs it once when it did."""
        if self.signal is None:
            return False
        log.info("start_up_interrupted", signal=signal.Signals(self.signal).name)
        return True


@contextmanager
def _signals_deferred() -> Iterator[_StopRequest]:
    """SIGTERM and SIGINT recorded instead of acted on, until the block ends (uvicorn restores this handler)."""
    request = _StopRequest()
    previous = {sig: signal.signal(sig, request.handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Server(uvicorn.Server):
    """uvicorn's server, told at once about a signal that came in while start-up was deferring them."""

    def __init__(self, config: uvicorn.Config, stop: _StopRequest) -> None:
        super().__init__(config)
        self._stop = stop

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            if self._stop.signal is not None:
                self.handle_exit(self._stop.signal, None)  # start up and shut down at once
            yield


@contextmanager
def _database(settings: Settings) -> Iterator[tuple[str, EmbeddedPostgres | None]]:
    """The DSN to use: DATABASE_URL, or an embedded server started here (and stopped on exit)."""
    if settings.database_url is not None:
        yield settings.database_url, None
        return
    log.info("embedded_postgres_starting", pgdata=str(settings.embedded_pg_path))
    server = start_embedded_postgres(settings.embedded_pg_path)
    try:
        yield server.dsn, server
    finally:
        server.stop()


@click.group()
@click.version_option(package_name="kline-collector", prog_name="kline-collector")
def main() -> None:
    """kline-collector: exchange candles into PostgreSQL. Configured by environment variables (docs/settings.md)."""


@main.command()
@click.option(
    "--symbols", required=True, metavar="LIST",
    help="Comma-separated symbols in any spelling: the venue's own (BTCUSDT, BTC-USDT, XBTUSD) or BTC/USDT.",
)
@click.option(
    "--timeframes", required=True, metavar="LIST",
    help="Comma-separated timeframes (1m,1h), unified names; each venue serves its own set.",
)
@click.option(
    "--exchange", default=DEFAULT_VENUE, show_default=True, type=click.Choice([v.value for v in Exchange]),
    help="The venue to collect from (it must be enabled: env var EXCHANGES).",
)
@click.option(
    "--history-candles", type=click.IntRange(min=1), default=None, metavar="N",
    help="Candles fetched for a series that has none stored yet "
    "[env var: DEFAULT_HISTORY_CANDLES; default: 100]. A stored series resumes at its newest candle.",
)
@click.option(
    "--since", default=None, metavar="WHEN",
    help='Where the history starts: "listing" (the symbol\'s first candle) or an ISO 8601 date or time. '
    "Only what the coverage ledger does not hold as verified is fetched. Unset: each series resumes.",
)
@click.option(
    "--until", default=None, metavar="WHEN",
    help="Where it ends (exclusive), ISO 8601; needs --since. Unset: up to now.",
)
def collect(
    symbols: str, timeframes: str, exchange: str, history_candles: int | None, since: str | None, until: str | None
) -> None:
    """Collect every symbol x timeframe once, with progress bars (DATABASE_URL, or the embedded server).

    The run is a task like one started through the API: a service on the same database shows it,
    and refuses it (exit 1, naming the active task) while one of its series is being collected.
    Ctrl-C (SIGINT) or SIGTERM cancels it: the task is recorded cancelled with what it wrote, those
    candles are kept, and the process exits 130 (143 for SIGTERM). Exit 1 if a series failed,
    2 for an unknown symbol or timeframe.
    """
    settings = _settings()
    if history_candles is not None:
        settings = msgspec.structs.replace(settings, default_history_candles=history_candles)
    # Only warnings: the progress bars are the output (LOG_LEVEL=DEBUG still shows everything).
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level, settings.log_format)
    from service.collect_command import run_collect  # imported late, like the app in `serve`

    with _signals_deferred() as stop, _database(settings) as (dsn, _):
        if not stop.pending():
            _migrate_if_reachable(dsn, settings)
        code = asyncio.run(
            run_collect(
                settings, dsn, symbols, timeframes, exchange=exchange, since=since, until=until,
                early_signal=lambda: stop.signal,
            )
        )
    sys.exit(code)


@main.command()
def status() -> None:
    """Print the service's state from the database: live workers, active tasks with their progress,
    configs and the last runs (DATABASE_URL, or the embedded server). Works with or without a service
    running; exit 1 if the database does not answer."""
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    from service.status_command import read_status

    with _signals_deferred(), _database(settings) as (dsn, _):
        try:
            lines = asyncio.run(read_status(dsn, statement_cache_size=settings.db_statement_cache_size))
        except DatabaseUnavailableError as exc:
            click.echo(f"kline-collector: no status: {exc.detail}", err=True)
            sys.exit(1)
    click.echo("\n".join(lines))


@main.command()
def serve() -> None:
    """Apply migrations and serve the API (HOST, PORT); embedded PostgreSQL unless DATABASE_URL is set."""
    settings = _settings(serving=True)
    configure_logging(settings.log_level, settings.log_format)
    # A signal during start-up stops it at the next step, never half-way through starting PostgreSQL.
    with _signals_deferred() as stop, _database(settings) as (dsn, server):
        if stop.pending():
            return
        _migrate_if_reachable(dsn, settings)
        if stop.pending():
            return
        from service.app import create_app  # imported late: start-up errors above print faster

        app = create_app(settings, dsn, on_shutdown=[server.stop] if server is not None else [])
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,  # one structured `http_request` line per response instead (api/middleware.py)
            lifespan="on",
            timeout_graceful_shutdown=3,
        )
        _Server(config, stop).run()


@main.command()
def worker() -> None:
    """Run the scheduler and claim tasks, without HTTP (a Heroku worker dyno, a compose `worker`).

    Any number of workers and web processes share one database: each claims tasks up to
    MAX_CONCURRENT_TASKS, and on SIGTERM hands its running tasks back for a peer to resume.
    """
    settings = _settings(serving=True)
    configure_logging(settings.log_level, settings.log_format)
    with _signals_deferred() as stop, _database(settings) as (dsn, _):
        if stop.pending():
            return
        _migrate_if_reachable(dsn, settings)
        if stop.pending():
            return
        asyncio.run(_run_worker(settings, dsn, stop))


async def _run_worker(settings: Settings, dsn: str, stop: _StopRequest) -> None:
    from service.process.runtime import open_runtime  # imported late, like the app in `serve`

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if stop.signal is not None:  # came in while the loop was starting
        stopping.set()
    async with contextlib.AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(open_runtime(settings, dsn, runs_tasks=True, kind="worker"))
        if settings.metrics_port is not None:
            from service.process.worker_http import metrics_server

            await stack.enter_async_context(metrics_server(runtime, host=settings.host, port=settings.metrics_port))
            log.info("worker_metrics_serving", port=settings.metrics_port)
        log.info("worker_ready")
        await stopping.wait()
        log.info("worker_stopping")


def _migrate_if_reachable(dsn: str, settings: Settings) -> None:
    """Apply missing migrations now; with the database down, leave them to the app's background start."""
    try:
        if not is_at_head(dsn, statement_cache_size=settings.db_statement_cache_size):
            upgrade(dsn, statement_cache_size=settings.db_statement_cache_size)
    except DatabaseUnavailableError as exc:
        log.warning("database_unreachable_at_start", error=exc.detail)


@main.command()
def migrate() -> None:
    """Apply database migrations (DATABASE_URL, or the embedded server) and exit."""
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    with _signals_deferred() as stop, _database(settings) as (dsn, _):
        if stop.pending():
            sys.exit(1)
        try:
            upgrade(dsn, statement_cache_size=settings.db_statement_cache_size)
        except DatabaseUnavailableError as exc:
            # One line saying which database and why, not a traceback: a release phase shows it as is.
            click.echo(f"kline-collector: migrations not applied: {exc.detail}", err=True)
            sys.exit(1)
    log.info("migrations_applied")


@main.command()
@click.option("--timeout", type=float, default=3.0, show_default=True, help="Seconds to wait for the answer.")
def healthcheck(timeout: float) -> None:
    """Exit 0 if the server on this machine answers GET /health (on PORT) with 200, else 1.

    For a container's HEALTHCHECK: it only asks the running server, and starts or opens nothing else.
    """
    import http.client
    import urllib.error
    import urllib.request

    try:
        port = Settings.from_env().port
    except SettingsError as exc:
        click.echo(f"unhealthy: bad setting: {exc}", err=True)
        sys.exit(1)
    url = f"http://127.0.0.1:{port}/health"
    # No proxy: an HTTP_PROXY meant for outgoing traffic must not carry a loopback probe away.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            status: int = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, http.client.HTTPException) as exc:
        click.echo(f"unhealthy: {url}: {exc}", err=True)
        sys.exit(1)
    if status != 200:
        click.echo(f"unhealthy: {url} answered {status}", err=True)
        sys.exit(1)
    click.echo(f"healthy: {url} answered 200")


@main.command("create-user")
@click.option("--email", required=True, help="The account's email (unique whatever its case).")
@click.option("--admin", is_flag=True, help="Make it an admin (admin routes need one). Never demotes an admin.")
@click.option(
    "--password-stdin", is_flag=True,
    help="Read the password from the first line of standard input; without it, a hidden prompt on a terminal.",
)
def create_user(email: str, admin: bool, password_stdin: bool) -> None:
    """Create an account, or set the password of an existing one (DATABASE_URL, or the embedded server).

    The password is never a command-line argument: other users can read those in the process list.
    """
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        click.echo("kline-collector: no terminal to ask for the password on: use --password-stdin", err=True)
        sys.exit(2)
    from service.auth.accounts import check_new_credentials
    from service.errors import InvalidInputError

    try:
        email = check_new_credentials(email, password)
    except InvalidInputError as exc:
        click.echo(f"kline-collector: {exc.detail}", err=True)
        sys.exit(2)
    with _database(settings) as (dsn, _):
        asyncio.run(migrate_if_behind(dsn, statement_cache_size=settings.db_statement_cache_size))
        user, created = asyncio.run(_save_user(dsn, email, password, admin, settings.db_statement_cache_size))
    role = "admin" if user.is_admin else "user"
    click.echo(f"{'created' if created else 'updated'} {role} {user.email} (id {user.id})")


async def _save_user(
    dsn: str, email: str, password: str, is_admin: bool, statement_cache_size: int
) -> tuple[User, bool]:
    from service.auth.accounts import save_user
    from service.auth.passwords import PasswordHasher
    from service.db.pool import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=1, statement_cache_size=statement_cache_size)
    try:
        return await save_user(pool, PasswordHasher(), email=email, password=password, is_admin=is_admin)
    finally:
        await pool.close()

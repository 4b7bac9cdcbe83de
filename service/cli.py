"""Command line: `kline-collector serve | migrate`. Each setting is an environment variable."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
import uvicorn

from service.db.embedded import EmbeddedPostgres, start_embedded_postgres
from service.db.migrate import is_at_head, upgrade
from service.logging import configure_logging, get_logger
from service.settings import Settings, SettingsError

__all__ = ["main"]

log = get_logger(__name__)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        click.echo(f"kline-collector: bad setting: {exc}", err=True)
        sys.exit(2)


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
def main() -> None:
    """kline-collector: exchange candles into PostgreSQL. Configured by environment variables (see README)."""


@main.command()
def serve() -> None:
    """Apply migrations and serve the API (HOST, PORT); embedded PostgreSQL unless DATABASE_URL is set."""
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    with _database(settings) as (dsn, server):
        if not is_at_head(dsn):
            upgrade(dsn)
        from service.app import create_app  # imported late: start-up errors above print faster

        app = create_app(settings, dsn, on_shutdown=[server.stop] if server is not None else [])
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=3,
        )
        uvicorn.Server(config).run()


@main.command()
def migrate() -> None:
    """Apply database migrations (DATABASE_URL, or the embedded server) and exit."""
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    with _database(settings) as (dsn, _):
        upgrade(dsn)
    log.info("migrations_applied")

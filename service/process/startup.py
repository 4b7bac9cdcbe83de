"""The start-up work that needs the database, run in the background until it succeeds.

A web process must bind its port and answer /health even while the database is down (a Heroku
dyno whose add-on is restarting, a container started before its database): the migration check,
the recovery of interrupted work, the first symbol refresh and the scheduler wait here, retried
with capped exponential backoff, instead of failing the process. Until they are done the API
answers 503 (`require_started` in service/api/startup.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from service.errors import ServiceUnavailableError
from service.logging import get_logger

__all__ = ["DatabaseStart"]

log = get_logger(__name__)


class DatabaseStart:
    """Runs `work` in a named task, again after each failure (0.5 s, doubling, at most `max_wait`), until it succeeds.

    `work` must be safe to run again after it failed part-way. `stop()` ends the retries at once.
    """

    def __init__(self, work: Callable[[], Awaitable[None]], *, first_wait: float = 0.5, max_wait: float = 10.0) -> None:
        self._work = work
        self._first_wait = first_wait
        self._max_wait = max_wait
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Raise ServiceUnavailableError while the work has not succeeded yet."""
        if not self._done.is_set():
            raise ServiceUnavailableError(
                "the service is starting: waiting for the database", error="Starting"
            )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="database-start")

    async def wait_first_attempt(self, timeout: float) -> None:
        """Wait until the first attempt has ended (or `timeout`): with the database up, the service is
        then fully started before it takes requests; with it down, start-up goes on without it."""
        try:
            async with asyncio.timeout(timeout):
                await self._first_attempt.wait()
        except TimeoutError:
            log.info("database_start_pending", after_seconds=timeout)

    async def _run(self) -> None:
        wait = self._first_wait
        attempt = 1
        while not self._stopping.is_set():
            try:
                await self._work()
            except Exception as exc:  # anything: a migration or recovery error is retried too, and logged
                log.warning(
                    "database_start_failed", attempt=attempt, error=f"{type(exc).__name__}: {exc}"[:500],
                    retry_in_seconds=wait,
                )
            else:
                self._done.set()
                log.info("database_start_done", attempt=attempt)
                return
            finally:
                self._first_attempt.set()
            try:
                async with asyncio.timeout(wait):
                    await self._stopping.wait()
            except TimeoutError:
                pass
            wait = min(wait * 2, self._max_wait)
            attempt += 1

    async def stop(self) -> None:
        """End the retries; an attempt in flight is cancelled."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

"""The guard against creep: how many statements the service sends PostgreSQL for a fixed workload.

Counted on the wire (tests/pg_wire.py) from POST /start until the task has ended, in a service
that has run once already, for ten one-page series and for one series of ten pages. The budgets
below are stated numbers: a feature that adds a statement per page (or per series, or per run)
fails here, and whoever means it raises the number in the same change, saying why.

Left out, as they depend on time or on which pool connection ran what rather than on the
workload: progress (written at most once a second), the test's own polling of the task row, and
asyncpg's type introspection (once per connection and type). The background loops (heartbeat,
polling, schedule) are set far apart, so nothing else reaches the database meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from service.settings import Settings
from tests.collection.test_collect import MINUTE, T0, frozen_at
from tests.conftest import Api, serve_app
from tests.fakes.binance import FakeBinance
from tests.pg_wire import Statement, WireCounter, counting_proxy, split_page_writes

SYMBOLS = [f"S{i}USDT" for i in range(10)]
# One second into a minute: the shared weight budget's minute window does not turn during the test.
OPEN = T0 - 30_000
NOW = OPEN + 1_000

# Statements of a run outside its page writes, whatever its size: POST /start (symbol lookup, and
# the task's insert under the submission lock: 7), the claim and its wake-ups (3), the execution
# logs opened and closed (2), the run's series (1), the shared weight budget (1-2), the task's end
# (4). Today 18-21.
RUN_STATEMENTS = 22
# A page write: one COPY (BEGIN and SET LOCAL ride in its round trip), one ledger statement, COMMIT.
# Many series' pages share one such transaction; a series' own pages are written one transaction
# each, in order.
STATEMENTS_PER_WRITE = 3
# Ten one-page series fetched at once: the first pages go as soon as a writer is free, the others
# gather in the next batches (2 writers). Today 3-4.
TEN_SERIES_WRITES = 6


@pytest.fixture
def quiet_settings(make_settings: Callable[..., Settings]) -> Callable[[str], Settings]:
    def make(dsn: str) -> Settings:
        # Background loops far apart: during the run only the run talks to the database.
        return make_settings(
            database_url=dsn, lease_seconds=600.0, task_poll_seconds=60.0, scheduler_enabled=False,
            default_history_candles=10_000,
        )

    return make


def _not_the_workload(statement: Statement) -> bool:
    """Statements whose number depends on time or on which pool connection ran what, not on the
    workload: progress (at most once a second), the test's own polling of the task (it reads the
    task row until the task is claimed), and asyncpg's introspection of a type (an array of
    anything but text) the first time each connection meets it."""
    sql = " ".join(statement.sql.split())
    return (
        sql.startswith("UPDATE tasks SET progress = $3, message = $4")
        or (sql.startswith("SELECT") and sql.endswith("FROM tasks WHERE id = $1"))
        or "typeinfo_tree" in sql
        or "set_config('jit'" in sql
    )


async def _counted_run(api: Api, counter: WireCounter, symbols: list[str]) -> tuple[list[Statement], dict[str, Any]]:
    # A first run loads the symbols and warms the connections (each learns the types it meets
    # once): the count is of a run in a service that has been running.
    warm = await api.wait(await api.start(["WARMUSDT"], ["1m"]), timeout=60)
    assert warm["status"] == "completed", warm
    mark = counter.mark()
    task = await api.wait(await api.start(symbols, ["1m"]), timeout=60)
    return [t for t in counter.since(mark) if not _not_the_workload(t)], task


def _explain(statements: list[Statement]) -> str:
    return "\n".join(f"{n:4d}  {sql}" for sql, n in WireCounter.by_statement(statements).most_common())


async def test_ten_one_page_series_share_their_write_transactions(
    fake: FakeBinance, quiet_settings: Callable[[str], Settings], db_dsn: str
) -> None:
    """Ten series of one page each cost the run's fixed statements and a few shared page writes,
    not a transaction per series."""
    clock = frozen_at(fake, NOW)
    for symbol in [*SYMBOLS, "WARMUSDT"]:
        fake.add_symbol(symbol, symbol[:-4], "USDT")
        fake.generate_klines(symbol, "1m", OPEN - 99 * MINUTE, 100)
    async with counting_proxy(db_dsn) as (dsn, counter), serve_app(quiet_settings(dsn), clock) as api:
        await api.wait_idle()
        statements, task = await _counted_run(api, counter, SYMBOLS)
    assert task["status"] == "completed" and task["result"]["candles_written"] == 1000, task
    writes, others = split_page_writes(statements)
    assert len(others) <= RUN_STATEMENTS, f"{len(others)} statements beside the page writes:\n{_explain(others)}"
    assert 1 <= len(writes) <= TEN_SERIES_WRITES, f"{len(writes)} page writes for 10 one-page series"
    for write in writes:
        assert len(write) == STATEMENTS_PER_WRITE, f"a page write of {len(write)} statements:\n{_explain(write)}"


async def test_one_series_of_ten_pages_costs_one_transaction_per_page(
    fake: FakeBinance, quiet_settings: Callable[[str], Settings], db_dsn: str
) -> None:
    """A series' pages are written in order, one transaction of a fixed number of statements each."""
    clock = frozen_at(fake, NOW)
    fake.add_symbol("WARMUSDT", "WARM", "USDT")
    fake.generate_klines("WARMUSDT", "1m", OPEN - 99 * MINUTE, 100)
    fake.generate_klines("BTCUSDT", "1m", OPEN - 9_999 * MINUTE, 10_000)
    async with counting_proxy(db_dsn) as (dsn, counter), serve_app(quiet_settings(dsn), clock) as api:
        await api.wait_idle()
        statements, task = await _counted_run(api, counter, ["BTCUSDT"])
    assert task["status"] == "completed" and task["result"]["candles_written"] == 10_000, task
    writes, others = split_page_writes(statements)
    assert len(others) <= RUN_STATEMENTS, f"{len(others)} statements beside the page writes:\n{_explain(others)}"
    assert len(writes) == 10, f"{len(writes)} page writes for 10 pages"
    for write in writes:
        assert len(write) == STATEMENTS_PER_WRITE, f"a page write of {len(write)} statements:\n{_explain(write)}"

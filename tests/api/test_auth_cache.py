"""Token checks answer from memory, and every change to an account reaches them at once, whoever makes it.

The accounts that tokens name are kept in memory and dropped when PostgreSQL announces a change to
their row (a trigger, migration 0010, heard by the process's listener). These tests change accounts
the way another process or an operator does (SQL on another connection) and measure how long the
old answer outlives the change: a fraction of a second, where the entries' own expiry is 10 s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from service.auth.users import User
from service.auth.users_cache import USER_CACHE_SECONDS, UsersCache
from tests.conftest import Api, bearer

ME = "/api/v1/auth/me"
CONFIGS = "/api/v1/admin/data-collection/configs"
#: How long a change may take to reach the token check here. Far below USER_CACHE_SECONDS: only the
#: notification can meet it.
PROPAGATION_LIMIT_S = 1.0


def cache_of(api: Api) -> UsersCache:
    cache = api.app.state.runtime.accounts.cache
    assert cache is not None, "the web process keeps no accounts in memory"
    return cache


async def kept(
    api: Api, user: User, token: str, path: str = ME, status: int = 200, timeout: float = 10.0
) -> UsersCache:
    """Call `path` with the token (answering `status`) until the account is kept in memory (the listener
    may still be connecting)."""
    cache = cache_of(api)
    async with asyncio.timeout(timeout):
        while True:
            response = await api.anonymous.get(path, headers=bearer(token))
            assert response.status_code == status, response.text
            if user.id in cache:
                return cache
            await asyncio.sleep(0.05)


async def seconds_until(api: Api, path: str, token: str, status: int) -> float:
    """Seconds from now until `path` with `token` answers `status` (fails after PROPAGATION_LIMIT_S)."""
    began = time.monotonic()
    while True:
        response = await api.anonymous.get(path, headers=bearer(token))
        elapsed = time.monotonic() - began
        if response.status_code == status:
            return elapsed
        assert elapsed < PROPAGATION_LIMIT_S, (
            f"{path} still {response.status_code} {elapsed:.2f} s after the change (wanted {status})"
        )
        await asyncio.sleep(0.002)


async def test_a_repeated_token_check_reads_no_table(api: Api, db: asyncpg.Connection[Any]) -> None:
    """Once an account is kept, its token is checked without PostgreSQL: with the users table renamed away,
    its requests still answer 200, while a token whose account is not kept can no longer be checked."""
    user = await api.add_user("kept@example.com")
    # Made in SQL: never read through the app, so not kept.
    row = await db.fetchrow(
        "INSERT INTO users (email, password_hash) VALUES ('not-kept@example.com', 'x')"
        " RETURNING id, email, is_admin, is_active, created_at"
    )
    assert row is not None
    stranger = User(**dict(row))
    token = api.token_for(user)
    cache = await kept(api, user, token)
    reads = cache.misses
    await db.execute("ALTER TABLE users RENAME TO users_elsewhere")
    try:
        for _ in range(20):
            response = await api.anonymous.get(ME, headers=bearer(token))
            assert response.status_code == 200, response.text
            assert response.json()["id"] == user.id
        # Not vacuous: a token check that does read the table fails now.
        unkept = await api.anonymous.get(ME, headers=bearer(api.token_for(stranger)))
        assert unkept.status_code >= 500, unkept.text
    finally:
        await db.execute("ALTER TABLE users_elsewhere RENAME TO users")
    assert cache.misses == reads + 1  # the stranger's


async def test_changes_made_in_sql_reach_the_token_check_at_once(api: Api, db: asyncpg.Connection[Any]) -> None:
    """Demoted: 403; promoted again: 200; disabled: 401; enabled again: 200; deleted: 401; each change made
    on another connection, as another process or an operator would, reaches a kept account at once."""
    user = await api.add_user("changing@example.com", is_admin=True)
    token = api.token_for(user)
    delays: dict[str, float] = {}
    steps = [  # (what, the change, the route, its answer before, its answer after)
        ("demoted", "UPDATE users SET is_admin = false WHERE id = $1", CONFIGS, 200, 403),
        ("promoted", "UPDATE users SET is_admin = true WHERE id = $1", CONFIGS, 403, 200),
        ("disabled", "UPDATE users SET is_active = false WHERE id = $1", ME, 200, 401),
        ("enabled", "UPDATE users SET is_active = true WHERE id = $1", ME, 401, 200),
        ("deleted", "DELETE FROM users WHERE id = $1", ME, 200, 401),
    ]
    for name, sql, path, before, after in steps:
        # Right before each change the old answer comes from memory (a disabled account is kept too).
        await kept(api, user, token, path, before)
        await db.execute(sql, user.id)
        delays[name] = await seconds_until(api, path, token, after)
    assert max(delays.values()) < PROPAGATION_LIMIT_S < USER_CACHE_SECONDS, delays


async def test_truncate_forgets_every_account(api: Api, db: asyncpg.Connection[Any]) -> None:
    """TRUNCATE users (no row triggers fire) still reaches the kept accounts: every token is refused."""
    user = await api.add_user("truncated@example.com")
    token = api.token_for(user)
    await kept(api, user, token)
    await db.execute("TRUNCATE users CASCADE")
    await seconds_until(api, ME, token, 401)


async def test_nothing_is_served_from_memory_while_the_listener_is_down(
    api: Api, db: asyncpg.Connection[Any]
) -> None:
    """With the LISTEN connection cut, changes cannot be heard: a change made then is refused on the very next
    request; once the listener is back, accounts are kept again (and what was kept before is gone)."""
    user = await api.add_user("unheard@example.com")
    token = api.token_for(user)
    cache = await kept(api, user, token)
    cut = await db.fetchval(
        """
        SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN %'
        """
    )
    assert cut == 1
    async with asyncio.timeout(5):
        while cache.trusted:
            await asyncio.sleep(0.005)
    await db.execute("UPDATE users SET is_active = false WHERE id = $1", user.id)
    response = await api.anonymous.get(ME, headers=bearer(token))
    assert response.status_code == 401, response.text  # no waiting: the table was read
    await db.execute("UPDATE users SET is_active = true WHERE id = $1", user.id)
    assert (await api.anonymous.get(ME, headers=bearer(token))).status_code == 200
    assert len(cache) == 0 or not cache.trusted or user.id not in cache
    # The listener reconnects (after 2 s); then the account is kept again.
    await kept(api, user, token)
    assert cache.trusted


async def test_an_expired_entry_is_read_again(api: Api) -> None:
    """Entries expire after USER_CACHE_SECONDS whatever the notifications say (a LISTEN that hears nothing)."""
    user = await api.add_user("expiring@example.com")
    token = api.token_for(user)
    cache = await kept(api, user, token)
    assert 0 < USER_CACHE_SECONDS <= 60
    reads = cache.misses
    cache._clock = lambda: time.monotonic() + USER_CACHE_SECONDS + 0.01  # time travel
    assert (await api.anonymous.get(ME, headers=bearer(token))).status_code == 200
    assert cache.misses == reads + 1


# --------------------------------------------------------------------------------------------
# The cache's own rules
# --------------------------------------------------------------------------------------------


def a_user(user_id: int) -> User:
    from datetime import UTC, datetime

    return User(id=user_id, email=f"u{user_id}@example.com", is_admin=False, is_active=True,
                created_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_the_cache_keeps_only_what_it_can_trust() -> None:
    listening = True
    now = 100.0
    cache = UsersCache(listening=lambda: listening, ttl=10.0, clock=lambda: now)
    one, two = a_user(1), a_user(2)

    cache.put(one, cache.generation)
    assert cache.get(1) == one
    now += 10.0  # expired
    assert cache.get(1) is None and 1 not in cache

    # A change announced while the account was being read: the row read may predate it.
    generation = cache.generation
    cache.notified("1")
    cache.put(one, generation)
    assert cache.get(1) is None

    # A change to one account drops that one; None (notifications missed) or '' (TRUNCATE) drops all.
    cache.put(one, cache.generation)
    cache.put(two, cache.generation)
    cache.notified("2")
    assert (cache.get(1), cache.get(2)) == (one, None)
    for payload in (None, ""):
        cache.put(two, cache.generation)
        cache.notified(payload)
        assert len(cache) == 0

    # Not listening: nothing is stored, and nothing stored is served.
    cache.put(one, cache.generation)
    listening = False
    assert cache.get(1) is None
    cache.put(one, cache.generation)
    assert len(cache) == 0
    listening = True
    cache.put(one, cache.generation)
    assert cache.get(1) == one


async def test_a_process_without_follow_changes_reads_every_time(api: Api) -> None:
    """Accounts without follow_changes (no listener) keep nothing: the old behaviour, a read per check."""
    from service.auth.accounts import Accounts

    runtime = api.app.state.runtime
    accounts = Accounts(runtime.pool, hasher=None, limiter=None)  # type: ignore[arg-type]
    user = await api.add_user("uncached@example.com")
    assert accounts.cache is None
    assert await accounts.get(user.id) == await accounts.get(user.id) == user

"""Authentication and authorization: login, /me, and who may call which route (every route of the app)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import argon2
import asyncpg
import httpx
import jwt
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute

from service.loop_monitor import LoopMonitor
from service.settings import Settings
from tests.conftest import TEST_ADMIN_EMAIL, TEST_PASSWORD, TEST_SECRET_KEY, Api, bearer, running_app, serve_app

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
ERROR_FIELDS = {"status_code", "detail", "extra"}
OTHER_KEY = "another-deployment-secret-key-0123456789"


# --------------------------------------------------------------------------------------------
# The app's route table, classified by who may call each route
# --------------------------------------------------------------------------------------------


def access_of(method: str, path: str) -> str:
    """Who may call a route, as the issue states it: public, read, user or admin."""
    # /metrics is guarded by METRICS_TOKEN alone (tests/api/test_metrics.py), never by PUBLIC_READS.
    # /api/v1/auth/setup says whether an admin exists, so that a first run can say how to make one.
    if path in ("/health", "/metrics", "/api/v1/auth/setup") or path.startswith("/docs") or path == LOGIN:
        return "public"
    if path == ME:
        return "user"
    if path.startswith("/api/v1/admin/"):
        return "admin"
    if path.startswith("/api/v1/data-collector/"):
        return "read" if method == "GET" else "admin"
    if path.startswith("/api/v1/klines") or path in ("/api/v1/coverage", "/api/v1/exchanges", "/api/v1/live"):
        return "read"
    if path == "/api/v1/events":
        # A read that never ends: held to the read rules over a real connection (tests/e2e/test_events.py);
        # here only its refusals are checked (an in-process client would wait for the stream's end).
        return "stream"
    if path == "/" or path.startswith("/console"):
        return "public"  # the console's page and modules; the data they show come through the API
    return "unclassified"


def concrete(path: str) -> str:
    """A path template with its parameters filled in ({config_id:int} → 1, {task_id:uuid} → a uuid)."""
    return re.sub(
        r"\{(\w+):(\w+)\}",
        lambda m: str(uuid.uuid4()) if m.group(2) == "uuid" else "1" if m.group(2) == "int" else "x",
        path,
    )


def routes(app: Litestar) -> list[tuple[str, str]]:
    """(method, path template) of every HTTP route the app serves, but the automatic OPTIONS and HEAD."""
    found = set()
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for method in route.methods:
                if method not in ("OPTIONS", "HEAD"):
                    found.add((method, route.path))
    return sorted(found)


def routes_of(app: Litestar, *kinds: str) -> list[tuple[str, str]]:
    return [(method, path) for method, path in routes(app) if access_of(method, path) in kinds]


async def call(client: httpx.AsyncClient, method: str, path: str, token: str | None = None) -> httpx.Response:
    """One request to a route (JSON `{}` as the body of writes), with `token` if given."""
    headers = bearer(token) if token is not None else {}
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return await client.request(method, concrete(path), headers=headers, **body)


def token(claims: dict[str, Any], key: str = TEST_SECRET_KEY) -> str:
    """A JWT made outside the app (for expired and foreign tokens the app would never issue)."""
    return jwt.encode(claims, key, algorithm="HS256")


def assert_401(response: httpx.Response, what: str) -> None:
    assert response.status_code == 401, f"{what}: {response.status_code} {response.text}"
    assert response.headers["www-authenticate"] == "Bearer", what
    assert response.headers["content-type"].startswith("application/json"), what
    body = response.json()
    assert set(body) == ERROR_FIELDS and body["status_code"] == 401, f"{what}: {body}"


async def test_every_route_is_classified(api: Api) -> None:
    """Every route of the app is public, a read, a user route or an admin route; a new route must be placed."""
    unclassified = [r for r in routes(api.app) if access_of(*r) == "unclassified"]
    assert unclassified == []
    assert len(routes_of(api.app, "admin")) >= 15  # the table really is the app's


async def test_admin_routes_refuse_bad_tokens(api: Api) -> None:
    """Every admin route: 401 (WWW-Authenticate) for a missing, malformed, expired or foreign token; 403 for others."""
    admin_id = (await api.http.get(ME)).json()["id"]
    now = datetime.now(UTC)
    expired = token({"sub": str(admin_id), "iat": now - timedelta(hours=2), "exp": now - timedelta(seconds=5)})
    foreign = token({"sub": str(admin_id), "iat": now, "exp": now + timedelta(hours=1)}, key=OTHER_KEY)
    user = await api.add_user("reader@example.com")
    user_token = api.token_for(user)
    admin_routes = routes_of(api.app, "admin")
    for method, path in admin_routes:
        what = f"{method} {path}"
        assert_401(await call(api.anonymous, method, path), f"{what} without a token")
        assert_401(await call(api.anonymous, method, path, "garbage"), f"{what} with a malformed token")
        response = await api.anonymous.request(method, concrete(path), headers={"Authorization": "garbage"})
        assert_401(response, f"{what} with a header that is no bearer token")
        assert_401(await call(api.anonymous, method, path, expired), f"{what} with an expired token")
        assert_401(await call(api.anonymous, method, path, foreign), f"{what} with a token of another key")
        forbidden = await call(api.anonymous, method, path, user_token)
        assert forbidden.status_code == 403, f"{what} as a non-admin: {forbidden.status_code} {forbidden.text}"
        assert set(forbidden.json()) == ERROR_FIELDS and forbidden.json()["status_code"] == 403
    # The writes of the data collector are among them.
    assert ("POST", "/api/v1/data-collector/start") in admin_routes
    assert ("POST", "/api/v1/data-collector/refresh-symbols") in admin_routes
    assert ("POST", "/api/v1/data-collector/task/{task_id:uuid}/cancel") in admin_routes


async def test_admin_token_is_accepted_on_admin_routes(api: Api) -> None:
    """The admin's token passes authentication and authorization on every admin route (no 401 or 403)."""
    for method, path in routes_of(api.app, "admin"):
        if path.endswith(("/start", "/refresh-symbols")):
            continue  # these start work; the collection tests run them with the same token
        response = await call(api.http, method, path)
        assert response.status_code not in (401, 403), f"{method} {path}: {response.status_code} {response.text}"


async def test_disabled_or_deleted_accounts_lose_their_tokens(api: Api, db: asyncpg.Connection[Any]) -> None:
    """A token stops working (401) as soon as its account is disabled or deleted; a demoted admin gets 403.

    Accounts are kept in memory and dropped when PostgreSQL announces the change (tests/api/test_auth_cache.py):
    the change, made here on another connection, reaches the token check within milliseconds, not at the
    very instant its UPDATE returns, so each answer is awaited for up to a second."""
    admin = await api.add_user("second-admin@example.com", is_admin=True)
    admin_token = api.token_for(admin)
    configs = "/api/v1/admin/data-collection/configs"

    async def soon(path: str, status: int) -> httpx.Response:
        deadline = time.monotonic() + 1.0
        while (response := await api.anonymous.get(path, headers=bearer(admin_token))).status_code != status:
            assert time.monotonic() < deadline, f"{path}: {response.status_code}, not {status}"
            await asyncio.sleep(0.005)
        return response

    assert (await api.anonymous.get(configs, headers=bearer(admin_token))).status_code == 200
    await db.execute("UPDATE users SET is_admin = false WHERE id = $1", admin.id)
    await soon(configs, 403)
    await db.execute("UPDATE users SET is_active = false WHERE id = $1", admin.id)
    assert_401(await soon(ME, 401), "disabled account")
    await db.execute("DELETE FROM users WHERE id = $1", admin.id)
    assert_401(await api.anonymous.get(ME, headers=bearer(admin_token)), "deleted account")


async def test_public_routes_need_no_token(api: Api) -> None:
    """/health, /docs and the login route answer without a token, and ignore a stale one."""
    for client, headers in ((api.anonymous, {}), (api.anonymous, bearer("stale-or-garbage"))):
        assert (await client.get("/health", headers=headers)).status_code == 200
        assert (await client.get("/docs/openapi.json", headers=headers)).status_code == 200
        login = await client.post(LOGIN, json={"email": TEST_ADMIN_EMAIL, "password": TEST_PASSWORD}, headers=headers)
        assert login.status_code == 200, login.text


async def test_reads_are_public_by_default(api: Api) -> None:
    """With PUBLIC_READS=true (the default) every read answers without a token."""
    reads = routes_of(api.app, "read")
    assert ("GET", "/api/v1/klines") in reads and ("GET", "/api/v1/data-collector/status") in reads
    for method, path in reads:
        response = await call(api.anonymous, method, path)
        assert response.status_code not in (401, 403), f"{method} {path}: {response.status_code} {response.text}"


async def test_reads_need_a_token_when_not_public(make_settings: Callable[..., Settings]) -> None:
    """With PUBLIC_READS=false every route but /health, /docs and login needs a token; any valid account may read."""
    async with running_app(make_settings(public_reads=False)) as api:
        user_token = api.token_for(await api.add_user("reader@example.com"))
        for method, path in routes(api.app):
            if access_of(method, path) != "public":
                assert_401(await call(api.anonymous, method, path), f"{method} {path} without a token")
        for method, path in routes_of(api.app, "read", "user"):
            response = await call(api.anonymous, method, path, user_token)
            assert response.status_code not in (401, 403), f"{method} {path}: {response.status_code} {response.text}"
        assert (await api.anonymous.get("/health")).status_code == 200


def _security_by_operation(document: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {
        (method.upper(), path): operation.get("security")
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    }


async def test_openapi_names_the_bearer_scheme_on_protected_operations_only(
    make_settings: Callable[..., Settings],
) -> None:
    """The document's bearer scheme is on every admin and user operation, on reads only with PUBLIC_READS=false."""
    for public_reads in (True, False):
        async with running_app(make_settings(public_reads=public_reads)) as api:
            document = (await api.anonymous.get("/docs/openapi.json")).json()
            scheme = document["components"]["securitySchemes"]["BearerToken"]
            assert scheme["type"] == "http" and scheme["scheme"].lower() == "bearer"
            assert "security" not in document  # no global requirement: public operations stay public
            security = _security_by_operation(document)
            assert ("POST", "/api/v1/data-collector/start") in security
            for (method, path), required in security.items():
                kind = access_of(method, path)
                needs_token = kind in ("admin", "user") or (kind in ("read", "stream") and not public_reads)
                expected = [{"BearerToken": []}] if needs_token else None
                assert required == expected, f"{method} {path} (PUBLIC_READS={public_reads}): {required}"


# --------------------------------------------------------------------------------------------
# Login and /me
# --------------------------------------------------------------------------------------------


async def test_login_returns_a_bearer_token_that_works(api: Api) -> None:
    """Login answers {access_token, token_type: bearer, expires_in}; the token opens /me and the admin routes."""
    response = await api.anonymous.post(LOGIN, json={"email": TEST_ADMIN_EMAIL.upper(), "password": TEST_PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    claims = jwt.decode(body["access_token"], TEST_SECRET_KEY, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 3600
    me = await api.anonymous.get(ME, headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert set(me.json()) == {"id", "email", "is_admin", "is_active", "created_at"}
    assert me.json()["email"] == TEST_ADMIN_EMAIL and me.json()["is_admin"] is True and me.json()["is_active"] is True
    configs = await api.anonymous.get("/api/v1/admin/data-collection/configs", headers=bearer(body["access_token"]))
    assert configs.status_code == 200


async def test_token_lifetime_follows_the_setting(make_settings: Callable[..., Settings]) -> None:
    """ACCESS_TOKEN_EXPIRE_MINUTES sets expires_in and the token's exp."""
    async with running_app(make_settings(access_token_expire_minutes=5)) as api:
        response = await api.anonymous.post(LOGIN, json={"email": TEST_ADMIN_EMAIL, "password": TEST_PASSWORD})
        body = response.json()
        claims = jwt.decode(body["access_token"], TEST_SECRET_KEY, algorithms=["HS256"])
        assert body["expires_in"] == 300 and claims["exp"] - claims["iat"] == 300


async def test_failed_logins_all_look_the_same(api: Api, db: asyncpg.Connection[Any]) -> None:
    """A wrong password, an unknown email and a disabled account get the same 401 body."""
    disabled = await api.add_user("disabled@example.com")
    await db.execute("UPDATE users SET is_active = false WHERE id = $1", disabled.id)
    answers = []
    for email, password in (
        (TEST_ADMIN_EMAIL, "not the password"),
        ("nobody@example.com", TEST_PASSWORD),
        ("disabled@example.com", TEST_PASSWORD),
    ):
        response = await api.anonymous.post(LOGIN, json={"email": email, "password": password})
        assert_401(response, email)
        answers.append(response.json())
    assert answers[0] == answers[1] == answers[2]
    assert answers[0]["detail"] == "invalid email or password"


async def test_an_unknown_email_costs_one_password_verify(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown email runs one argon2 verify, as a wrong password does: the answer time does not tell them apart."""
    verifies: list[str] = []
    real_verify = argon2.PasswordHasher.verify

    def counting_verify(self: argon2.PasswordHasher, password_hash: str, password: str) -> bool:
        verifies.append(password_hash)
        return real_verify(self, password_hash, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counting_verify)
    await api.anonymous.post(LOGIN, json={"email": TEST_ADMIN_EMAIL, "password": "wrong password"})
    assert len(verifies) == 1
    await api.anonymous.post(LOGIN, json={"email": "nobody@example.com", "password": "wrong password"})
    assert len(verifies) == 2
    assert verifies[1].startswith("$argon2id$")  # a real hash, with the cost of the real ones


async def test_login_body_is_validated(api: Api) -> None:
    """A login without a password, or with a NUL in the email, is a 400 in the one error shape."""
    for body in ({"email": TEST_ADMIN_EMAIL}, {"email": "a\x00b@example.com", "password": "x"}, {}):
        response = await api.anonymous.post(LOGIN, json=body)
        assert response.status_code == 400, response.text
        assert set(response.json()) == ERROR_FIELDS


async def test_me_needs_a_token(api: Api) -> None:
    """/me without a token is a 401 naming the way to log in."""
    response = await api.anonymous.get(ME)
    assert_401(response, "me")
    assert LOGIN in response.json()["detail"]


async def test_login_burst_keeps_the_loop_serving(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """20 logins at once: /health keeps answering while passwords are verified (off the loop); the lag is printed."""
    verifying = 0  # argon2 verifies under way (on worker threads; on the loop itself, none could be seen)
    real_verify = argon2.PasswordHasher.verify

    def watched_verify(self: argon2.PasswordHasher, password_hash: str, password: str) -> bool:
        nonlocal verifying
        verifying += 1
        try:
            return real_verify(self, password_hash, password)
        finally:
            verifying -= 1

    monkeypatch.setattr(argon2.PasswordHasher, "verify", watched_verify)
    monitor = LoopMonitor()
    health_answers = answers_during_a_verify = 0
    burst_done = asyncio.Event()

    async def probe_health() -> None:
        nonlocal health_answers, answers_during_a_verify
        while not burst_done.is_set():
            assert (await api.anonymous.get("/health")).status_code == 200
            health_answers += 1
            answers_during_a_verify += verifying > 0
            await asyncio.sleep(0.01)

    async def login() -> int:
        response = await api.anonymous.post(LOGIN, json={"email": TEST_ADMIN_EMAIL, "password": TEST_PASSWORD})
        return response.status_code

    await login()  # warm-up: the first verify also makes the hash unknown emails are checked against
    monitor.start()
    prober = asyncio.create_task(probe_health())
    began = time.perf_counter()
    statuses = await asyncio.gather(*(login() for _ in range(20)))
    elapsed = time.perf_counter() - began
    burst_done.set()
    await prober
    await monitor.stop()
    lag = monitor.lag()
    print(
        f"\n20 concurrent logins: {elapsed:.2f} s; event-loop lag p50 {lag.p50} ms, p99 {lag.p99} ms, "
        f"max {lag.max} ms ({lag.samples} samples); /health answered {health_answers} times meanwhile, "
        f"{answers_during_a_verify} of them while a password was being verified"
    )
    assert statuses == [200] * 20
    assert answers_during_a_verify >= 1


# --------------------------------------------------------------------------------------------
# created_by, bootstrap
# --------------------------------------------------------------------------------------------


async def test_created_by_records_the_admin(api: Api) -> None:
    """A config's created_by is the email of the admin who created it."""
    body = {"symbol": "BTCUSDT", "timeframes": ["1h"], "interval_minutes": 60}
    created = await api.http.post("/api/v1/admin/data-collection/configs", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["created_by"] == TEST_ADMIN_EMAIL
    other = api.token_for(await api.add_user("Ops@Example.com", is_admin=True))
    body = {"symbol": "ETHUSDT", "timeframes": ["1h"], "interval_minutes": 60}
    created = await api.anonymous.post("/api/v1/admin/data-collection/configs", json=body, headers=bearer(other))
    assert created.status_code == 201, created.text
    assert created.json()["created_by"] == "Ops@Example.com"


async def test_bootstrap_admin_is_idempotent(
    make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """ADMIN_EMAIL/ADMIN_PASSWORD make one admin; a restart changes nothing; a new password replaces the old one."""
    email = "Boot@Example.com"

    async def login(api: Api, password: str) -> int:
        response = await api.anonymous.post(LOGIN, json={"email": email.lower(), "password": password})
        return response.status_code

    async def users() -> list[asyncpg.Record]:
        return await db.fetch(
            "SELECT password_hash, is_admin, is_active FROM users WHERE lower(email) = lower($1)", email
        )

    first = make_settings(admin_email=email, admin_password="first password")
    async with serve_app(first) as api:
        assert await login(api, "first password") == 200
    [created] = await users()
    assert created["is_admin"] and created["is_active"]
    async with serve_app(first) as api:
        assert await login(api, "first password") == 200
    assert await users() == [created]  # same row, same hash: nothing rewritten
    async with serve_app(make_settings(admin_email=email.upper(), admin_password="second password")) as api:
        assert await login(api, "second password") == 200
        assert await login(api, "first password") == 401
    [updated] = await users()
    assert updated["password_hash"] != created["password_hash"] and updated["is_admin"]
    assert "second password" not in updated["password_hash"]


async def test_bootstrap_promotes_an_existing_account(
    make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """An existing non-admin (or disabled) account named by ADMIN_EMAIL becomes an active admin at start-up."""
    async with serve_app(make_settings()) as api:
        user = await api.add_user("promote@example.com")
    await db.execute("UPDATE users SET is_active = false WHERE id = $1", user.id)
    async with serve_app(make_settings(admin_email="promote@example.com", admin_password=TEST_PASSWORD)):
        pass
    row = await db.fetchrow("SELECT is_admin, is_active FROM users WHERE id = $1", user.id)
    assert row is not None and row["is_admin"] and row["is_active"]

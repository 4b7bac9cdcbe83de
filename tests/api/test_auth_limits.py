"""The failed-login limiter: 5 a minute per email and per client address, counted in PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import httpx

from service.auth.addresses import client_address
from service.settings import Settings
from tests.conftest import TEST_ADMIN_EMAIL, TEST_PASSWORD, Api, serve_app

LOGIN = "/api/v1/auth/login"
RIGHT = {"email": TEST_ADMIN_EMAIL, "password": TEST_PASSWORD}
WRONG = {"email": TEST_ADMIN_EMAIL, "password": "not the password"}


async def login(api: Api, body: dict[str, str], forwarded_for: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    return await api.anonymous.post(LOGIN, json=body, headers=headers)


def assert_429(response: httpx.Response) -> int:
    """A 429 in the one error shape with a Retry-After of at most a minute; returns that delay."""
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    body = response.json()
    assert body["status_code"] == 429 and body["extra"]["retry_after"] == retry_after
    return retry_after


async def forget_the_last_minute(db: asyncpg.Connection[Any]) -> None:
    """Move every recorded attempt out of the limiter's window, as a minute's wait would."""
    await db.execute("UPDATE login_attempts SET attempted_at = attempted_at - interval '61 seconds'")


async def test_limit_is_shared_by_two_processes(
    make_settings: Callable[..., Settings], db: asyncpg.Connection[Any]
) -> None:
    """Failures on two app instances of one database add up: the 6th attempt is a 429 on both, even with the
    right password, until the failures are a minute old."""
    settings = make_settings()
    async with serve_app(settings) as first, serve_app(settings) as second:
        for api in (first, second, first, second, first):
            assert (await login(api, WRONG)).status_code == 401
        assert_429(await login(first, RIGHT))
        assert_429(await login(second, RIGHT))
        await forget_the_last_minute(db)
        assert (await login(second, RIGHT)).status_code == 200
    # Refused attempts were not counted as failures: only the five are left, all aged out.
    recent = "SELECT count(*) FROM login_attempts WHERE attempted_at > now() - interval '1 minute'"
    assert await db.fetchval(recent) == 0


async def test_success_does_not_count(api: Api) -> None:
    """Successful logins never use up the allowance: many in a row all succeed."""
    for _ in range(7):
        assert (await login(api, RIGHT)).status_code == 200
    for _ in range(4):
        assert (await login(api, WRONG)).status_code == 401
    assert (await login(api, RIGHT)).status_code == 200


async def test_limit_per_email_from_any_address(make_settings: Callable[..., Settings]) -> None:
    """Five failures for one email, each from another client address, block that email for everyone."""
    async with serve_app(make_settings(trusted_proxy_count=1)) as api:
        for n in range(5):
            assert (await login(api, WRONG, forwarded_for=f"198.51.100.{n}")).status_code == 401
        assert_429(await login(api, RIGHT, forwarded_for="198.51.100.99"))
        other = {"email": "someone-else@example.com", "password": "whatever it is"}
        assert (await login(api, other, forwarded_for="198.51.100.99")).status_code == 401  # not the address


async def test_address_is_the_peer_without_trusted_proxies(api: Api) -> None:
    """With TRUSTED_PROXY_COUNT=0 X-Forwarded-For is ignored: five failures from one peer block it, whatever
    address each request claims and whatever email it tries."""
    for n in range(5):
        body = {"email": f"guess{n}@example.com", "password": "guess"}
        assert (await login(api, body, forwarded_for=f"203.0.113.{n}")).status_code == 401
    assert_429(await login(api, RIGHT, forwarded_for="203.0.113.200"))


async def test_address_from_x_forwarded_for_with_a_trusted_proxy(make_settings: Callable[..., Settings]) -> None:
    """With TRUSTED_PROXY_COUNT=1 the client is the rightmost X-Forwarded-For entry: what it prepends is ignored,
    and another client behind the same proxy is not limited."""
    async with serve_app(make_settings(trusted_proxy_count=1)) as api:
        for n in range(5):
            body = {"email": f"guess{n}@example.com", "password": "guess"}
            assert (await login(api, body, forwarded_for=f"10.0.0.{n}, 203.0.113.7")).status_code == 401
        assert_429(await login(api, RIGHT, forwarded_for="192.0.2.1, 203.0.113.7"))
        assert (await login(api, RIGHT, forwarded_for="203.0.113.8")).status_code == 200


def test_client_address_rules() -> None:
    """X-Forwarded-For counts only as deep as the trusted proxies reach; short or absent headers mean the peer."""
    assert client_address("10.1.1.1", ["1.2.3.4"], 0) == "10.1.1.1"
    assert client_address("10.1.1.1", ["6.6.6.6, 1.2.3.4"], 1) == "1.2.3.4"
    assert client_address("10.1.1.1", ["6.6.6.6", "1.2.3.4, 10.0.0.2"], 2) == "1.2.3.4"
    assert client_address("10.1.1.1", ["1.2.3.4"], 2) == "10.1.1.1"
    assert client_address("10.1.1.1", [], 1) == "10.1.1.1"
    assert client_address("::ffff:10.1.1.1", [], 0) == "10.1.1.1"
    assert client_address(None, [], 0) == "unknown"

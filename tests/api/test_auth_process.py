"""Auth from the outside: the create-user command, SECRET_KEY at start-up, the embedded key, and what the logs say."""

from __future__ import annotations

import asyncio
import os
import pty
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.auth.secret_key import load_or_create_secret_key, secret_key_path, with_secret_key
from service.settings import Settings, SettingsError
from tests.conftest import TEST_SECRET_KEY, bearer, serve_app
from tests.fakes.binance import FakeBinance
from tests.processes import run_service_command, service_processes

ROOT = Path(__file__).resolve().parents[2]
LOGIN = "/api/v1/auth/login"


async def run_cli(
    args: list[str], env: dict[str, str], stdin: bytes | None = None, timeout: float = 60.0
) -> tuple[int, str]:
    """`python -m service ARGS`; (exit code, stdout and stderr together)."""
    return await run_service_command(*args, env=env, stdin=stdin, timeout=timeout)


def cli_env(dsn: str) -> dict[str, str]:
    return {"DATABASE_URL": dsn, "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json"}


async def test_create_user_reads_the_password_from_stdin(
    db_dsn: str, db: asyncpg.Connection[Any], make_settings: Callable[..., Settings]
) -> None:
    """`create-user --email E --admin --password-stdin` makes an admin who can log in; run again, it sets a new
    password and keeps the admin flag; the password appears in no output and is stored only as an argon2 hash."""
    code, out = await run_cli(
        ["create-user", "--email", "Ops@Example.com", "--admin", "--password-stdin"], cli_env(db_dsn),
        stdin=b"first secret 1\n",
    )
    assert code == 0, out
    assert "created admin Ops@Example.com" in out and "first secret 1" not in out
    row = await db.fetchrow("SELECT password_hash, is_admin FROM users WHERE email = 'Ops@Example.com'")
    assert row is not None and row["is_admin"] and row["password_hash"].startswith("$argon2id$")

    code, out = await run_cli(
        ["create-user", "--email", "ops@example.com", "--password-stdin"], cli_env(db_dsn), stdin=b"second secret 2\n"
    )
    assert code == 0, out
    assert "updated admin Ops@Example.com" in out and "second secret 2" not in out
    assert await db.fetchval("SELECT count(*) FROM users WHERE lower(email) = 'ops@example.com'") == 1
    async with serve_app(make_settings()) as api:
        ok = await api.anonymous.post(LOGIN, json={"email": "ops@example.com", "password": "second secret 2"})
        assert ok.status_code == 200, ok.text
        me = await api.anonymous.get("/api/v1/auth/me", headers=bearer(ok.json()["access_token"]))
        assert me.json()["is_admin"] is True
        old = await api.anonymous.post(LOGIN, json={"email": "ops@example.com", "password": "first secret 1"})
        assert old.status_code == 401


async def test_create_user_prompts_on_a_terminal_without_echo(db_dsn: str, db: asyncpg.Connection[Any]) -> None:
    """On a terminal, without --password-stdin, the password is asked twice and never echoed."""
    main, terminal = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "create-user", "--email", "tty@example.com",
        env={**os.environ, **cli_env(db_dsn)}, cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal,
    )
    os.close(terminal)
    seen = b""

    async def read_until(text: bytes) -> None:
        nonlocal seen
        async with asyncio.timeout(30):
            while text not in seen:
                await asyncio.sleep(0.02)
                try:
                    seen += os.read(main, 4096)
                except BlockingIOError:
                    continue

    os.set_blocking(main, False)
    try:
        await read_until(b"Password: ")
        os.write(main, b"typed secret 3\n")
        await read_until(b"Repeat for confirmation: ")
        os.write(main, b"typed secret 3\n")
        await read_until(b"created user tty@example.com")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        with_rest = seen
    finally:
        os.close(main)
    assert b"typed secret 3" not in with_rest
    assert await db.fetchval("SELECT is_admin FROM users WHERE email = 'tty@example.com'") is False


async def test_create_user_refuses_bad_input(db_dsn: str) -> None:
    """No terminal and no --password-stdin, a short password, or a bad email: exit 2 with a message, no account."""
    code, out = await run_cli(["create-user", "--email", "a@example.com"], cli_env(db_dsn), stdin=b"long enough 1\n")
    assert code == 2 and "--password-stdin" in out
    code, out = await run_cli(
        ["create-user", "--email", "a@example.com", "--password-stdin"], cli_env(db_dsn), stdin=b"short\n"
    )
    assert code == 2 and "password" in out and "short" not in out
    code, out = await run_cli(
        ["create-user", "--email", "not-an-email", "--password-stdin"], cli_env(db_dsn), stdin=b"long enough 1\n"
    )
    assert code == 2 and "email" in out


async def test_serve_refuses_to_start_without_secret_key(db_dsn: str) -> None:
    """`serve` with DATABASE_URL and no SECRET_KEY exits 2 naming SECRET_KEY."""
    code, out = await run_cli(["serve"], {"DATABASE_URL": db_dsn, "SECRET_KEY": "", "PORT": "1"}, timeout=30)
    assert code == 2, out
    assert "SECRET_KEY" in out


def test_secret_key_rules() -> None:
    """SECRET_KEY is required with DATABASE_URL, must be 32+ characters, and ADMIN_EMAIL needs ADMIN_PASSWORD."""
    with pytest.raises(SettingsError, match=r"^SECRET_KEY"):
        with_secret_key(Settings.from_env({"DATABASE_URL": "postgresql://u@h/d"}))
    with pytest.raises(SettingsError, match=r"^SECRET_KEY"):
        Settings.from_env({"SECRET_KEY": "too short"})
    given = Settings.from_env({"DATABASE_URL": "postgresql://u@h/d", "SECRET_KEY": TEST_SECRET_KEY})
    assert with_secret_key(given).secret_key == TEST_SECRET_KEY
    with pytest.raises(SettingsError, match=r"^ADMIN_PASSWORD"):
        Settings.from_env({"ADMIN_EMAIL": "a@example.com"})
    with pytest.raises(SettingsError, match=r"^ADMIN_EMAIL"):
        Settings.from_env({"ADMIN_PASSWORD": "long enough"})
    settings = Settings.from_env(
        {"SECRET_KEY": TEST_SECRET_KEY, "ADMIN_EMAIL": "a@b.c", "ADMIN_PASSWORD": "pw12345678"}
    )
    assert TEST_SECRET_KEY not in repr(settings) and "pw12345678" not in repr(settings)


def test_embedded_key_is_made_once_and_kept(tmp_path: Path) -> None:
    """In embedded mode a random key is written once beside the data directory (mode 0600) and read back after."""
    settings = Settings.from_env({"EMBEDDED_PG_DIR": str(tmp_path / "data" / "postgres")})
    first = with_secret_key(settings).secret_key
    path = secret_key_path(settings.embedded_pg_path)
    assert path == tmp_path / "data" / "postgres.secret_key"
    assert first is not None and len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert with_secret_key(settings).secret_key == first
    assert list(path.parent.iterdir()) == [path]  # no draft left behind
    path.chmod(0o644)
    assert load_or_create_secret_key(path) == first and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("short\n")
    with pytest.raises(SettingsError, match="SECRET_KEY"):
        load_or_create_secret_key(path)


async def test_embedded_key_keeps_tokens_valid_across_restarts(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """A token issued before a restart in embedded mode is still accepted after it (the key was kept)."""
    embedded = Settings.from_env({"EMBEDDED_PG_DIR": str(tmp_path / "postgres")})
    async with serve_app(make_settings(secret_key=with_secret_key(embedded).secret_key)) as api:
        token = api.token_for(await api.add_user("kept@example.com"))
    async with serve_app(make_settings(secret_key=with_secret_key(embedded).secret_key)) as api:
        assert (await api.anonymous.get("/api/v1/auth/me", headers=bearer(token))).status_code == 200


async def test_no_password_or_token_in_the_logs(db_dsn: str, fake: FakeBinance, tmp_path: Path) -> None:
    """A real `serve` at DEBUG logs bootstrap, logins and token use, never with a password or a token."""
    admin_password = "bootstrap secret 4"
    wrong = "wrong secret 5"
    env = {
        "DATABASE_URL": db_dsn, "SECRET_KEY": TEST_SECRET_KEY, "BINANCE_API_URL": fake.url, "EXCHANGES": "binance",
        "LOG_LEVEL": "DEBUG",
        "LOG_FORMAT": "json", "ADMIN_EMAIL": "boot@example.com", "ADMIN_PASSWORD": admin_password,
    }
    async with service_processes(tmp_path) as processes:
        serve = await processes.start("serve", env=env)
        await serve.wait_healthy()
        http = serve.http
        ok = await http.post(LOGIN, json={"email": "boot@example.com", "password": admin_password})
        assert ok.status_code == 200, ok.text
        token = ok.json()["access_token"]
        for email in ("boot@example.com", wrong):  # a password typed into the email box too
            assert (await http.post(LOGIN, json={"email": email, "password": wrong})).status_code == 401
        assert (await http.get("/api/v1/auth/me", headers=bearer(token))).status_code == 200
        assert (await http.get("/api/v1/auth/me", headers=bearer(token + "x"))).status_code == 401
        await serve.sigterm(deadline=15)
        output = serve.log_text()
    assert '"admin_bootstrap"' in output and '"login_failed"' in output and '"login_succeeded"' in output
    for secret in (admin_password, wrong, token, token.split(".")[2], TEST_SECRET_KEY):
        assert secret not in output

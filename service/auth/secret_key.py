"""SECRET_KEY, which signs the login tokens: from the environment, or kept next to the embedded data.

With DATABASE_URL the service may run as several processes (or dynos) that must accept each
other's tokens, so the key has to be given. In embedded mode one key is generated on the first
start and read again on every later one, so tokens survive restarts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

import msgspec

from service.settings import Settings, SettingsError

__all__ = ["MIN_SECRET_KEY_LENGTH", "load_or_create_secret_key", "secret_key_path", "with_secret_key"]

#: HS256 wants at least 32 bytes of key (RFC 7518 3.2); PyJWT warns below that.
MIN_SECRET_KEY_LENGTH = 32


def secret_key_path(pgdata: Path) -> Path:
    """Where the embedded mode keeps its key: beside the PostgreSQL data directory (./.data/postgres.secret_key)."""
    return pgdata.with_name(pgdata.name + ".secret_key")


def with_secret_key(settings: Settings) -> Settings:
    """`settings` with a secret key: SECRET_KEY, else (embedded mode only) the kept one.

    SettingsError naming SECRET_KEY when DATABASE_URL is set without it.
    """
    if settings.secret_key is not None:
        return settings
    if settings.database_url is not None:
        raise SettingsError(
            "SECRET_KEY: required when DATABASE_URL is set (it signs the login tokens, and every process "
            "must share it); for example: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    key = load_or_create_secret_key(secret_key_path(settings.embedded_pg_path))
    return msgspec.structs.replace(settings, secret_key=key)


def load_or_create_secret_key(path: Path) -> str:
    """The key in `path`; a new random one (file mode 0600) if there is none yet.

    Two processes starting at once end up with the same key: the file appears whole, by a hard
    link that fails if another process made it first.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(48) + "\n")
        with contextlib.suppress(FileExistsError):  # another process won: use its key
            os.link(draft, path)
    finally:
        draft.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)  # only the service's user may read it
    key = path.read_text().strip()
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise SettingsError(f"SECRET_KEY: the key in {path} is shorter than {MIN_SECRET_KEY_LENGTH} characters")
    return key

"""argon2id password hashing, off the event loop.

One hash or verify costs ~100 ms of CPU: inline, it would stall every request for that long. It is
the one place the service uses threads (`asyncio.to_thread`), and a semaphore of two keeps a burst
of logins from taking more than two threads (cores) at once; the rest wait their turn on the loop.
"""

from __future__ import annotations

import asyncio
import secrets

import argon2

__all__ = ["PasswordHasher"]

#: Hash or verify calls running at once; more would only queue for the same cores.
HASHING_SLOTS = 2


class PasswordHasher:
    """argon2-cffi's hasher (its default argon2id parameters) behind a semaphore, on worker threads."""

    def __init__(self, *, slots: int = HASHING_SLOTS) -> None:
        self._argon2 = argon2.PasswordHasher()
        self._slots = asyncio.Semaphore(slots)
        self._nobody_hash: str | None = None

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._argon2.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches `password_hash`.

        `None` (no such account) verifies against a hash of a random password instead, and is
        always False: an unknown email costs the same time as a wrong password.
        """
        stored = await self._hash_of_nobody() if password_hash is None else password_hash
        async with self._slots:
            try:
                matched: bool = await asyncio.to_thread(self._argon2.verify, stored, password)
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                matched = False
        return matched and password_hash is not None

    async def _hash_of_nobody(self) -> str:
        if self._nobody_hash is None:
            self._nobody_hash = await self.hash(secrets.token_urlsafe(24))
        return self._nobody_hash

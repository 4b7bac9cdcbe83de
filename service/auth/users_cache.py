"""The accounts that tokens name, kept in memory: a request's token check reads no table.

Every change to a row of `users` (UPDATE, DELETE, TRUNCATE; any process, any psql session) is
announced on USERS_CHANNEL when its transaction commits (migration 0010); the process's listener
hands it here and the account is dropped, so the next request reads it again. What is kept is
trusted only while the listener is listening:

- no entry is stored, and none is served, while the LISTEN connection is down;
- when it comes back (the listener calls with None: changes may have been missed), everything goes;
- a read that was under way when a change arrived is not stored (its row may predate the change);
- entries expire after `ttl` seconds whatever happens, for a LISTEN that silently hears nothing
  (PgBouncer in transaction pooling mode, a half-open connection nobody noticed).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from service.auth.users import User
from service.logging import get_logger

__all__ = ["USER_CACHE_SECONDS", "UsersCache"]

log = get_logger(__name__)

#: How long an account is kept at most (the bound when notifications do not arrive).
USER_CACHE_SECONDS = 10.0
#: More accounts than this in memory: start again (tokens name real accounts only, so this is a safety net).
_MAX_ENTRIES = 10_000


class UsersCache:
    def __init__(
        self,
        *,
        listening: Callable[[], bool],
        ttl: float = USER_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listening = listening
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[int, tuple[float, User]] = {}
        self._generation = 0
        self.hits = 0
        """Token checks answered from memory (tests and curiosity)."""
        self.misses = 0
        """Token checks that read the account from the database."""

    @property
    def trusted(self) -> bool:
        """Whether kept accounts may be served now (the listener is listening)."""
        return self._listening()

    @property
    def generation(self) -> int:
        """Changes seen so far; take it before reading an account, hand it to `put`."""
        return self._generation

    def get(self, user_id: int) -> User | None:
        """The account if it is kept and still trusted; None: read it (and `put` it)."""
        entry = self._entries.get(user_id)
        if entry is not None and self._listening() and self._clock() < entry[0]:
            self.hits += 1
            return entry[1]
        if entry is not None:
            del self._entries[user_id]
        self.misses += 1
        return None

    def put(self, user: User, generation: int) -> None:
        """Keep `user`, read after `generation` was taken, unless a change arrived meanwhile."""
        if generation != self._generation or not self._listening():
            return
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        self._entries[user.id] = (self._clock() + self._ttl, user)

    def notified(self, payload: str | None) -> None:
        """A notification on USERS_CHANNEL: drop that account; None or an empty payload: drop them all."""
        self._generation += 1
        user_id: int | None = None
        if payload:
            try:
                user_id = int(payload)
            except ValueError:
                log.warning("user_change_not_an_id", payload=payload[:100])
        if user_id is None:
            self._entries.clear()
        else:
            self._entries.pop(user_id, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, user_id: object) -> bool:
        """Whether the account is kept (expired or not)."""
        return user_id in self._entries

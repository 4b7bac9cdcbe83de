"""The account record every part of auth shares (a leaf: the users cache and the accounts both use it)."""

from __future__ import annotations

from datetime import datetime

import msgspec

__all__ = ["User"]


class User(msgspec.Struct, frozen=True, kw_only=True):
    """An account as the rest of the service sees it (never with its password hash)."""

    id: int
    email: str
    is_admin: bool
    is_active: bool
    created_at: datetime

"""What a client's limiters share with the other processes on one IP (WEIGHT_BUDGET_SCOPE=shared).

A venue counting weight per minute (Binance) shares a `SharedWeightBudget`; one counting requests in
a sliding window (Bybit, OKX per endpoint, Coinbase, Kraken) a `SharedWindow`. Both are named: a
venue's id, or `<venue>:<endpoint>` where the venue counts an endpoint apart, so that one venue's
budget or ban never touches another's.
"""

from __future__ import annotations

from typing import Protocol

from service.exchanges.limiter import SharedWeightBudget
from service.exchanges.windows import SharedWindow

__all__ = ["SharedBudgets"]


class SharedBudgets(Protocol):
    """Hands out the shared budgets by name (implemented on PostgreSQL, outside exchanges/)."""

    def weight(self, name: str) -> SharedWeightBudget: ...

    def window(self, name: str) -> SharedWindow: ...

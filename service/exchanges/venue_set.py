"""The enabled venues' clients, by id: the one place that answers "which venue, which timeframes,
which grid" for the rest of the service."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from service.errors import InvalidInputError
from service.exchanges.base import ExchangeClient
from service.exchanges.grid import Grid
from service.exchanges.venues import DEFAULT_VENUE, VENUES

__all__ = ["VenueSet"]


class VenueSet(Mapping[str, ExchangeClient]):
    """The clients of the venues this deployment collects from (EXCHANGES), in the venue table's order."""

    def __init__(self, clients: Mapping[str, ExchangeClient]) -> None:
        self._clients = dict(clients)

    def __getitem__(self, exchange: str) -> ExchangeClient:
        return self._clients[exchange]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def default(self) -> str:
        """The venue a request that names none collects from: Binance spot where enabled."""
        return DEFAULT_VENUE if DEFAULT_VENUE in self._clients else next(iter(self._clients))

    def client(self, exchange: str) -> ExchangeClient:
        """The venue's client; InvalidInputError (422) naming the enabled venues for an unknown or
        disabled one."""
        found = self._clients.get(exchange)
        if found is None:
            enabled = list(self._clients)
            if exchange in VENUES:
                raise InvalidInputError(
                    f"exchange {exchange!r} is not enabled here (EXCHANGES); enabled: {', '.join(enabled)}",
                    supported=enabled,
                )
            raise InvalidInputError(
                f"unknown exchange {exchange!r}; supported: {', '.join(enabled)}", supported=enabled
            )
        return found

    def grid(self, exchange: str, timeframe: str) -> Grid:
        """Where `exchange` opens the candles of `timeframe` (both already checked)."""
        return self._clients[exchange].grid(timeframe)

    def timeframes(self, exchange: str, timeframes: Sequence[str]) -> list[str]:
        """`timeframes` in the order given, de-duplicated; InvalidInputError (422) naming any the venue
        lacks and listing the venue's set."""
        offered = self.client(exchange).timeframes
        if not timeframes:
            raise InvalidInputError("timeframes must not be empty", allowed=list(offered))
        bad = [tf for tf in timeframes if tf not in offered]
        if bad:
            raise InvalidInputError(
                f"unknown timeframe {', '.join(map(repr, bad))} on {exchange}; allowed: {' '.join(offered)}",
                invalid=bad, allowed=list(offered),
            )
        return list(dict.fromkeys(timeframes))

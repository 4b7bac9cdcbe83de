"""The venues the service collects from: one closed set of ids, one row each.

A row names the client family that speaks the venue's API and the product it asks for, so another
market of a known family (Bybit linear, OKX swap) is a new row here, not a new client. Nothing
else in the service names a venue; settings read each venue's sub-structure by the row's prefix.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

import msgspec

__all__ = ["DEFAULT_VENUE", "VENUES", "Exchange", "VenueId", "VenueSpec"]


class Exchange(StrEnum):
    """Every venue's id, as the API (which calls a venue an exchange), the database and the metrics name it."""

    BINANCE = "binance"
    BINANCE_USDM = "binance_usdm"
    BYBIT = "bybit"
    OKX = "okx"
    COINBASE = "coinbase"
    KRAKEN = "kraken"


#: A venue id held as a plain str; the enum is what the OpenAPI document shows.
VenueId = Annotated[str, Exchange]

DEFAULT_VENUE = Exchange.BINANCE.value

Family = Literal["binance", "bybit", "okx", "coinbase", "kraken"]


class VenueSpec(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    market: str
    """What it is, for people: "Binance USD-M perpetual futures"."""
    family: Family
    """The client that speaks its API (service/exchanges/<family>.py)."""
    product: str
    """What the family's client asks for: Binance `spot` | `usdm`; Bybit's `category` (spot, linear);
    OKX's instType (SPOT, SWAP); `spot` elsewhere."""
    default_url: str
    """The base URL when `<ID>_API_URL` is unset."""
    default_ws_url: str | None = None
    """The kline stream host's base when `<ID>_WS_URL` is unset; None: no stream client yet."""
    perpetual: bool = False
    """Its symbols are spelled `BASE/QUOTE:SETTLE` in the unified form."""

    @property
    def setting_prefix(self) -> str:
        """Its settings' environment prefix: BINANCE_USDM_API_URL, OKX_TIMEOUT, …"""
        return self.id.upper()


VENUES: dict[str, VenueSpec] = {
    spec.id: spec
    for spec in (
        VenueSpec(id=Exchange.BINANCE.value, market="Binance spot", family="binance", product="spot",
                  default_url="https://api.binance.com", default_ws_url="wss://stream.binance.com:9443"),
        VenueSpec(id=Exchange.BINANCE_USDM.value, market="Binance USD-M perpetual futures", family="binance",
                  product="usdm", default_url="https://fapi.binance.com", perpetual=True,
                  default_ws_url="wss://fstream.binance.com/market"),
        VenueSpec(id=Exchange.BYBIT.value, market="Bybit v5 spot", family="bybit", product="spot",
                  default_url="https://api.bybit.com", default_ws_url="wss://stream.bybit.com/v5/public/spot"),
        VenueSpec(id=Exchange.OKX.value, market="OKX v5 spot", family="okx", product="SPOT", default_url="https://www.okx.com",
                  default_ws_url="wss://ws.okx.com:8443/ws/v5/business"),
        VenueSpec(id=Exchange.COINBASE.value, market="Coinbase Exchange", family="coinbase", product="spot",
                  default_url="https://api.exchange.coinbase.com"),
        VenueSpec(id=Exchange.KRAKEN.value, market="Kraken spot", family="kraken", product="spot",
                  default_url="https://api.kraken.com"),
    )
}
assert set(VENUES) == {v.value for v in Exchange}

"""The client address a request came from, for the login limiter.

Behind proxies (Heroku's router adds one hop) the peer is the proxy, and the client is in
X-Forwarded-For, which each proxy extends on the right. Only the entries our own proxies added can
be trusted; anything to their left was sent by the client and may be made up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["client_address"]


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted_proxy_count: int) -> str:
    """The `trusted_proxy_count`-th X-Forwarded-For entry from the right, or the peer address.

    With no trusted proxy, or fewer entries than trusted proxies (the request did not come through
    them), the header is ignored, as werkzeug's ProxyFix does.
    """
    if trusted_proxy_count > 0:
        hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
        if len(hops) >= trusted_proxy_count:
            return _normalise(hops[-trusted_proxy_count])
    return _normalise(peer or "unknown")


def _normalise(address: str) -> str:
    """One spelling per address (::FFFF:1.2.3.4 and 1.2.3.4 count together); other text as it is."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)

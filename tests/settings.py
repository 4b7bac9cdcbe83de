"""Settings in tests, made the way a deployment makes them: from environment variables."""

from __future__ import annotations

from service.settings import Settings


def settings_of(**values: object) -> Settings:
    """Settings from variables named in lower case (`binance_api_url=...`, `okx_timeout=2`); None leaves
    one unset. Only Binance is enabled unless `exchanges` says otherwise: the tests' fakes stand in for
    the venues they name, and no test may reach a real venue."""
    env = {
        name.upper(): str(value).lower() if isinstance(value, bool) else str(value)
        for name, value in values.items()
        if value is not None
    }
    env.setdefault("EXCHANGES", "binance")
    return Settings.from_env(env)

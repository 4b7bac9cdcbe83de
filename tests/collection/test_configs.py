"""Collection configs as a service of their own (no HTTP): the one-config-per-pair rule and the schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.db import configs as configs_db
from service.errors import ConflictError, InvalidInputError, NotFoundError
from service.tasks.configs import ConfigChanges, Configs
from tests.conftest import Api


def configs_of(api: Api) -> Configs:
    configs: Configs = api.app.state.runtime.configs
    return configs


async def create(configs: Configs, symbol: str = "BTCUSDT", **fields: Any) -> Any:
    values: dict[str, Any] = {
        "exchange": "binance", "timeframes": ["1m"], "interval_minutes": 10, "enabled": True,
        "description": None, "created_by": "ops@example.com", **fields,
    }
    return await configs.create(symbol=symbol, **values)


def checked_too_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next duplicate check finds nothing, as when another request inserts the pair right after it."""
    real = configs_db.find_by_pair
    calls = 0

    async def find_by_pair(conn: Any, exchange: str, symbol: str) -> Any:
        nonlocal calls
        calls += 1
        return None if calls == 1 else await real(conn, exchange, symbol)

    monkeypatch.setattr(configs_db, "find_by_pair", find_by_pair)


async def test_a_create_that_loses_the_race_for_its_pair_is_a_conflict_naming_the_winner(
    admin: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the pair is taken between the check and the insert, the unique violation comes back as the
    same conflict a plain duplicate gets, naming the config that won."""
    configs = configs_of(admin)
    winner = await create(configs, "ETH/USDT")
    checked_too_late(monkeypatch)
    with pytest.raises(ConflictError) as caught:
        await create(configs, "ETHUSDT")
    assert caught.value.extra == {"config_id": winner.id}
    assert f"already exists (id {winner.id})" in caught.value.detail
    assert [c.id for c in await configs.list_configs(enabled=None, exchange=None, skip=0, limit=10)] == [winner.id]


async def test_an_update_that_loses_the_race_for_its_pair_is_a_conflict(
    admin: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moving a config onto a pair taken meanwhile is refused as a conflict, and the config stays as it was."""
    configs = configs_of(admin)
    btc = await create(configs, "BTCUSDT")
    eth = await create(configs, "ETHUSDT")
    checked_too_late(monkeypatch)
    with pytest.raises(ConflictError) as caught:
        await configs.update(eth.id, ConfigChanges(symbol="BTCUSDT"))
    assert caught.value.extra == {"config_id": btc.id}
    assert (await configs.get(eth.id)).symbol == "ETHUSDT"


async def test_the_schedule_follows_create_disable_enable_and_interval(admin: Api) -> None:
    """A new config is due at once; disabled it has no next run; re-enabled it is due again; a new interval
    counts from the last run (none yet: due at once)."""
    configs = configs_of(admin)
    now = datetime.now(UTC)
    created = await create(configs, "BTC/USDT", interval_minutes=15)
    assert created.symbol == "BTCUSDT" and created.created_by == "ops@example.com"
    assert created.next_run_at is not None and abs(created.next_run_at - now) < timedelta(seconds=30)
    assert (await configs.disable(created.id)).next_run_at is None
    enabled = await configs.enable(created.id)
    assert enabled.enabled and enabled.next_run_at is not None
    changed = await configs.update(created.id, ConfigChanges(interval_minutes=30, description="slower"))
    assert (changed.interval_minutes, changed.description) == (30, "slower")
    assert changed.next_run_at is not None and abs(changed.next_run_at - now) < timedelta(seconds=30)


async def test_the_rules_hold_without_http(admin: Api) -> None:
    """Unknown symbol, timeframe or exchange, a too short interval and unknown ids are refused by the service itself."""
    configs = configs_of(admin)
    with pytest.raises(InvalidInputError, match="NOPEUSDT"):
        await create(configs, "NOPEUSDT")
    with pytest.raises(InvalidInputError, match="7m"):
        await create(configs, timeframes=["7m"])
    with pytest.raises(InvalidInputError, match="kraken"):
        await create(configs, exchange="kraken")
    with pytest.raises(InvalidInputError, match="MIN_INTERVAL_MINUTES"):
        await create(configs, interval_minutes=0)
    for missing in (configs.get(999), configs.delete(999), configs.enable(999), configs.trigger(999)):
        with pytest.raises(NotFoundError, match="999"):
            await missing

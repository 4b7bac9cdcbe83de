"""Admin API for collection configs: CRUD with the reference guide's shapes, and a clear 4xx for every rule."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service.settings import Settings
from tests.conftest import TEST_ADMIN_EMAIL, Api, assert_error, running_app
from tests.fakes.binance import FakeBinance

URL = "/api/v1/admin/data-collection/configs"
CONFIG_FIELDS = {
    "id", "symbol", "exchange", "timeframes", "interval_minutes", "live", "enabled", "job_id", "description",
    "created_at", "updated_at", "created_by", "last_run_at", "next_run_at", "history_start", "paused_reason",
    "paused_at",
}


async def create(api: Api, **fields: Any) -> dict[str, Any]:
    body = {"symbol": "BTCUSDT", "timeframes": ["1m", "1h"], "interval_minutes": 10, **fields}
    response = await api.http.post(URL, json=body)
    assert response.status_code == 201, response.text
    config: dict[str, Any] = response.json()
    return config


def parse(ts: str | None) -> datetime | None:
    return None if ts is None else datetime.fromisoformat(ts)


def near_now(ts: str | None) -> bool:
    value = parse(ts)
    return value is not None and abs(value - datetime.now(UTC)) < timedelta(seconds=30)


async def test_crud_round_trip_with_the_reference_fields(admin: Api, db: asyncpg.Connection[Any]) -> None:
    """Create (201), read, list, update, delete (204) a config; every field of the Config shape is there."""
    created = await create(
        admin, symbol="ETH/USDT", exchange="binance", timeframes=["1m", "5m", "15m", "1h", "4h", "1d"],
        interval_minutes=10, enabled=True, description="Ethereum data collection",
    )
    config_id = created["id"]
    assert set(created) == CONFIG_FIELDS
    assert {k: v for k, v in created.items() if k not in ("id", "created_at", "next_run_at")} == {
        "symbol": "ETHUSDT", "exchange": "binance", "timeframes": ["1m", "5m", "15m", "1h", "4h", "1d"],
        "interval_minutes": 10, "live": False, "enabled": True, "job_id": f"collect_data_{config_id}",
        "description": "Ethereum data collection", "updated_at": None, "created_by": TEST_ADMIN_EMAIL,
        "last_run_at": None, "history_start": None, "paused_reason": None, "paused_at": None,
    }
    assert near_now(created["created_at"])
    # A new enabled config is scheduled to run promptly.
    assert near_now(created["next_run_at"])

    assert (await admin.http.get(f"{URL}/{config_id}")).json() == created
    assert (await admin.http.get(URL)).json() == [created]

    response = await admin.http.put(f"{URL}/{config_id}", json={"interval_minutes": 5, "timeframes": ["1m", "1h"]})
    assert response.status_code == 200, response.text
    updated = response.json()
    assert (updated["interval_minutes"], updated["timeframes"]) == (5, ["1m", "1h"])
    assert near_now(updated["updated_at"])
    changed = ("interval_minutes", "timeframes", "updated_at", "next_run_at")
    assert {k: v for k, v in updated.items() if k not in changed} == {
        k: v for k, v in created.items() if k not in changed
    }
    assert near_now(updated["next_run_at"])  # it never ran: still due promptly
    assert (await admin.http.get(f"{URL}/{config_id}")).json() == updated
    stored = await db.fetchrow("SELECT symbol, timeframes, interval_minutes FROM data_collection_configs")
    assert stored is not None
    assert tuple(stored.values()) == ("ETHUSDT", ["1m", "1h"], 5)

    response = await admin.http.delete(f"{URL}/{config_id}")
    assert (response.status_code, response.content) == (204, b"")
    assert_error(await admin.http.get(f"{URL}/{config_id}"), 404, f"no collection config with id {config_id}")
    assert (await admin.http.get(URL)).json() == []


async def test_defaults_and_deduplicated_timeframes(admin: Api) -> None:
    """exchange defaults to binance, enabled to true, description to null; repeated timeframes are kept once."""
    created = await create(admin, symbol="XRPETH", timeframes=["1h", "1m", "1h", "1m"])
    assert (created["exchange"], created["enabled"], created["description"]) == ("binance", True, None)
    assert created["timeframes"] == ["1h", "1m"]


async def test_every_create_rule_gives_a_clear_4xx(admin: Api) -> None:
    """Unknown exchange or symbol, bad or empty timeframes, bad JSON and wrong types are refused; nothing stored."""
    post = admin.http.post
    base = {"symbol": "BTCUSDT", "timeframes": ["1m"], "interval_minutes": 10}
    body = assert_error(await post(URL, json={**base, "exchange": "kucoin"}), 422, "unknown exchange 'kucoin'")
    assert body["detail"] == "unknown exchange 'kucoin'; supported: binance"
    # A venue the service knows but this deployment does not collect from (EXCHANGES=binance here).
    body = assert_error(await post(URL, json={**base, "exchange": "kraken"}), 422, "'kraken' is not enabled here")
    assert body["extra"] == {"supported": ["binance"]}
    body = assert_error(await post(URL, json={**base, "symbol": "NOPE/USDT"}), 422, "'NOPE/USDT'")
    assert body["extra"]["unknown_symbols"] == ["NOPE/USDT"]
    body = assert_error(await post(URL, json={**base, "timeframes": ["1m", "7m"]}), 422, "'7m'")
    assert body["extra"]["invalid"] == ["7m"]
    assert_error(await post(URL, json={**base, "timeframes": []}), 422, "timeframes must not be empty")
    assert_error(await post(URL, json={**base, "interval_minutes": 0}), 422, "at least 1")
    assert_error(
        await post(URL, content=b'{"symbol": "BTCUSDT",', headers={"content-type": "application/json"}), 400
    )
    assert_error(await post(URL, json={"timeframes": ["1m"], "interval_minutes": 10}), 400, "symbol")
    assert_error(await post(URL, json={**base, "interval_minutes": "ten"}), 400, "interval_minutes")
    assert_error(await post(URL, json={**base, "timeframes": "1m"}), 400, "timeframes")
    assert_error(await post(URL, json={**base, "interval_minutes": 2**31}), 400, "interval_minutes")
    assert (await admin.http.get(URL)).json() == []


async def test_interval_below_the_minimum_is_refused(make_settings: Callable[..., Settings]) -> None:
    """With MIN_INTERVAL_MINUTES=5, 4 minutes is a 422 naming the minimum (on create and update); 5 is accepted."""
    async with running_app(make_settings(min_interval_minutes=5, scheduler_enabled=False)) as api:
        base = {"symbol": "BTCUSDT", "timeframes": ["1m"]}
        body = assert_error(
            await api.http.post(URL, json={**base, "interval_minutes": 4}), 422, "at least 5", "MIN_INTERVAL_MINUTES"
        )
        assert body["extra"] == {"minimum": 5}
        created = await create(api, interval_minutes=5)
        assert_error(await api.http.put(f"{URL}/{created['id']}", json={"interval_minutes": 4}), 422, "at least 5")
        assert (await api.http.get(f"{URL}/{created['id']}")).json()["interval_minutes"] == 5


async def test_symbols_are_stored_as_the_exchange_names_them(admin: Api) -> None:
    """BTC/USDT and btcusdt are stored as BTCUSDT."""
    assert (await create(admin, symbol="BTC/USDT"))["symbol"] == "BTCUSDT"
    assert (await create(admin, symbol=" ethusdt "))["symbol"] == "ETHUSDT"


async def test_an_empty_symbol_table_is_refreshed_before_validating(
    admin: Api, fake: FakeBinance, db: asyncpg.Connection[Any]
) -> None:
    """A symbol listed after the symbols were loaded is unknown while the table has symbols, and found
    once it was empty (the table loads on first use when no symbol refresh has run)."""
    await create(admin, symbol="BTCUSDT")  # loads the symbol table
    fake.add_symbol("SOLUSDT", "SOL", "USDT")
    base = {"timeframes": ["1h"], "interval_minutes": 10}
    assert_error(await admin.http.post(URL, json={**base, "symbol": "SOL/USDT"}), 422, "'SOL/USDT'")
    await db.execute("DELETE FROM symbols")
    created = await create(admin, symbol="SOL/USDT")
    assert created["symbol"] == "SOLUSDT"
    assert await db.fetchval("SELECT count(*) FROM symbols WHERE exchange = 'binance'") == 4


async def test_one_config_per_exchange_and_symbol(admin: Api) -> None:
    """A second config for the same pair, in any spelling, is a 409 naming the existing config's id."""
    btc = await create(admin, symbol="BTCUSDT")
    eth = await create(admin, symbol="ETHUSDT")
    for spelling in ("BTCUSDT", "BTC/USDT", "btc/usdt"):
        body = assert_error(
            await admin.http.post(URL, json={"symbol": spelling, "timeframes": ["1d"], "interval_minutes": 60}),
            409, f"(id {btc['id']})",
        )
        assert body["extra"] == {"config_id": btc["id"]}
    # Moving another config onto the pair is a conflict too; keeping one's own pair is not.
    assert_error(await admin.http.put(f"{URL}/{eth['id']}", json={"symbol": "BTC/USDT"}), 409, f"(id {btc['id']})")
    same = await admin.http.put(f"{URL}/{btc['id']}", json={"symbol": "BTC/USDT", "exchange": "binance"})
    assert same.status_code == 200, same.text
    assert [c["symbol"] for c in (await admin.http.get(URL)).json()] == ["BTCUSDT", "ETHUSDT"]


async def test_unknown_ids_are_404(admin: Api) -> None:
    """get, update, delete, enable and disable of an unknown id answer 404 naming the id."""
    http = admin.http
    for response in (
        await http.get(f"{URL}/999"),
        await http.put(f"{URL}/999", json={"interval_minutes": 5}),
        await http.delete(f"{URL}/999"),
        await http.post(f"{URL}/999/enable"),
        await http.post(f"{URL}/999/disable"),
    ):
        assert_error(response, 404, "no collection config with id 999")


async def test_partial_update_changes_only_what_is_sent(admin: Api) -> None:
    """PUT changes the given fields; description null clears it; invalid values change nothing."""
    created = await create(admin, symbol="BTCUSDT", description="Bitcoin data collection")
    url = f"{URL}/{created['id']}"
    cleared = (await admin.http.put(url, json={"description": None})).json()
    assert cleared["description"] is None
    keep = ("symbol", "exchange", "timeframes", "interval_minutes", "enabled", "job_id", "created_at")
    assert {k: cleared[k] for k in keep} == {k: created[k] for k in keep}

    nothing = (await admin.http.put(url, json={})).json()
    assert {k: nothing[k] for k in (*keep, "description")} == {k: cleared[k] for k in (*keep, "description")}

    moved = (await admin.http.put(url, json={"symbol": "eth/usdt", "timeframes": ["1d", "1d"]})).json()
    assert (moved["symbol"], moved["timeframes"], moved["interval_minutes"]) == ("ETHUSDT", ["1d"], 10)

    assert_error(await admin.http.put(url, json={"exchange": "kucoin"}), 422, "unknown exchange 'kucoin'")
    assert_error(await admin.http.put(url, json={"symbol": "NOPE"}), 422, "'NOPE'")
    assert_error(await admin.http.put(url, json={"timeframes": ["2m"]}), 422, "'2m'")
    assert_error(await admin.http.put(url, json={"timeframes": []}), 422, "timeframes")
    assert_error(await admin.http.put(url, json={"interval_minutes": 0}), 422, "interval_minutes")
    assert_error(await admin.http.put(url, json={"symbol": None}), 400, "symbol")
    assert_error(await admin.http.put(url, content=b"[1,", headers={"content-type": "application/json"}), 400)
    after = (await admin.http.get(url)).json()
    assert after == moved


async def test_enable_and_disable_flip_the_schedule(admin: Api) -> None:
    """Disabled configs have no next run; enabling schedules one promptly, disabling clears it again."""
    created = await create(admin, enabled=False)
    assert (created["enabled"], created["next_run_at"]) == (False, None)
    url = f"{URL}/{created['id']}"

    enabled = await admin.http.post(f"{url}/enable")
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["enabled"] is True
    assert near_now(enabled.json()["next_run_at"])

    disabled = await admin.http.post(f"{url}/disable")
    assert disabled.status_code == 200, disabled.text
    assert (disabled.json()["enabled"], disabled.json()["next_run_at"]) == (False, None)
    assert (await admin.http.get(url)).json() == disabled.json()

    via_put = (await admin.http.put(url, json={"enabled": True})).json()
    assert via_put["enabled"] is True
    assert near_now(via_put["next_run_at"])


async def test_a_changed_interval_counts_from_the_last_run(admin: Api, db: asyncpg.Connection[Any]) -> None:
    """After a run 3 minutes ago, interval 10 puts the next run 10 minutes after it; interval 2 makes it due now."""
    created = await create(admin, interval_minutes=60)
    last = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    await db.execute("UPDATE data_collection_configs SET last_run_at = $1 WHERE id = $2", last, created["id"])
    url = f"{URL}/{created['id']}"
    ten = (await admin.http.put(url, json={"interval_minutes": 10})).json()
    assert parse(ten["next_run_at"]) == last + timedelta(minutes=10)
    assert parse(ten["last_run_at"]) == last
    two = (await admin.http.put(url, json={"interval_minutes": 2})).json()
    assert near_now(two["next_run_at"])
    assert parse(two["next_run_at"]) > last + timedelta(minutes=2)  # type: ignore[operator]


async def test_every_change_wakes_the_scheduler(admin: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Create, update, enable, disable and delete each notify the schedulers once; refused requests do not."""
    scheduler = admin.app.state.runtime.scheduler
    calls: list[str] = []

    async def changed() -> None:
        calls.append("changed")

    monkeypatch.setattr(scheduler, "changed", changed)
    created = await create(admin)
    url = f"{URL}/{created['id']}"
    await admin.http.put(url, json={"interval_minutes": 20})
    await admin.http.post(f"{url}/disable")
    await admin.http.post(f"{url}/enable")
    assert len(calls) == 4
    assert_error(await admin.http.put(url, json={"interval_minutes": 0}), 422)
    duplicate = {"symbol": "BTCUSDT", "timeframes": ["1m"], "interval_minutes": 5}
    assert_error(await admin.http.post(URL, json=duplicate), 409)
    assert len(calls) == 4
    assert (await admin.http.delete(url)).status_code == 204
    assert len(calls) == 5


async def test_list_filters_and_pagination(admin: Api) -> None:
    """enabled and exchange filter the list, skip/limit page it by id, and limit above 100 is a 400."""
    btc = await create(admin, symbol="BTCUSDT")
    eth = await create(admin, symbol="ETHUSDT", enabled=False)
    xrp = await create(admin, symbol="XRPETH")

    async def ids(query: str) -> list[int]:
        response = await admin.http.get(f"{URL}{query}")
        assert response.status_code == 200, response.text
        return [c["id"] for c in response.json()]

    assert await ids("") == [btc["id"], eth["id"], xrp["id"]]
    assert await ids("?enabled=true") == [btc["id"], xrp["id"]]
    assert await ids("?enabled=false") == [eth["id"]]
    assert await ids("?exchange=binance") == [btc["id"], eth["id"], xrp["id"]]
    assert await ids("?exchange=kraken") == []
    assert await ids("?skip=1&limit=1") == [eth["id"]]
    assert await ids("?skip=3") == []
    assert await ids("?limit=100") == [btc["id"], eth["id"], xrp["id"]]
    assert_error(await admin.http.get(f"{URL}?limit=101"), 400, "limit")
    assert_error(await admin.http.get(f"{URL}?limit=0"), 400, "limit")
    assert_error(await admin.http.get(f"{URL}?skip=-1"), 400, "skip")
    assert_error(await admin.http.get(f"{URL}?enabled=maybe"), 400, "enabled")


async def test_routes_are_in_the_openapi_document(admin: Api) -> None:
    """The OpenAPI document names every admin config operation, and the update body has only optional fields."""
    doc = (await admin.http.get("/docs/openapi.json")).json()
    operations = {op["operationId"] for path in doc["paths"].values() for op in path.values()}
    assert {
        "listConfigs", "createConfig", "getConfig", "updateConfig", "deleteConfig", "enableConfig",
        "disableConfig", "triggerConfig",
    } <= operations
    update = doc["components"]["schemas"]["UpdateConfig"]
    assert update.get("required", []) == []
    assert set(update["properties"]) == {
        "symbol", "exchange", "timeframes", "interval_minutes", "live", "enabled", "description", "history_start",
    }


async def stored_start(db: asyncpg.Connection[Any]) -> tuple[datetime | None, bool]:
    row = await db.fetchrow("SELECT history_start, history_from_listing FROM data_collection_configs")
    assert row is not None
    return row["history_start"], row["history_from_listing"]


async def test_history_start_is_created_read_changed_and_cleared(admin: Api, db: asyncpg.Connection[Any]) -> None:
    """history_start: an ISO time (UTC unless it has an offset) or "listing" round-trips through create,
    read, list and update; null clears it; the other fields stay."""
    created = await create(admin, history_start="2024-01-01")
    url = f"{URL}/{created['id']}"
    assert created["history_start"] == "2024-01-01T00:00:00Z"
    assert (await admin.http.get(url)).json() == created
    assert (await admin.http.get(URL)).json() == [created]
    assert await stored_start(db) == (datetime(2024, 1, 1, tzinfo=UTC), False)

    shifted = (await admin.http.put(url, json={"history_start": "2024-03-01T12:30:00+02:00"})).json()
    assert shifted["history_start"] == "2024-03-01T10:30:00Z"

    listing = (await admin.http.put(url, json={"history_start": "Listing"})).json()
    assert listing["history_start"] == "listing"
    assert (await admin.http.get(url)).json()["history_start"] == "listing"
    assert await stored_start(db) == (None, True)

    untouched = (await admin.http.put(url, json={"interval_minutes": 20})).json()
    assert untouched["history_start"] == "listing"

    cleared = (await admin.http.put(url, json={"history_start": None})).json()
    assert cleared["history_start"] is None
    assert await stored_start(db) == (None, False)
    keep = ("symbol", "timeframes", "interval_minutes", "enabled", "description")
    assert {k: cleared[k] for k in keep} == {k: untouched[k] for k in keep}

    from_listing = await create(admin, symbol="ETHUSDT", history_start="listing")
    assert from_listing["history_start"] == "listing"
    assert (await create(admin, symbol="XRPETH"))["history_start"] is None


async def test_a_bad_or_future_history_start_is_a_422_naming_it(admin: Api) -> None:
    """Garbage, a time before 1970 and a future time are refused on create and update; nothing changes."""
    base = {"symbol": "BTCUSDT", "timeframes": ["1m"], "interval_minutes": 10}
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for value, needle in (("yesterday", "ISO 8601"), ("1969-12-31", "1970"), (future, "future")):
        body = assert_error(await admin.http.post(URL, json={**base, "history_start": value}), 422, "history_start",
                            needle)
        assert body["extra"]["field"] == "history_start"
    assert_error(await admin.http.post(URL, json={**base, "history_start": ""}), 400, "history_start")
    assert (await admin.http.get(URL)).json() == []

    created = await create(admin, history_start="2024-01-01")
    url = f"{URL}/{created['id']}"
    assert_error(await admin.http.put(url, json={"history_start": "soon"}), 422, "history_start")
    assert_error(await admin.http.put(url, json={"history_start": future}), 422, "history_start", "future")
    assert (await admin.http.get(url)).json() == created

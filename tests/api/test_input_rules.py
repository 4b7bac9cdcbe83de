"""Input rules: every bad input is a clear 4xx naming what is wrong, never a 500 and never a slow path."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.db import symbols as symbols_db
from service.settings import Settings, SettingsError
from tests.conftest import Api, assert_error, running_app

CONFIGS = "/api/v1/admin/data-collection/configs"
LOGS = "/api/v1/admin/data-collection/execution-logs"
START = "/api/v1/data-collector/start"
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1
MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


async def create_config(api: Api, **fields: Any) -> dict[str, Any]:
    body = {"symbol": "BTCUSDT", "timeframes": ["1h"], "interval_minutes": 10, **fields}
    response = await api.http.post(CONFIGS, json=body)
    assert response.status_code == 201, response.text
    config: dict[str, Any] = response.json()
    return config


# --- ids and pagination bounded by the columns they address ---------------------------------------


@pytest.mark.parametrize("config_id", [2**31, 2**63, 10**30])
async def test_config_ids_beyond_int4_are_a_400_naming_the_id(admin: Api, config_id: int) -> None:
    """Every /configs/{id} route answers 400 naming config_id for an id no int4 column can hold."""
    http = admin.http
    for response in (
        await http.get(f"{CONFIGS}/{config_id}"),
        await http.put(f"{CONFIGS}/{config_id}", json={"interval_minutes": 5}),
        await http.delete(f"{CONFIGS}/{config_id}"),
        await http.post(f"{CONFIGS}/{config_id}/enable"),
        await http.post(f"{CONFIGS}/{config_id}/disable"),
        await http.post(f"{CONFIGS}/{config_id}/trigger"),
    ):
        assert_error(response, 400, "config_id")


async def test_the_largest_int4_config_id_is_a_plain_404(admin: Api) -> None:
    """2^31-1 is a valid id that does not exist: 404 on every /configs/{id} route."""
    http = admin.http
    for response in (
        await http.get(f"{CONFIGS}/{INT4_MAX}"),
        await http.put(f"{CONFIGS}/{INT4_MAX}", json={"interval_minutes": 5}),
        await http.delete(f"{CONFIGS}/{INT4_MAX}"),
        await http.post(f"{CONFIGS}/{INT4_MAX}/enable"),
        await http.post(f"{CONFIGS}/{INT4_MAX}/disable"),
        await http.post(f"{CONFIGS}/{INT4_MAX}/trigger"),
    ):
        assert_error(response, 404, str(INT4_MAX))


async def test_execution_log_ids_are_bounded_by_bigint(admin: Api) -> None:
    """A log id past 2^63-1 is a 400 naming log_id; the largest bigint (and anything past int4) is a 404."""
    assert_error(await admin.http.get(f"{LOGS}/{2**63}"), 400, "log_id")
    assert_error(await admin.http.get(f"{LOGS}/{INT8_MAX}"), 404, str(INT8_MAX))
    assert_error(await admin.http.get(f"{LOGS}/{2**31}"), 404, str(2**31))


async def test_skip_past_bigint_is_a_400_on_every_list(admin: Api) -> None:
    """skip >= 2^63 is a 400 naming skip on the config list, the log list and the CSV export."""
    for url in (CONFIGS, LOGS, f"{LOGS}.csv"):
        assert_error(await admin.http.get(f"{url}?skip={2**63}"), 400, "skip")
        response = await admin.http.get(f"{url}?skip={INT8_MAX}")
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("query", "field"),
    [("start_date=0001-01-01T00:00:00%2B01:00", "start_date"), ("end_date=9999-12-31T23:59:59-01:00", "end_date")],
)
async def test_a_log_date_beyond_year_9999_or_before_year_1_in_utc_is_a_400(
    admin: Api, query: str, field: str
) -> None:
    """A date that leaves years 1..9999 once converted to UTC is a 400 naming it, on the JSON and CSV lists."""
    for url in (LOGS, f"{LOGS}.csv"):
        assert_error(await admin.http.get(f"{url}?{query}"), 400, field)


# --- text PostgreSQL refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/api/v1/data-collector/tasks?task_type=%00", "task_type"),
        ("/api/v1/klines?symbol=BTC%00USDT&timeframe=1h", "symbol"),
        ("/api/v1/klines?symbol=BTCUSDT&timeframe=1%00h", "timeframe"),
        ("/api/v1/klines?symbol=BTCUSDT&timeframe=1h&exchange=bin%00ance", "exchange"),
        (f"{LOGS}?symbol=%00", "symbol"),
        (f"{LOGS}?job_name=a%00b", "job_name"),
        (f"{LOGS}?job_type=%00", "job_type"),
        (f"{LOGS}.csv?symbol=%00", "symbol"),
        ("/api/v1/admin/data-collection/stats?job_type=%00", "job_type"),
        (f"{CONFIGS}?exchange=%00", "exchange"),
    ],
)
async def test_a_nul_in_a_query_parameter_is_a_400_naming_it(admin: Api, url: str, field: str) -> None:
    """A NUL character (which PostgreSQL text cannot hold) in a query parameter is refused naming the parameter."""
    body = assert_error(await admin.http.get(url), 400, field, "NUL")
    assert "\x00" not in json.dumps(body)  # the refused value is not echoed back


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        (START, {"symbols": ["BTC\x00USDT"], "timeframes": ["1h"]}, "symbols[0]"),
        (START, {"symbols": ["BTCUSDT"], "timeframes": ["1h\x00"]}, "timeframes[0]"),
        (CONFIGS, {"symbol": "BTCUSDT", "timeframes": ["1h"], "interval_minutes": 10, "description": "a\x00"},
         "description"),
        (CONFIGS, {"symbol": "\x00", "timeframes": ["1h"], "interval_minutes": 10}, "symbol"),
        (CONFIGS, {"symbol": "BTCUSDT", "timeframes": ["1h"], "interval_minutes": 10, "exchange": "\x00"},
         "exchange"),
    ],
)
async def test_a_nul_in_a_json_string_is_a_400_naming_the_field(
    admin: Api, url: str, body: dict[str, Any], field: str
) -> None:
    """A NUL character in a JSON body string is refused naming the field; nothing is stored or started."""
    assert_error(await admin.http.post(url, json=body), 400, field, "NUL")
    assert (await admin.http.get(CONFIGS)).json() == []
    assert (await admin.http.get("/api/v1/data-collector/tasks?task_type=data_collection")).json()["count"] == 0


async def test_a_nul_in_a_config_update_is_a_400_and_changes_nothing(admin: Api) -> None:
    """PUT with a NUL in description names the field and leaves the config as it was."""
    config = await create_config(admin, description="kept")
    assert_error(await admin.http.put(f"{CONFIGS}/{config['id']}", json={"description": "x\x00"}), 400, "description")
    assert (await admin.http.get(f"{CONFIGS}/{config['id']}")).json()["description"] == "kept"


async def test_a_lone_surrogate_in_a_json_string_is_a_400_naming_the_field(admin: Api) -> None:
    """An unpaired UTF-16 surrogate escape (not text PostgreSQL can store) is refused naming the field."""
    raw = b'{"symbol": "BTCUSDT", "timeframes": ["1h"], "interval_minutes": 10, "description": "a\\ud800b"}'
    headers = {"content-type": "application/json"}
    assert_error(await admin.http.post(CONFIGS, content=raw, headers=headers), 400, "description", "surrogate")
    raw = b'{"symbols": ["BTCUSDT", "\\udc00"], "timeframes": ["1h"]}'
    assert_error(await admin.http.post(START, content=raw, headers=headers), 400, "symbols[1]", "surrogate")
    # A surrogate pair is an ordinary character (U+1F600) and is stored as such.
    raw = b'{"symbol": "BTCUSDT", "timeframes": ["1h"], "interval_minutes": 10, "description": "\\ud83d\\ude00"}'
    response = await admin.http.post(CONFIGS, content=raw, headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["description"] == "\U0001f600"


async def test_strings_have_length_limits(admin: Api) -> None:
    """Over-long strings are a 400 naming the field, in bodies and in query parameters."""
    base = {"symbol": "BTCUSDT", "timeframes": ["1h"], "interval_minutes": 10}
    assert_error(await admin.http.post(CONFIGS, json={**base, "description": "d" * 1001}), 400, "description")
    assert_error(await admin.http.post(CONFIGS, json={**base, "symbol": "S" * 41}), 400, "symbol")
    assert_error(await admin.http.post(CONFIGS, json={**base, "exchange": "e" * 41}), 400, "exchange")
    assert_error(await admin.http.post(START, json={"symbols": ["S" * 41], "timeframes": ["1h"]}), 400, "symbols[0]")
    assert_error(await admin.http.get(f"{LOGS}?job_name={'j' * 201}"), 400, "job_name")
    assert_error(await admin.http.get(f"/api/v1/data-collector/tasks?task_type={'t' * 65}"), 400, "task_type")
    assert_error(await admin.http.get(f"/api/v1/klines?symbol={'S' * 41}&timeframe=1h"), 400, "symbol")
    # At the limit the value is accepted.
    assert (await create_config(admin, description="d" * 1000))["description"] == "d" * 1000


# --- /start: capped, de-duplicated, resolved in one query ------------------------------------------


async def test_start_caps_symbols_and_timeframes(api: Api) -> None:
    """More than 1,000 symbols or 17 timeframes (the union of every venue's) is a 400 naming the list;
    nothing is started."""
    too_many = [f"S{i}" for i in range(1001)]
    assert_error(await api.http.post(START, json={"symbols": too_many, "timeframes": ["1h"]}), 400, "symbols", "1000")
    frames = ["1m"] * 18
    assert_error(await api.http.post(START, json={"symbols": ["BTCUSDT"], "timeframes": frames}), 400, "timeframes")
    assert (await api.http.get("/api/v1/data-collector/tasks?task_type=data_collection")).json()["count"] == 0


async def test_start_de_duplicates_every_spelling_of_a_symbol(api: Api) -> None:
    """BTCUSDT, btcusdt, BTC/USDT and repeats of them are one series per timeframe."""
    symbols = ["BTCUSDT", "btcusdt", "BTC/USDT", " btc/usdt ", "ETHUSDT", "BTCUSDT"]
    task = await api.wait(await api.start(symbols, ["1h", "1h"]))
    assert task["params"]["symbols"] == ["BTCUSDT", "ETHUSDT"]
    assert task["params"]["timeframes"] == ["1h"]


async def test_the_unknown_symbol_422_lists_the_first_20_and_counts_them_all(api: Api) -> None:
    """1,000 symbols of which 999 are unknown: a 422 listing the first 20 unknown and saying how many there were."""
    unknown = [f"NOPE{i}" for i in range(999)]
    response = await api.http.post(START, json={"symbols": ["BTCUSDT", *unknown], "timeframes": ["1h"]})
    body = assert_error(response, 422, "999 unknown symbols", "'NOPE0'", "'NOPE19'", "and 979 more")
    assert body["extra"] == {"unknown_symbols": unknown[:20], "unknown_count": 999}
    assert "NOPE20" not in body["detail"]


async def test_symbols_are_resolved_in_one_statement(db: asyncpg.Connection[Any], api: Api) -> None:
    """1,000 names in every spelling are resolved by a single SQL statement, each to the exchange's name or None."""
    statements: list[str] = []
    db.add_query_logger(lambda record: statements.append(record.query))
    names = ["BTCUSDT", "btc/usdt", "ETH/USDT", "XRPETH", "NOPE", "NO/PE", *(f"X{i}" for i in range(994))]
    resolved = await symbols_db.resolve_symbols(db, "binance", names)
    await asyncio.sleep(0)  # asyncpg calls query loggers soon after, not at once
    assert len(statements) == 1
    assert resolved["BTCUSDT"] == "BTCUSDT"
    assert resolved["btc/usdt"] == "BTCUSDT"
    assert resolved["ETH/USDT"] == "ETHUSDT"
    assert resolved["XRPETH"] == "XRPETH"
    assert resolved["NOPE"] is None and resolved["NO/PE"] is None and resolved["X993"] is None
    assert len(resolved) == 1000


# --- bodies: size, content type, strict types, sane maxima -----------------------------------------


async def test_a_body_over_max_body_bytes_is_a_413(api: Api) -> None:
    """A body one byte over 1 MiB (the default MAX_BODY_BYTES) is a 413 on a JSON route, before any parsing."""
    body = b'{"symbols": ["' + b"A" * (MIB - 16) + b'"]}'
    assert len(body) == MIB + 1
    response = await api.http.post(START, content=body, headers={"content-type": "application/json"})
    assert_error(response, 413, "1048576")


async def test_a_body_at_max_body_bytes_is_read_and_refused_for_its_content(api: Api) -> None:
    """A body of exactly 1 MiB is read; its over-long symbol list is a 400, not a 413 and not a slow path."""
    head = b'{"symbols": [' + b'"BTCUSDT",' * 100_000
    body = head + b'"' + b"B" * (MIB - len(head) - 4) + b'"]}'
    assert len(body) == MIB
    response = await api.http.post(START, content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, "symbols")


async def test_max_body_bytes_is_a_setting(make_settings: Callable[..., Settings]) -> None:
    """MAX_BODY_BYTES=100: a 101-byte body is a 413, a 100-byte one is read."""
    async with running_app(make_settings(max_body_bytes=100)) as api:
        body = b'{"symbols": ["BTCUSDT"], "timeframes": ["1h"]}'
        padded = body + b" " * (101 - len(body))
        response = await api.http.post(START, content=padded, headers={"content-type": "application/json"})
        assert_error(response, 413, "100")
        response = await api.http.post(START, content=padded[:100], headers={"content-type": "application/json"})
        assert response.status_code == 202, response.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
async def test_json_routes_refuse_other_content_types_with_415(admin: Api, content_type: str) -> None:
    """A JSON body sent as another media type is a 415 naming what is expected; nothing is stored."""
    raw = json.dumps({"symbol": "BTCUSDT", "timeframes": ["1h"], "interval_minutes": 10}).encode()
    body = assert_error(
        await admin.http.post(CONFIGS, content=raw, headers={"content-type": content_type}), 415, "application/json"
    )
    assert body["extra"] == {"expected": "application/json", "received": content_type}
    assert (await admin.http.get(CONFIGS)).json() == []


async def test_json_content_types_with_parameters_or_none_are_accepted(admin: Api) -> None:
    """application/json with a charset, a +json type, or no Content-Type at all are read as JSON."""
    for index, content_type in enumerate(["application/json; charset=utf-8", "application/vnd.api+json", None]):
        symbol = ["BTCUSDT", "ETHUSDT", "XRPETH"][index]
        raw = json.dumps({"symbol": symbol, "timeframes": ["1h"], "interval_minutes": 10}).encode()
        headers = {} if content_type is None else {"content-type": content_type}
        response = await admin.http.post(CONFIGS, content=raw, headers=headers)
        assert response.status_code == 201, (content_type, response.text)


@pytest.mark.parametrize(
    ("field", "value"),
    [("interval_minutes", "10"), ("interval_minutes", 10.0), ("enabled", "true"), ("enabled", 1),
     ("timeframes", "1h"), ("description", 5)],
)
async def test_json_types_are_strict(admin: Api, field: str, value: Any) -> None:
    """A value of the wrong JSON type (a string for an integer, 1 for a boolean...) is a 400 naming the field."""
    body = {"symbol": "BTCUSDT", "timeframes": ["1h"], "interval_minutes": 10, field: value}
    assert_error(await admin.http.post(CONFIGS, json=body), 400, field)
    assert (await admin.http.get(CONFIGS)).json() == []


async def test_strict_types_on_update_and_start(admin: Api) -> None:
    """PUT and /start decode strictly too."""
    config = await create_config(admin)
    assert_error(
        await admin.http.put(f"{CONFIGS}/{config['id']}", json={"interval_minutes": "20"}), 400, "interval_minutes"
    )
    assert_error(await admin.http.post(START, json={"symbols": ["BTCUSDT"], "timeframes": [60]}), 400, "timeframes")
    assert (await admin.http.get(f"{CONFIGS}/{config['id']}")).json()["interval_minutes"] == 10


async def test_interval_minutes_is_at_most_a_week(admin: Api) -> None:
    """interval_minutes above 10,080 is a 400 naming the field and the maximum; 10,080 itself is accepted."""
    base = {"symbol": "BTCUSDT", "timeframes": ["1h"]}
    assert_error(await admin.http.post(CONFIGS, json={**base, "interval_minutes": 10_081}), 400, "interval_minutes",
                 "10080")
    assert_error(await admin.http.post(CONFIGS, json={**base, "interval_minutes": INT4_MAX}), 400, "interval_minutes")
    config = await create_config(admin, interval_minutes=10_080)
    assert config["interval_minutes"] == 10_080
    assert_error(
        await admin.http.put(f"{CONFIGS}/{config['id']}", json={"interval_minutes": 10_081}), 400, "interval_minutes"
    )


async def test_malformed_json_is_a_400(admin: Api) -> None:
    """A body that is not JSON, or is JSON of the wrong shape, is a 400 saying so."""
    headers = {"content-type": "application/json"}
    assert_error(await admin.http.post(CONFIGS, content=b'{"symbol": ', headers=headers), 400, "JSON")
    assert_error(await admin.http.post(CONFIGS, content=b"[1, 2]", headers=headers), 400, "object")
    assert_error(await admin.http.post(CONFIGS, content=b"", headers=headers), 400)
    assert_error(await admin.http.post(CONFIGS, content=b"\xff\xfe", headers=headers), 400)


# --- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BINANCE_API_URL": "notaurl"}, "BINANCE_API_URL"),
        ({"BINANCE_API_URL": "ftp://api.binance.com"}, "BINANCE_API_URL"),
        ({"BINANCE_API_URL": "https://"}, "BINANCE_API_URL"),
        ({"BINANCE_API_URL": "https://api.binance.com:99999"}, "BINANCE_API_URL"),
        ({"DATABASE_URL": "postgresql://h:port/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://h/d b"}, "DATABASE_URL"),
        ({"MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES"),
        ({"CORS_ORIGINS": "example.com"}, "CORS_ORIGINS"),
        ({"CORS_ORIGINS": "https://ok.example, https://x.example/path"}, "CORS_ORIGINS"),
    ],
)
def test_bad_urls_and_limits_in_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    """A URL setting that is not a usable URL, or a bad limit, stops start-up naming its variable."""
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_good_urls_and_origins_are_accepted() -> None:
    """http(s) URLs with a host, socket DSNs and comma-separated origins are accepted as given."""
    settings = Settings.from_env({
        "BINANCE_API_URL": "http://127.0.0.1:8080",
        "DATABASE_URL": "postgresql://postgres:@/postgres?host=/tmp/sock",
        "CORS_ORIGINS": "https://a.example, http://localhost:3000",
        "MAX_BODY_BYTES": "2048",
    })
    assert settings.venues["binance"].api_url == "http://127.0.0.1:8080"
    assert settings.cors_origin_list == ("https://a.example", "http://localhost:3000")
    assert settings.max_body_bytes == 2048
    assert Settings.from_env({}).max_body_bytes == MIB
    assert Settings.from_env({}).cors_origin_list == ()


async def test_serve_refuses_to_start_with_binance_api_url_notaurl() -> None:
    """`kline-collector serve` with BINANCE_API_URL=notaurl exits with status 2 naming the variable."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve",
        env={**os.environ, "BINANCE_API_URL": "notaurl"}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "BINANCE_API_URL" in err.decode()

"""Schemathesis against the app in-process: every operation with valid and invalid input, anonymously
and with the admin token, then sequences along the links it infers (create a config, then read,
change, enable, trigger and delete it; list tasks, then read or cancel one). No answer is a 5xx, and
every answer is one the document describes: its status, content type, headers and body schema.

The app runs in the test's event loop (tests/conftest.py); schemathesis and Hypothesis are
synchronous, so each request is sent by running that loop until the app has answered. The runs are
deterministic (derandomized) and bounded in examples, so the test takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import APIOperation, Case, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)

from tests.api.test_openapi_document import OPERATIONS
from tests.conftest import Api

#: What "answers as documented" means here.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: In sequences also: a deleted config stays gone, a created one can be read back.
STATEFUL_CHECKS = [*CHECKS, use_after_free, ensure_resource_availability]

#: The symbols the fake exchange lists (tests/conftest.py). A random symbol is a 422, so without
#: these no config would ever be created and no collection started.
LISTED_SYMBOLS = ("BTCUSDT", "ETH/USDT", "XRPETH")
VALID_TIMEFRAMES = ("1h", "1d", "4h")
EXAMPLES_PER_OPERATION = 12  # per generation mode; each example is sent anonymously and as the admin
CONFIGS = "/api/v1/admin/data-collection/configs"
SEQUENCES = 45
STEPS_PER_SEQUENCE = 8


def hypothesis_settings(max_examples: int, **extra: Any) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,  # the same cases on every run: a failure here is reproducible
        database=None,
        phases=[Phase.explicit, Phase.generate],  # report the first failure as found (no shrinking)
        suppress_health_check=list(HealthCheck),
        **extra,
    )


@pytest.fixture
async def loop() -> asyncio.AbstractEventLoop:
    """The loop the app runs in (the tests' loop, idle while a synchronous test runs)."""
    return asyncio.get_running_loop()


def name_listed_symbols(case: Case) -> None:
    """Most valid cases that name symbols get listed ones instead (chosen from the generated data)."""
    body = case.body
    if not isinstance(body, dict):
        return
    symbol = body.get("symbol")
    if isinstance(symbol, str) and len(symbol) % 4:
        body["symbol"] = LISTED_SYMBOLS[len(symbol) % 4 - 1]
    # Only Binance is enabled (the fake stands in for it): most other venues become it.
    exchange = body.get("exchange")
    if isinstance(exchange, str) and len(exchange) % 4:
        body["exchange"] = "binance"
    # A random history_start is a 422 too: most become one of the accepted forms.
    history_start = body.get("history_start")
    if isinstance(history_start, str) and len(history_start) % 4:
        body["history_start"] = ("listing", "2024-01-01", "2024-01-01T12:00:00+02:00")[len(history_start) % 4 - 1]
    symbols = body.get("symbols")
    if isinstance(symbols, list) and all(isinstance(s, str) for s in symbols) and len(symbols) % 4:
        body["symbols"] = [LISTED_SYMBOLS[len(s) % len(LISTED_SYMBOLS)] for s in symbols]
    # Random timeframes, intervals and range bounds are 422s too: most become accepted ones.
    interval = body.get("interval_minutes")
    if isinstance(interval, int) and not isinstance(interval, bool) and interval < 1 and interval % 4:
        body["interval_minutes"] = 60
    # A new config needs an interval unless it is live (tests/collection/test_live.py has the 422).
    creating = case.operation.method.upper() == "POST" and case.operation.path == CONFIGS
    if creating and interval is None and body.get("live") is not True:
        body["interval_minutes"] = 60
    timeframes = body.get("timeframes")
    if isinstance(timeframes, list) and all(isinstance(t, str) for t in timeframes) and len(timeframes) % 4:
        body["timeframes"] = [VALID_TIMEFRAMES[len(t) % len(VALID_TIMEFRAMES)] for t in timeframes]
    for bound, accepted in (("start", ("listing", "2026-11-20", None)), ("end", (None, "2026-11-21", None))):
        value = body.get(bound)
        if isinstance(value, str) and len(value) % 4:
            body[bound] = accepted[len(value) % 4 - 1]


EVENTS = "/api/v1/events"


class InProcess:
    """Sends schemathesis cases to the app through httpx's ASGI transport, on the app's own loop."""

    def __init__(self, api: Api, loop: asyncio.AbstractEventLoop) -> None:
        self.api = api
        self.loop = loop
        # The event stream never ends, and httpx's ASGI transport reads a body whole: it is tested
        # over a real connection (tests/e2e/test_events.py), everything else here.
        self.schema = schemathesis.openapi.from_dict(api.app.openapi_schema.to_schema()).exclude(path=EVENTS)

    def send(self, case: Case, client: httpx.AsyncClient) -> Response:
        kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
        headers = httpx.Headers(kwargs.get("headers", {}))
        headers.update(client.headers)  # the client's token replaces any the case made up (case-insensitively)
        cookies = kwargs.get("cookies") or {}
        if cookies:  # httpx deprecates per-request cookies; the document declares none
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
        body: dict[str, Any] = {}
        if "json" in kwargs:
            body["json"] = kwargs["json"]
        elif kwargs.get("data") is not None:
            data = kwargs["data"]
            body["content"] = data if isinstance(data, bytes) else str(data).encode()
        request = client.request(
            kwargs["method"], kwargs["url"], params=kwargs.get("params"), headers=headers, **body
        )
        response = self.loop.run_until_complete(request)
        # The service is settled before the next case: a task a case started has ended. Hypothesis
        # replays sequences and needs them to draw alike, which a task still running in one run and
        # ended in its replay (a later trigger answering 409, then 202) would break.
        if response.status_code == 202 and isinstance(started := response.json(), dict) and "task_id" in started:
            self.loop.run_until_complete(self.api.wait(str(started["task_id"])))
        elif response.status_code in (200, 201) and "/configs" in kwargs["url"] and kwargs["method"] != "GET":
            # An enabled config is run by the scheduler at once: wait for that run too.
            self.loop.run_until_complete(self._settle_schedule())
        return Response.from_any(response)

    def start_from(self, configs: list[dict[str, Any]]) -> None:
        """Every sequence starts from the same configs (those, created anew): Hypothesis builds new
        sequences on the prefixes of earlier ones, and a prefix must meet the same state again."""
        self.loop.run_until_complete(self._start_from(configs))

    async def _start_from(self, configs: list[dict[str, Any]]) -> None:
        await self._settle_schedule()
        for config in (await self.api.http.get(CONFIGS)).json():
            assert (await self.api.http.delete(f"{CONFIGS}/{config['id']}")).status_code == 204
        for body in configs:
            assert (await self.api.http.post(CONFIGS, json=body)).status_code == 201

    async def _settle_schedule(self, timeout: float = 10.0) -> None:
        """Until no config is due any more and no task is active."""
        async with asyncio.timeout(timeout):
            while True:
                configs = (await self.api.http.get("/api/v1/admin/data-collection/configs")).json()
                now = datetime.now(UTC)
                due = [
                    c for c in configs
                    if c["enabled"] and c["next_run_at"] is not None and datetime.fromisoformat(c["next_run_at"]) <= now
                ]
                if not due:
                    break
                await asyncio.sleep(0.02)
        await self.api.wait_idle(timeout)


def fuzz(app: InProcess, operation: APIOperation, mode: GenerationMode) -> str | None:
    """Send an operation's generated cases anonymously and as the admin; the first failure, if any."""

    @hypothesis_settings(EXAMPLES_PER_OPERATION)
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def send_both_ways(case: Case) -> None:
        if mode is GenerationMode.POSITIVE:
            name_listed_symbols(case)
        for client in (app.api.anonymous, app.api.http):
            case.validate_response(app.send(case, client), checks=CHECKS)

    try:
        send_both_ways()
    except Exception as exc:  # every operation is tried; all failures are listed at the end
        return f"{operation.label} ({mode.value}): {exc}"
    return None


def test_every_operation_answers_as_documented_with_and_without_a_token(
    api: Api, loop: asyncio.AbstractEventLoop
) -> None:
    """Valid and invalid input to every operation, anonymous and admin: no 5xx, every answer documented."""
    app = InProcess(api, loop)
    operations = [result.ok() for result in app.schema.get_all_operations()]
    assert len(operations) == len(OPERATIONS) - 1  # every operation of the document but the stream
    failures = []
    for operation in operations:
        raw = operation.definition.raw
        # Invalid input cannot be made for an operation that takes none.
        takes_input = bool(raw.get("parameters")) or "requestBody" in raw
        for mode in [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if takes_input else [GenerationMode.POSITIVE]:
            if (failure := fuzz(app, operation, mode)) is not None:
                failures.append(failure)
    assert not failures, "\n\n".join(failures)


def test_linked_sequences_answer_as_documented(api: Api, loop: asyncio.AbstractEventLoop) -> None:
    """Sequences along the inferred links (config and task ids), as the admin: no 5xx, all documented."""
    app = InProcess(api, loop)
    # Configs and a task to start from: the sequences that list them then follow their ids.
    # (One config only: the valid creates the sequences draw name the other listed symbols.)
    start = [{"symbol": "XRPETH", "timeframes": ["1h"], "interval_minutes": 60, "enabled": False}]
    loop.run_until_complete(api.wait(loop.run_until_complete(api.start(["BTCUSDT"], ["1d"]))))
    machine = app.schema.as_state_machine()
    # Transitions are rules named after their source (operation and status) and target operation.
    transitions = [name for name in dir(machine) if "___" in name and not name.startswith("RANDOM__")]
    assert any(name.startswith("POST_api_v1_admin_data_collection_configs___201_") for name in transitions)
    assert any(name.endswith("POST_api_v1_data_collector_task_task_id_cancel") for name in transitions)

    answers: set[tuple[str, int]] = set()

    class AdminWorkflow(machine):  # type: ignore[misc,valid-type]
        def setup(self) -> None:
            app.start_from(start)

        def before_call(self, case: Case) -> None:
            name_listed_symbols(case)

        def call(self, case: Case, **kwargs: Any) -> Response:
            response = app.send(case, api.http)
            answers.add((case.operation.label, response.status_code))
            return response

        def validate_response(
            self, response: Response, case: Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=STATEFUL_CHECKS)

    AdminWorkflow.run(settings=hypothesis_settings(SEQUENCES, stateful_step_count=STEPS_PER_SEQUENCE))
    # The sequences reached real configs and tasks, not only 404s.
    assert {
        ("POST " + CONFIGS, 201), ("GET " + CONFIGS + "/{config_id}", 200), ("DELETE " + CONFIGS + "/{config_id}", 204),
    } <= answers
    assert ("GET /api/v1/data-collector/task/{task_id}", 200) in answers

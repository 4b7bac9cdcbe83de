"""GET /api/v1/events: the live stream of task and execution-log changes (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from litestar import Controller, get
from litestar.openapi import ResponseSpec
from litestar.response import ServerSentEvent, ServerSentEventMessage

from service.api.deps import RuntimeDep
from service.api.openapi import error_responses
from service.auth.guards import requires_reader
from service.process.events import EventHub

__all__ = ["EventsController"]

#: A comment line this often keeps proxies (Heroku's router closes a connection idle for 55 s) and
#: browsers from dropping a quiet stream.
KEEP_ALIVE_SECONDS = 15.0

_DESCRIPTION = """\
One `text/event-stream` for every change, whichever process made it (a task may run in a worker
while this stream is served by a web process):

- `event: task`: a task was submitted, claimed, made progress (at most once a second), was handed
  back, or ended. `data` is JSON: `task_id, task_type, status, progress, message, attempts,
  worker_id, created_at, started_at, completed_at, updated_at`.
- `event: execution_log`: an execution log row was opened or closed. `data`: `id, job_name,
  job_type, symbol, exchange, status, records_collected, error_type, error_message, task_id,
  started_at, finished_at, duration_seconds`.
- `event: candle`: a candle of a live config, as its stream showed it: the open candle at most once
  a second per series, and its close once stored. `data`: `exchange, symbol, timeframe, open_time`
  (epoch ms), `open, high, low, close, volume` (decimal strings, as the venue sent them), `is_closed`.
- `event: resync`: events may have been missed (the stream fell behind, or the server's database
  connection was reopened): read the current state through the API again.

A comment line (`: keep-alive`) comes every 15 s when nothing else does. No history is replayed:
read the current state first (`GET /api/v1/data-collector/tasks/active`), then follow the stream.
Authenticated like the other reads (public unless `PUBLIC_READS=false`)."""


class EventsController(Controller):
    path = "/api/v1/events"
    tags = ["events"]
    guards = [requires_reader]  # public unless PUBLIC_READS=false

    @get(
        operation_id="streamEvents", summary="Live task, execution-log and candle changes (Server-Sent Events)",
        description=_DESCRIPTION,
        responses={
            200: ResponseSpec(None, description="The event stream", media_type="text/event-stream"),
            **error_responses(401),
        },
    )
    async def stream(self, runtime: RuntimeDep) -> ServerSentEvent:
        return ServerSentEvent(_messages(runtime.events))


async def _messages(hub: EventHub) -> AsyncIterator[ServerSentEventMessage]:
    async with hub.subscribe() as queue:
        yield ServerSentEventMessage(comment="connected")
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEP_ALIVE_SECONDS)
            except TimeoutError:
                yield ServerSentEventMessage(comment="keep-alive")
                continue
            if event is None:  # the service is shutting down
                return
            yield ServerSentEventMessage(event=str(event.get("type", "message")), data=json.dumps(event))

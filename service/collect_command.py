"""`kline-collector collect`: one collection run by hand, through the same task code as the API.

The command joins the database's workers as kind 'cli' (service/tasks/single_task.py), submits a
data_collection task (the overlap rules of a running service apply to it) and runs that task itself,
drawing progress bars per series and in total. SIGINT or SIGTERM cancels the task: it is recorded
`cancelled`, its result saying what it wrote (those candles are kept), and the process exits 130 / 143.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn

from service.collection.collector import CollectionResult, SeriesProgress
from service.db.pool import Connection
from service.errors import ConflictError, DatabaseUnavailableError, InvalidInputError
from service.settings import Settings
from service.tasks.registry import TaskBody, TaskHandle, TaskOutcome, TaskView
from service.tasks.single_task import SingleTaskWorker

__all__ = ["EXIT_CONFLICT", "EXIT_FAILED", "EXIT_INVALID", "run_collect"]

#: Exit codes besides 0 (completed) and 128 + signal (cancelled by SIGINT / SIGTERM).
EXIT_FAILED = 1
EXIT_CONFLICT = 1
EXIT_INVALID = 2
# How often the bars are updated from the run's live progress.
_DRAW_EVERY = 0.1


class _Interrupt:
    """The first SIGINT or SIGTERM: it cancels the task (the draw loop acts on it within _DRAW_EVERY)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def handle(self, signum: int) -> None:
        if self.signal is None:
            self.signal = signum

    @property
    def reason(self) -> str:
        assert self.signal is not None
        name = signal.Signals(self.signal).name
        return f"interrupted by {name}" + (" (Ctrl-C)" if self.signal == signal.SIGINT else "")


class _Display:
    """Bars per series and in total on a terminal; elsewhere one line per finished series."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._live = console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[candles]:>10,} candles"),
            TextColumn("{task.fields[rate]:>12}"),
            TimeRemainingColumn(),
            console=console,
            disable=not self._live,
        )
        self._rows: list[TaskID] = []
        self._total: TaskID | None = None
        self._reported: set[int] = set()

    def __enter__(self) -> _Display:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def draw(self, series: Sequence[SeriesProgress], elapsed: float) -> None:
        if not series:
            return
        if self._total is None:
            self._rows = [
                self._progress.add_task(f"{s.symbol} {s.timeframe}", total=None, candles=0, rate="") for s in series
            ]
            self._total = self._progress.add_task("total", total=None, candles=0, rate="")
        for i, (row, s) in enumerate(zip(self._rows, series, strict=True)):
            self._progress.update(
                row, total=s.pages_total, completed=s.pages_done, candles=s.candles_written,
                rate=_rate(s.candles_written, elapsed),
            )
            if s.ended and i not in self._reported:
                self._reported.add(i)
                if not self._live:
                    what = f"failed: {s.error}" if s.error else f"{s.candles_written} candles written"
                    self._console.print(f"{s.symbol} {s.timeframe}: {what}", highlight=False, soft_wrap=True)
        planned = all(s.pages_total is not None for s in series)
        written = sum(s.candles_written for s in series)
        self._progress.update(
            self._total,
            total=sum(s.pages_total or 0 for s in series) if planned else None,
            completed=sum(s.pages_done for s in series), candles=written, rate=_rate(written, elapsed),
        )


def _rate(candles: int, elapsed: float) -> str:
    return f"{candles / elapsed:,.0f}/s" if elapsed > 0 else ""


def _parse_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


async def run_collect(
    settings: Settings,
    dsn: str,
    symbols: str,
    timeframes: str,
    *,
    exchange: str | None = None,
    since: str | None = None,
    until: str | None = None,
    early_signal: Callable[[], int | None],
) -> int:
    """Collect every symbol × timeframe once; the process's exit code. `early_signal`: a SIGINT or
    SIGTERM that came in before this loop's handlers took over (while the database was starting)."""
    from service.process.runtime import open_runtime  # imported late, like the app in `serve`

    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    interrupt = _Interrupt()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt.handle, sig)
    if (early := early_signal()) is not None:
        return 128 + early
    async with open_runtime(settings, dsn, runs_tasks=False) as runtime:
        worker = SingleTaskWorker(
            runtime.pool, runtime.registry, lease_seconds=settings.lease_seconds,
            poll_seconds=settings.task_poll_seconds,
        )
        handles: list[TaskHandle] = []

        def body_for(view: TaskView) -> TaskBody:
            body = runtime.jobs.body_for(view)

            async def watched(handle: TaskHandle) -> TaskOutcome:
                handles.append(handle)  # its live per-series progress feeds the bars
                return await body(handle)

            return watched

        async def submit(conn: Connection) -> TaskView:
            return await runtime.jobs.start_collection(
                _parse_list(symbols), _parse_list(timeframes), exchange=exchange, start=since, end=until, conn=conn
            )

        try:
            try:
                await worker.start()
                if interrupt.signal is not None:
                    return 128 + interrupt.signal
                view, running = await worker.submit_and_run(submit, body_for)
            except ConflictError as exc:
                err.print(f"kline-collector: not started: {exc.detail}", soft_wrap=True)
                return EXIT_CONFLICT
            except InvalidInputError as exc:
                err.print(f"kline-collector: {exc.detail}", soft_wrap=True)
                return EXIT_INVALID
            except DatabaseUnavailableError as exc:
                err.print(f"kline-collector: not started: {exc.detail}", soft_wrap=True)
                return EXIT_FAILED
            console.print(f"task {view.task_id}: collecting {_what(view)}", soft_wrap=True)
            started = time.monotonic()
            with _Display(console) as display:
                cancelled = False
                while not running.done():
                    if interrupt.signal is not None and not cancelled:
                        cancelled = True  # a second signal changes nothing: the end is being recorded
                        runtime.registry.cancel_requested(view.task_id, interrupt.reason)
                    await asyncio.wait([running], timeout=_DRAW_EVERY)
                    display.draw(handles[0].series if handles else [], time.monotonic() - started)
            final = await runtime.registry.get(view.task_id)
        finally:
            await worker.stop()
    console.print(_summary(final, time.monotonic() - started), soft_wrap=True)
    if final.status == "completed":
        return 0
    if final.status == "cancelled" and interrupt.signal is not None:
        return 128 + interrupt.signal
    return EXIT_FAILED


def _what(view: TaskView) -> str:
    """`BTCUSDT, ETHUSDT × 1m, 1h`: what a collection task collects."""
    symbols = view.params.symbols if isinstance(view.params.symbols, list) else []
    frames = view.params.timeframes if isinstance(view.params.timeframes, list) else []
    return f"{', '.join(symbols)} × {', '.join(frames)}"


def _summary(view: TaskView, elapsed: float) -> str:
    """The last line: how the task ended, what it wrote, how fast, and its id."""
    result = view.result if isinstance(view.result, CollectionResult) else None
    written = result.candles_written if result is not None else 0
    series = result.pairs_total if result is not None else 0
    rate = f"{written / elapsed:,.0f}" if elapsed > 0 else "0"
    line = f"{written} candles written for {series} series in {elapsed:.1f} s ({rate} candles/s); task {view.task_id}"
    if view.status == "completed":
        return f"Completed: {line}"
    if view.status == "cancelled":
        return f"{view.message or 'Cancelled'}; {line}"
    failed = f"{result.pairs_failed} of {result.pairs_total} series failed; " if result is not None else ""
    return f"{view.status.capitalize()}: {failed}{line}" + (f"\n  error: {view.error}" if view.error else "")

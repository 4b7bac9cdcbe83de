"""`python -m tests.bench`: set up, run the chosen scenarios, print the table, tear everything down."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.db.embedded import start_embedded_postgres
from tests.bench.infra import BenchError, FakeExchange, Postgres
from tests.bench.report import Outcome, cpu_check_ms, render
from tests.bench.scenarios import (
    FULL,
    QUICK,
    Bench,
    Sizes,
    bulk_outcome,
    bulk_run,
    console,
    live_streams,
    memory_outcome,
    pacing,
    probe_outcome,
    readers_during_backfill,
    reference,
    say,
    startup,
    venues_at_once,
)

SCENARIOS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
# Which fake exchange each scenario talks to (9 starts one per venue itself, just before it runs).
_FAKE_OF = {
    1: "ref", 2: "bulk", 3: "bulk", 4: "pace", 5: "bulk", 6: "startup", 7: "bulk", 8: "startup", 10: "live",
}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Benchmark kline-collector against its own fake exchange and PostgreSQL; prints one table.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: every scenario in seconds")
    parser.add_argument(
        "--scenario", type=int, nargs="+", action="extend", choices=SCENARIOS, metavar="N",
        help="run only these scenarios (1-10; 3 and 5 run the backfill of 2); default: all",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the raw numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (database, logs)")
    parser.add_argument(
        "--service-prefix", default="", metavar="CMD",
        help="run the service under this command, e.g. a profiler: 'py-spy record -o s.svg --'",
    )
    return parser.parse_args(argv)


def _meta(args: argparse.Namespace, sizes: Sizes, scenarios: list[int], argv: Sequence[str]) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m tests.bench", *argv]),
        "mode": "quick" if sizes.quick else "full",
        "scenarios": scenarios,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sizes": dict(vars(sizes)),
    }


async def _run(
    sizes: Sizes, scenarios: list[int], pg: Postgres, log_dir: Path, prefix: list[str], meta: dict[str, Any]
) -> list[Outcome]:
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    bench = Bench(pg=pg, log_dir=log_dir, sizes=sizes, fakes={}, prefix=prefix, double_backfill=5 in scenarios)
    args = bench.fake_args()
    fakes = {
        name: FakeExchange(name, args[name], log_dir)
        for name in sorted({_FAKE_OF[n] for n in scenarios if n in _FAKE_OF})
    }
    bench.fakes = fakes
    outcomes: list[Outcome] = []
    try:
        say("migrating the template database; building the fake exchanges' candles")
        began = time.perf_counter()
        await asyncio.gather(pg.create_template(log_dir), *(f.start() for f in fakes.values()))
        meta["setup_s"] = time.perf_counter() - began
        meta["fake_build_cpu_s"] = {name: (await f.stats())["cpu_seconds"] for name, f in fakes.items()}
        checks: dict[str, float] = {"start": cpu_check_ms()}
        meta["cpu_check_ms"] = checks
        if 1 in scenarios:
            checks["before 1"] = cpu_check_ms()
            outcomes.append(await reference(bench))
        if {2, 3, 5} & set(scenarios):
            checks["before 2"] = cpu_check_ms()
            single = await bulk_run(bench, "2", sizes.bulk_candles, ceiling=2 in scenarios)
            if 2 in scenarios:
                single["without_check"] = await bulk_run(
                    bench, "2b", sizes.bulk_candles, ceiling=False, candle_check=False
                )
                outcomes.append(bulk_outcome(single))
            if 3 in scenarios:
                split = await bulk_run(bench, "3split", sizes.bulk_candles, ceiling=False, split=True)
                outcomes.append(probe_outcome(single, split))
            if 5 in scenarios:
                checks["before 5"] = cpu_check_ms()
                double = await bulk_run(bench, "5", 2 * sizes.bulk_candles, ceiling=False)
                outcomes.append(memory_outcome(single, double))
        if 7 in scenarios:
            checks["before 7"] = cpu_check_ms()
            outcomes.append(await readers_during_backfill(bench))
        if 6 in scenarios:
            checks["before 6"] = cpu_check_ms()
            outcomes.append(await startup(bench))
        if 8 in scenarios:
            checks["before 8"] = cpu_check_ms()
            outcomes.append(await console(bench))
        if 9 in scenarios:
            checks["before 9"] = cpu_check_ms()
            outcomes.append(await venues_at_once(bench))
        if 10 in scenarios:
            checks["before 10"] = cpu_check_ms()
            outcomes.append(await live_streams(bench))
        if 4 in scenarios:
            checks["before 4"] = cpu_check_ms()
            outcomes.append(await pacing(bench))
        meta["cpu_check_ms"]["end"] = cpu_check_ms()
        for outcome in outcomes:  # each scenario's figures beside the machine's speed when it ran
            # Scenario 3 measures during scenario 2's backfill.
            outcome.cpu_check_ms = checks.get(f"before {2 if outcome.number == 3 else outcome.number}")
    finally:
        await bench.stop_all()
        await asyncio.gather(*(f.stop() for f in fakes.values()), return_exceptions=True)
    meta["fake_total_cpu_s"] = {name: f.final_cpu_seconds for name, f in fakes.items()}
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(argv)
    sizes = QUICK if args.quick else FULL
    scenarios = sorted(set(args.scenario or SCENARIOS))
    meta = _meta(args, sizes, scenarios, argv)
    workdir = Path(tempfile.mkdtemp(prefix="kc-bench-"))
    log_dir = workdir / "logs"
    log_dir.mkdir()
    began = time.perf_counter()
    failed = True
    # Processes started from here cache their bytecode in the work directory, as any installed
    # service would (this sandbox may set PYTHONDONTWRITEBYTECODE, which makes every start compile
    # every module again: seconds). Scenario 6 also times one start without any cache.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    # Synchronous (about 1 s with initdb): before the event loop starts.
    server = start_embedded_postgres(workdir / "pg" / "data")
    try:
        pg = Postgres(server.dsn, server.pgdata)
        outcomes = asyncio.run(_run(sizes, scenarios, pg, log_dir, shlex.split(args.service_prefix), meta))
        failed = False
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("benchmark interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
        if args.keep or failed:
            print(f"[bench] work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["total_s"] = time.perf_counter() - began
    header = (
        f"kline-collector benchmark ({meta['mode']}), {meta['date']}, `{meta['command']}`\n"
        f"Python {meta['python']}, {meta['cpus']} CPUs, {meta['platform']}; total {meta['total_s']:.0f} s\n"
        "CPU check, a fixed 2M-step Python loop (higher = slower machine at that moment): "
        + ", ".join(f"{k} {v:.0f} ms" for k, v in meta["cpu_check_ms"].items())
    )
    print(render(outcomes, header))
    if args.json is not None:
        document = {
            "meta": meta,
            "scenarios": {
                str(o.number): {"title": o.title, "figures": o.raw, "rows": [vars(r) for r in o.rows]}
                for o in sorted(outcomes, key=lambda o: o.number)
            },
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return 0

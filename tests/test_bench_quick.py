"""The benchmark command must keep working: `python -m tests.bench --quick` runs every scenario."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A guard against a hung benchmark, not a speed claim: alone it takes ~65 s; beside the other pytest-xdist workers
# on 2 cores it has taken 120 s.
TIMEOUT_S = 300.0

# Figures each scenario must produce (their values are timings, too noisy to assert on).
EXPECTED: dict[str, tuple[str, ...]] = {
    "1": ("wall_s_median", "speedup_vs_earlier_30s", "runs"),
    "2": ("candles_written", "candles_per_s", "ratio_to_ceiling", "ceiling", "service_cpu_s", "fake_cpu_s"),
    "3": ("probe", "event_loop_lag_ms"),
    "4": ("weight_limit_learnt", "share_first_partial_minute", "status_429", "service_cpu_s", "fake_cpu_s"),
    "5": ("single", "double", "peak_growth"),
    "6": ("runs_s", "median_s"),
    "7": ("routes", "requests", "status_5xx", "backfill_candles"),
    "8": ("overview", "tasks", "configs", "logs", "candles"),  # needs a Chromium, as the browser tests do
    "9": ("venues", "limit_errors", "series_failed", "wall_s", "service_cpu_s"),
    "10": ("streams", "share_within_2s", "service_core_share", "steady_rest_requests", "peak_rss", "healed_s"),
}


async def test_quick_benchmark_runs_every_scenario(tmp_path: Path) -> None:
    """`--quick --json` exits 0 and writes every scenario's figures, with the fake's CPU beside the service's."""
    out = tmp_path / "bench.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench", "--quick", "--json", str(out),
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except TimeoutError:
        # SIGTERM lets the benchmark stop its service, fakes and PostgreSQL.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
        raise AssertionError(f"--quick took more than {TIMEOUT_S} s:\n{output.decode(errors='replace')}") from None
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text

    report = json.loads(out.read_text())
    scenarios = report["scenarios"]
    assert sorted(scenarios) == sorted(EXPECTED), text
    for number, keys in EXPECTED.items():
        figures = scenarios[number]["figures"]
        missing = [k for k in keys if figures.get(k) is None]
        assert not missing, f"scenario {number} lacks {missing}: {figures}"
        assert scenarios[number]["rows"], f"scenario {number} has no table rows"
    assert scenarios["2"]["figures"]["candles_written"] == scenarios["2"]["figures"]["rows_stored"]
    for path, probe in scenarios["3"]["figures"]["probe"].items():
        assert probe["requests"] > 0 and probe["p99_ms"] is not None, (path, probe)
    assert scenarios["4"]["figures"]["status_429"] == 0
    for route, readers in scenarios["7"]["figures"]["routes"].items():
        assert readers["requests"] > 0 and readers["p99_ms"] is not None, (route, readers)
    for run in scenarios["1"]["figures"]["runs"]:
        assert run["service_cpu_s"] > 0 and run["fake_cpu_s"] > 0, run
    for page, figures in scenarios["8"]["figures"].items():
        assert figures["bytes"][0] > 0 and figures["loaded_s"][0] > 0, (page, figures)
    assert scenarios["10"]["figures"]["violations"] == 0  # the stream's 5 messages a second per connection
    assert "ratio / verdict" in text, text

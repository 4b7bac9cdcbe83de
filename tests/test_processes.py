"""The real-process helpers the end-to-end tests stand on (tests/processes.py): several processes with their
own ports, environments and logs, and none left running after the test, whatever happened in it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import psutil
import pytest

from tests.processes import service_processes

#: A parent that starts a child, says the child's pid, and both sleep: what honcho or `uv run` look like.
PARENT_WITH_CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


async def test_processes_get_distinct_ports_logs_and_their_own_environment(tmp_path: Path) -> None:
    """Three processes started alike each get a port of their own (as PORT in their environment), their own
    log file, and the environment given to each."""
    async with service_processes(tmp_path) as processes:
        started = [
            await processes.start("healthcheck", env={"LOG_LEVEL": level}, listen=True)
            for level in ("DEBUG", "INFO", "ERROR")
        ]
        for process in started:
            assert await process.wait_exit(30) == 1  # nothing listens on its port: `unhealthy`, exit 1
    assert [p.name for p in started] == ["healthcheck-1", "healthcheck-2", "healthcheck-3"]
    assert len({p.port for p in started}) == 3
    assert len({p.log_path for p in started}) == 3
    for process in started:
        assert f"http://127.0.0.1:{process.port}/health" in process.log_path.read_text(), process.tail()


async def test_processes_and_their_children_are_gone_after_a_failing_test(tmp_path: Path) -> None:
    """A test that fails while its processes run still leaves none of them, nor their children, running."""
    family: list[psutil.Process] = []

    async def failing_test() -> None:
        async with service_processes(tmp_path) as processes:
            parent = await processes.start_program([sys.executable, "-c", PARENT_WITH_CHILD], name="parent")
            async with asyncio.timeout(10):
                while not parent.log_text().strip():
                    await asyncio.sleep(0.05)
            family.extend(parent.family())
            assert {p.pid for p in family} == {parent.proc.pid, int(parent.log_text())}
            raise RuntimeError("the test failed")

    with pytest.raises(RuntimeError, match="the test failed"):
        await failing_test()
    _, alive = psutil.wait_procs(family, timeout=5)
    assert alive == []

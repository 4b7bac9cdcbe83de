"""CPU turns: heavy steps that are ready together let other work run between them."""

from __future__ import annotations

import asyncio

from service.cpu_turns import CpuTurns


async def test_a_request_runs_between_heavy_steps() -> None:
    """Three ready steps no longer run back to back: a request queued after them gets in after the first."""
    turns = CpuTurns()
    order: list[str] = []

    async def heavy(i: int) -> None:
        async with turns.turn():
            order.append(f"step {i}")

    async def request() -> None:
        order.append("request")

    tasks = [asyncio.create_task(heavy(i)) for i in range(3)]
    tasks.append(asyncio.create_task(request()))
    await asyncio.gather(*tasks)
    assert order == ["step 0", "request", "step 1", "step 2"]

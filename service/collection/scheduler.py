"""The scheduler: runs each enabled collection config every interval_minutes, never twice at once.

(Skeleton: the interface the admin API uses. The loop is being written.)
"""

from __future__ import annotations

import asyncio

from service.collection.registry import TaskView

__all__ = ["Scheduler"]


class Scheduler:
    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self._running = False

    @property
    def is_running(self) -> bool:
        """True while the scheduling loop runs in this process."""
        return self._running

    def notify_changed(self) -> None:
        """A config was created, updated, enabled, disabled or deleted: re-read the schedule now."""
        self._changed.set()

    async def trigger(self, config_id: int) -> TaskView:
        """Run a config now as a task; NotFoundError if unknown, ConflictError if its run is active."""
        raise NotImplementedError

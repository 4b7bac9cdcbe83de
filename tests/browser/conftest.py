"""Browser tests: the console in a real headless Chromium (Debian's `chromium` package), driven by Playwright.

They need a Chromium (CHROMIUM_PATH, or `chromium` on the PATH); without one they fail with a
message saying how to get one, never skip (`.ci/run` installs it). Playwright's own browser
download cannot reach its host here, so Debian's Chromium it is.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

#: The flags a sandboxed machine without network needs (no background connections, no GPU).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
HOW_TO_GET_ONE = (
    "no Chromium found for the browser tests: install Debian's package (`sudo apt-get install chromium`) or "
    "set CHROMIUM_PATH to a Chromium or Chrome binary; `bash .ci/run` installs it"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


def find_chromium() -> Path | None:
    explicit = os.environ.get("CHROMIUM_PATH")
    if explicit:
        return Path(explicit)
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return Path(found)
    return None


@asynccontextmanager
async def launch_chromium(path: Path) -> AsyncIterator[Browser]:
    """A headless Chromium at `path` for the block (the benchmark's console scenarios use it too)."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(path), headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium; the test fails, saying how to get one, when there is none."""
    path = find_chromium()
    if path is None:
        pytest.fail(HOW_TO_GET_ONE)
    async with launch_chromium(path) as launched:
        yield launched

"""A first run in a real browser: `serve` on a database without an admin logs how to get one, and the console
shows it in a banner above the login; after `create-user --admin` (what the banner says) the banner goes, the new
admin logs in, and a fresh load shows no banner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, expect

from service.auth.accounts import HOW_TO_GET_AN_ADMIN
from tests.browser.test_console import watch_errors
from tests.fakes.binance import FakeBinance
from tests.processes import run_service_command, service_env, service_processes

EMAIL = "first-admin@example.com"
PASSWORD = "first admin password"


def log_events(text: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of `event` in a process's output."""
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


async def test_the_console_says_how_to_get_an_admin_until_there_is_one(
    browser: Browser, db_dsn: str, fake: FakeBinance, tmp_path: Path
) -> None:
    async with service_processes(tmp_path) as processes:
        env = {**service_env(binance_url=fake.url, database_url=db_dsn), "ADMIN_EMAIL": None, "ADMIN_PASSWORD": None}
        web = await processes.start("serve", env=env, name="web")
        await web.wait_healthy()
        await web.wait_idle(timeout=30)
        logged = log_events(web.log_text(), "no_admin_account")
        assert [(line["level"], line["how"]) for line in logged] == [("warning", HOW_TO_GET_AN_ADMIN)], web.tail()

        page = await browser.new_page()
        errors = watch_errors(page, set())
        await page.goto(str(web.http.base_url))
        banner = page.locator("#setup-banner")
        await expect(banner).to_have_attribute("data-admin-exists", "false")
        await expect(banner).to_be_visible()
        await expect(banner).to_contain_text("No admin account yet.")
        commands = banner.locator("code")
        await expect(commands.first).to_have_text("kline-collector create-user --admin --email you@example.com")
        await expect(commands.filter(has_text="ADMIN_EMAIL")).to_have_count(1)
        await expect(commands.filter(has_text="ADMIN_PASSWORD")).to_have_count(1)
        await expect(page.locator("#login-button")).to_be_visible()
        box, login_box = await banner.bounding_box(), await page.locator("#login-button").bounding_box()
        assert box is not None and login_box is not None and box["y"] + box["height"] <= login_box["y"]
        await page.screenshot(path=str(tmp_path / "first-run.png"), full_page=True)

        # What the banner says, while the service runs.
        code, out = await run_service_command(
            "create-user", "--email", EMAIL, "--admin", "--password-stdin",
            env={"DATABASE_URL": db_dsn, "EMBEDDED_PG_DIR": None, "LOG_FORMAT": "json"}, stdin=f"{PASSWORD}\n".encode(),
        )
        assert code == 0, out
        await page.click("#login-button")  # opening the login asks again
        await expect(banner).to_have_attribute("data-admin-exists", "true")
        await expect(banner).to_be_hidden()
        await page.fill("#login-form input[name=email]", EMAIL)
        await page.fill("#login-form input[name=password]", PASSWORD)
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#who")).to_have_text(f"{EMAIL} (admin)")

        await page.reload()
        await expect(banner).to_have_attribute("data-admin-exists", "true")  # asked again, on a fresh page
        await expect(page.locator("#who")).to_have_text(f"{EMAIL} (admin)")
        await expect(banner).to_be_hidden()
        await expect(banner).to_be_empty()
        assert errors == [], errors

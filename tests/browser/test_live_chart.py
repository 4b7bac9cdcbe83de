"""The console's candle chart of a live series moves with its stream, in a real headless Chromium."""

from __future__ import annotations

import time
from pathlib import Path

from playwright.async_api import Browser, expect

from tests.browser.test_console import watch_errors
from tests.fakes.binance import FakeBinance
from tests.fakes.binance_stream import FakeBinanceStream
from tests.processes import ADMIN_EMAIL, ADMIN_PASSWORD, service_env, service_processes

STREAM = "btcusdt@kline_1s"  # 1s: a candle closes (final by our clock too) a second after it opens


async def test_the_candle_chart_of_a_live_series_moves_with_its_stream(
    browser: Browser, db_dsn: str, tmp_path: Path
) -> None:
    """A live config's chart on the candles page takes the stream's open candle (through the event
    stream, about a second later) and then its close, without reloading; no console error."""
    now = int(time.time() * 1000)
    async with FakeBinance() as fake, FakeBinanceStream() as stream, service_processes(tmp_path) as processes:
        fake.generate_klines("BTCUSDT", "1s", now - now % 1000 - 30_000, 30)
        env = service_env(binance_url=fake.url, database_url=db_dsn, binance_ws_url=stream.url)
        web = await processes.start("serve", env=env, name="web")
        await web.wait_healthy()
        await web.wait_idle(timeout=30)
        await web.login()
        response = await web.http.post(
            "/api/v1/admin/data-collection/configs", json={"symbol": "BTCUSDT", "timeframes": ["1s"], "live": True}
        )
        assert response.status_code == 201, response.text
        await stream.wait_subscribed([STREAM], timeout=30)

        page = await browser.new_page()
        errors = watch_errors(page, set())
        await page.goto(str(web.http.base_url))
        await page.click("#login-button")
        await page.fill("#login-form input[name=email]", ADMIN_EMAIL)
        await page.fill("#login-form input[name=password]", ADMIN_PASSWORD)
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#who")).to_contain_text(ADMIN_EMAIL)
        await expect(page.locator("#live")).to_have_text("live")

        await page.click("nav a[data-page=candles]")
        candles = page.locator("#candles-form")
        await candles.locator("input[name=symbol]").fill("BTCUSDT")
        await candles.locator("select[name=timeframe]").select_option("1s")
        await candles.locator("button[type=submit]").click()
        chart = page.locator("#candle-chart")
        await expect(chart).to_have_attribute("data-candles", "30")

        second = int(time.time()) * 1000
        row = [second, "100.0", "101.5", "99.5", "100.75", "12.25", second + 999, "1234.5", 42, "6", "600", "0"]
        await stream.push(STREAM, row, closed=False)
        await expect(chart).to_have_attribute("data-live-close", "100.75", timeout=10_000)
        await expect(chart).to_have_attribute("data-live-closed", "false")
        while time.time() * 1000 < second + 1_100:  # the second over, as the venue's close says
            await page.wait_for_timeout(50)
        row[4] = "100.5"
        await stream.push(STREAM, row, closed=True)
        await expect(chart).to_have_attribute("data-live-close", "100.5", timeout=10_000)
        await expect(chart).to_have_attribute("data-live-closed", "true")
        await page.close()
    assert errors == []

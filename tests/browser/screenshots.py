"""The README's console screenshots (docs/screenshots/console-*.png), made again from a real run:

    uv run python -m tests.browser.screenshots [--out docs/screenshots]

An embedded PostgreSQL and the fake Binance and Bybit in this process, a `serve` on them with both
venues enabled and four configs (three series on binance, one on bybit) collected at once, a hand-written
hole in the ledger of binance BTCUSDT 1m; then each page in headless Chromium (the browser tests' own,
CHROMIUM_PATH or `chromium` on the PATH) as the admin, at 1280 x 720, the whole page. A collection is
started through the tasks page's form on bybit, with the fake slowed, so that the active table has a row.
Fails on any console error or failed request, as the browser tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

from playwright.async_api import Page, expect

from service.db.embedded import start_embedded_postgres
from tests.browser.conftest import HOW_TO_GET_ONE, find_chromium, launch_chromium
from tests.browser.test_console import MINUTE_MS, watch_errors, write_ledger
from tests.fakes.binance import FakeBinance
from tests.fakes.bybit import FakeBybit
from tests.processes import ROOT, ServiceProcess, service_env, service_processes

HOUR_MS = 60 * MINUTE_MS
VIEWPORT = {"width": 1280, "height": 720}  # what the first screenshots were taken at (Playwright's default)
CONFIGS = [  # (exchange, symbol, timeframes)
    ("binance", "BTCUSDT", ["1m", "1h"]),
    ("binance", "ETHUSDT", ["1m"]),
    ("bybit", "BTCUSDT", ["1m"]),
]


async def collect(web: ServiceProcess) -> None:
    """The configs, created enabled (each runs at once), and their runs to the end."""
    await web.login()
    for exchange, symbol, timeframes in CONFIGS:
        response = await web.http.post("/api/v1/admin/data-collection/configs", json={
            "exchange": exchange, "symbol": symbol, "timeframes": timeframes, "interval_minutes": 60, "enabled": True,
            "description": f"{symbol} on {exchange}",
        })
        assert response.status_code == 201, f"{response.status_code} {response.text}{web.tail()}"
    await asyncio.sleep(1)
    await web.wait_idle(timeout=120)


async def shoot(page: Page, out: Path, name: str) -> None:
    await page.wait_for_timeout(400)  # charts settle
    await page.screenshot(path=str(out / f"console-{name}.png"), full_page=True)
    print(f"wrote {out / f'console-{name}.png'}")


async def pages(page: Page, out: Path, bybit: FakeBybit) -> None:
    """Each page, as the README shows it."""
    await expect(page.locator("#coverage-table tbody tr")).to_have_count(4)
    await expect(page.locator("#latest-prices tbody tr")).to_have_count(3)
    await expect(page.locator("#success-chart canvas").first).to_be_visible()
    await shoot(page, out, "overview")

    await page.click("nav a[data-page=configs]")
    await expect(page.locator("#configs tbody tr")).to_have_count(3)
    await shoot(page, out, "configs")

    # A slow venue, so that the collection started here is still running in the picture.
    await page.click("nav a[data-page=tasks]")
    form = page.locator("#start-form")
    await form.locator("select[name=exchange]").select_option("bybit")
    await form.locator("input[name=symbols]").fill("ETHUSDT")
    await form.locator(".chip", has_text=re.compile(r"^1h$")).click()
    bybit.latency_ms = 1500
    await form.locator("button[type=submit]").click()
    await expect(page.locator("#active-tasks progress")).to_have_count(1, timeout=10_000)
    await expect(form.locator("input[name=symbols]")).to_have_value("")
    await shoot(page, out, "tasks")
    await expect(page.locator("#active-tasks progress")).to_have_count(0, timeout=60_000)
    bybit.latency_ms = 0

    await page.click("nav a[data-page=logs]")
    rows = page.locator("#logs tbody tr")
    await expect(rows.first).to_contain_text("manual_data_collection", timeout=10_000)
    await rows.first.click()
    await expect(page.locator("#log-detail")).to_be_visible()
    await shoot(page, out, "logs")

    await page.click("nav a[data-page=candles]")
    candles = page.locator("#candles-form")
    await candles.locator("select[name=exchange]").select_option("binance")
    await candles.locator("input[name=symbol]").fill("BTC/USDT")
    await candles.locator("select[name=timeframe]").select_option("1m")
    await candles.locator("button[type=submit]").click()
    await expect(page.locator("#candle-chart")).to_have_attribute("data-holes", "1")
    await shoot(page, out, "candles")


async def main(out: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        sys.exit(HOW_TO_GET_ONE)
    with tempfile.TemporaryDirectory(prefix="kc-screenshots-") as scratch:
        work = Path(scratch)
        postgres = start_embedded_postgres(work / "pg")
        try:
            async with FakeBinance() as binance, FakeBybit() as bybit, service_processes(work) as processes:
                now = int(time.time() * 1000)
                for symbol, base, price in (("BTCUSDT", "BTC", 64_000.0), ("ETHUSDT", "ETH", 3_100.0)):
                    binance.add_symbol(symbol, base, "USDT")
                    binance.generate_klines(symbol, "1m", now - 6_060 * MINUTE_MS, 6_120, start_price=price)
                    binance.generate_klines(symbol, "1h", now - 6_010 * HOUR_MS, 6_020, start_price=price)
                    bybit.add_symbol(symbol, base, "USDT")
                    bybit.generate_klines(symbol, "1m", now - 6_060 * MINUTE_MS, 6_120, start_price=price * 1.001)
                    bybit.generate_klines(symbol, "1h", now - 6_010 * HOUR_MS, 6_020, start_price=price * 1.001)
                env = {
                    **service_env(binance_url=binance.url, database_url=postgres.dsn, default_history_candles=6_000),
                    "EXCHANGES": "binance,bybit", "BYBIT_API_URL": bybit.url,
                }
                web = await processes.start("serve", env=env, name="web")
                await web.wait_healthy(timeout=60)
                await web.wait_idle(timeout=30)
                await collect(web)
                await write_ledger(postgres.dsn, int(time.time() * 1000), "binance")
                token = web.http.headers["Authorization"].removeprefix("Bearer ")

                async with launch_chromium(chromium) as browser:
                    context = await browser.new_context(viewport=VIEWPORT, locale="en-US", timezone_id="UTC")
                    await context.add_init_script(f"sessionStorage.setItem('kline-collector.token', '{token}')")
                    page = await context.new_page()
                    errors = watch_errors(page, set())
                    await page.goto(f"{web.http.base_url}#/overview")
                    await expect(page.locator("#live")).to_have_text("live")
                    await pages(page, out, bybit)
                    await context.close()
                assert errors == [], errors
        finally:
            postgres.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="where the PNGs go")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(out))

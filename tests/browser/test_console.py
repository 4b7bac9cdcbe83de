"""The console in a real browser: log in, create a config through the form (a validation error first),
run it, watch the task's progress bar reach 100 % from the live stream, filter the execution logs and
download them as CSV, see the overview's cards and charts, open a candle chart, start a collection by
hand; the forms' venue select (GET /api/v1/exchanges) and the venue on every row that names a series;
no console error anywhere."""

from __future__ import annotations

import re
import time
from pathlib import Path

import asyncpg
from playwright.async_api import Browser, ConsoleMessage, Error, Locator, Page, Response, expect

from tests.fakes.binance import FakeBinance
from tests.processes import ADMIN_EMAIL, ADMIN_PASSWORD, service_env, service_processes

MINUTE_MS = 60_000


async def write_ledger(dsn: str, now_ms: int, exchange: str = "binance") -> None:
    """The coverage ledger of BTCUSDT 1m on `exchange`, written by hand: verified from 6,000 minutes back,
    a 5-minute exchange gap 300 minutes back, a 10-minute hole 200 minutes back, verified past now."""
    minute = now_ms // MINUTE_MS * MINUTE_MS
    ago = [minute - n * MINUTE_MS for n in (6_000, 300, 295, 200, 190)]
    conn = await asyncpg.connect(dsn)
    try:
        series_id = await conn.fetchval(
            "SELECT id FROM series WHERE exchange = $1 AND symbol = 'BTCUSDT' AND timeframe = '1m'", exchange
        )
        await conn.execute("DELETE FROM coverage WHERE series_id = $1", series_id)  # whatever the run recorded
        await conn.executemany(
            "INSERT INTO coverage (series_id, start_time, end_time, kind, checks) VALUES ($1, $2, $3, $4, $5)",
            [
                (series_id, ago[0], ago[1], "verified", 1),
                (series_id, ago[1], ago[2], "exchange_gap", 2),
                (series_id, ago[2], ago[3], "verified", 1),
                (series_id, ago[4], minute + 30 * MINUTE_MS, "verified", 1),
            ],
        )
    finally:
        await conn.close()


def watch_errors(page: Page, expected: set[tuple[str, str, int]]) -> list[str]:
    """Every console error, uncaught exception and failed request of the page, as text.

    Chromium logs each 4xx answer as a console error ("Failed to load resource"); those are judged by
    the answers themselves: only the (method, path, status) in `expected` may fail.
    """
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(f"console: {message.text}")

    def on_page_error(error: Error) -> None:
        errors.append(f"page error: {error}")

    def on_response(response: Response) -> None:
        path = "/" + response.url.split("/", 3)[-1]
        if response.status >= 400 and (response.request.method, path, response.status) not in expected:
            errors.append(f"{response.request.method} {path}: {response.status}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("response", on_response)
    return errors


async def expect_venue_select(select: Locator, timeframes: Locator, served: list[str]) -> None:
    """The venue select holds the enabled venues (the test service enables binance alone) with binance
    chosen, and the timeframe choices beside it are binance's own set."""
    await expect(select.locator("option")).to_have_text(["binance"])
    await expect(select).to_have_value("binance")
    await expect(timeframes).to_have_text(served)


async def test_an_admin_creates_and_runs_a_config_and_watches_its_progress_live(
    browser: Browser, db_dsn: str, tmp_path: Path
) -> None:
    """Log in, create a config (a bad timeframe is shown next to its field), run it now, and follow the
    task's progress bar to 100 % on the tasks page, fed by /api/v1/events; each form offers the enabled
    venues and their timeframes, each row names its venue; no console error."""
    async with FakeBinance(latency_ms=250) as fake, service_processes(tmp_path) as processes:
        now = int(time.time() * 1000)
        fake.add_symbol("BTCUSDT", "BTC", "USDT")
        fake.generate_klines("BTCUSDT", "1m", now - 6_060 * MINUTE_MS, 6_120)
        env = service_env(binance_url=fake.url, database_url=db_dsn, default_history_candles=6_000, pages_ahead=1)
        web = await processes.start("serve", env=env, name="web")
        await web.wait_healthy()
        await web.wait_idle(timeout=30)
        venues = (await web.http.get("/api/v1/exchanges")).json()
        assert [v["id"] for v in venues] == ["binance"], venues
        served = venues[0]["timeframes"]
        assert "1m" in served and "2m" not in served, served

        page = await browser.new_page()
        # The failures the test provokes.
        errors = watch_errors(page, {
            ("POST", "/api/v1/admin/data-collection/configs", 422),  # the bad timeframe
            ("PUT", "/api/v1/admin/data-collection/configs/1", 422),  # the interval of 0
        })
        await page.goto(str(web.http.base_url))
        await expect(page.locator("#live")).to_have_text("live")

        await page.click("#login-button")
        await page.fill("#login-form input[name=email]", ADMIN_EMAIL)
        await page.fill("#login-form input[name=password]", ADMIN_PASSWORD)
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#who")).to_contain_text(ADMIN_EMAIL)

        await page.click("nav a[data-page=configs]")
        form = page.locator("#config-form")
        await expect_venue_select(form.locator("select[name=exchange]"), form.locator(".chip"), served)
        # A timeframe choice adds itself to the list, and again takes itself out.
        chip = form.locator(".chip", has_text=re.compile(r"^1m$"))
        await chip.click()
        await expect(form.locator("input[name=timeframes]")).to_have_value("1m")
        await expect(chip).to_have_attribute("aria-pressed", "true")
        await chip.click()
        await expect(form.locator("input[name=timeframes]")).to_have_value("")
        await expect(chip).to_have_attribute("aria-pressed", "false")
        await form.locator("input[name=symbol]").fill("BTC/USDT")
        await form.locator("input[name=timeframes]").fill("1m, 2m")
        await form.locator("input[name=enabled]").uncheck()
        await form.locator("button[type=submit]").click()
        await expect(form.locator("[data-error-for=timeframes]")).to_contain_text("2m")
        await expect(form.locator("input[name=timeframes]")).to_have_attribute("aria-invalid", "true")

        await form.locator("input[name=timeframes]").fill("1m")
        await form.locator("button[type=submit]").click()
        row = page.locator("#configs tr", has_text="BTCUSDT")
        await expect(row).to_have_count(1)
        await expect(row.locator("td").nth(1)).to_have_text("binance")
        await expect(form.locator("[data-error-for=timeframes]")).to_have_text("")
        await page.screenshot(path=str(tmp_path / "configs.png"), full_page=True)

        await row.locator("button.run-now").click()
        await page.click("nav a[data-page=tasks]")
        start_form = page.locator("#start-form")
        await expect_venue_select(start_form.locator("select[name=exchange]"), start_form.locator(".chip"), served)
        bar = page.locator("#active-tasks progress")
        await expect(bar).to_have_count(1, timeout=10_000)
        await expect(page.locator("#active-tasks tbody tr").first.locator("td").nth(2)).to_have_text("binance")
        await page.screenshot(path=str(tmp_path / "tasks.png"), full_page=True)
        # The stream moves the bar; the page never polls.
        await expect(bar).to_have_attribute("value", "100", timeout=30_000)
        await expect(page.locator("#recent-tasks tr", has_text="completed")).to_have_count(1, timeout=10_000)
        ended = page.locator("#recent-tasks tbody tr")

        def of_type(name: str) -> Locator:
            """The ended tasks of one type."""
            return ended.filter(has=page.locator("td:nth-child(2)", has_text=re.compile(f"^{name}$")))

        await expect(of_type("data_collection")).to_have_count(1, timeout=10_000)  # the run, moved here once ended
        await expect(of_type("data_collection").locator("td").nth(2)).to_have_text("binance")
        stored = await web.open_times("BTCUSDT")
        assert len(stored) >= 6_000
        await write_ledger(db_dsn, int(time.time() * 1000))

        # The run's execution log: filtered, opened, exported as CSV.
        await page.click("nav a[data-page=logs]")
        filters = page.locator("#log-filters")
        await filters.locator("input[name=symbol]").fill("BTCUSDT")
        await filters.locator("select[name=status]").select_option("success")
        await filters.locator("button[type=submit]").click()
        rows = page.locator("#logs tbody tr")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("collect_data_")
        await expect(rows.first.locator("td").nth(3)).to_have_text("binance")
        # 6,000 candles, one more when a minute turned during the run (its new open candle).
        await expect(rows.first.locator("td").nth(6)).to_have_text(re.compile(r"^600[01]$"))
        await rows.first.click()
        await expect(page.locator("#log-detail")).to_contain_text('"records_per_timeframe"')
        await page.screenshot(path=str(tmp_path / "logs.png"), full_page=True)
        async with page.expect_download() as download_info:
            await page.click("#csv-export")
        download = await download_info.value
        csv_text = Path(await download.path()).read_text()  # noqa: ASYNC240 - a small file, in a test
        assert csv_text.splitlines()[0].startswith("id,")
        assert len(csv_text.splitlines()) == 2 and "collect_data_" in csv_text, csv_text
        await filters.locator("select[name=status]").select_option("failed")
        await filters.locator("button[type=submit]").click()
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("No execution log matches")

        # The overview: health strip, cards and charts over the run just made.
        await page.click("nav a[data-page=overview]")
        await expect(page.locator("[data-health=database]")).to_have_text("database: ok")
        await expect(page.locator("[data-health=scheduler]")).to_contain_text("1 process running tasks")
        await expect(page.locator("[data-health=exchange]")).to_have_text("binance: ok, limit 6000/min")
        await expect(page.locator("#card-runs .card-value")).not_to_have_text("0")
        # As in the log above: 6,001 when a minute turned during the run.
        await expect(page.locator("#card-candles .card-value")).to_have_text(re.compile(r"^6,00[01]$"))
        # One hour's point, two when an hour turned between the runs (CI met it at 01:00).
        await expect(page.locator("#success-chart")).to_have_attribute("data-points", re.compile(r"^[12]$"))
        await expect(page.locator("#success-chart canvas").first).to_be_visible()
        await expect(page.locator("#recent-executions tbody tr").first).to_contain_text("collect_data_")
        await expect(page.locator("#recent-executions tbody tr").first.locator("td").nth(1)).to_have_text("binance")
        price = page.locator("#latest-prices tbody tr")
        await expect(price).to_have_count(1)
        await expect(price.locator("td").nth(0)).to_have_text("binance")
        await expect(price.locator("td").nth(1)).to_have_text("BTCUSDT")
        await expect(price.locator("td").nth(3)).to_have_text("1m")
        # The coverage table flags the series with a hole.
        coverage_row = page.locator("#coverage-table tr[data-series='BTCUSDT 1m']")
        await expect(coverage_row).to_have_class("flag-holes")
        await expect(coverage_row).to_contain_text("1 hole, 10 candles")
        await expect(coverage_row.locator("td").first).to_have_text("binance")
        await page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

        # A candlestick chart of the stored series.
        await page.click("nav a[data-page=candles]")
        candles = page.locator("#candles-form")
        await expect_venue_select(
            candles.locator("select[name=exchange]"), candles.locator("select[name=timeframe] option"), served
        )
        await candles.locator("input[name=symbol]").fill("BTC/USDT")
        await candles.locator("select[name=timeframe]").select_option("1m")
        await candles.locator("button[type=submit]").click()
        await expect(page.locator("#candle-chart")).to_have_attribute("data-candles", "500")
        await expect(page.locator("#candles-title")).to_have_text("BTCUSDT 1m on binance")
        await expect(page.locator("#candles-notice")).to_contain_text("500 candles")
        await expect(page.locator("#candle-chart canvas").first).to_be_visible()
        # The hole is listed under the chart and drawn on it (10 red bars, 5 grey for the exchange gap).
        await expect(page.locator("#coverage-holes li")).to_have_count(1)
        await expect(page.locator("#coverage-holes li")).to_contain_text("10 candles missing")
        await expect(page.locator("#candle-chart")).to_have_attribute("data-holes", "1")
        await expect(page.locator("#candle-chart")).to_have_attribute("data-hole-bars", "15")
        await expect(page.locator("#coverage-notice")).to_contain_text("1 hole (10 candles missing")
        await page.screenshot(path=str(tmp_path / "candles.png"), full_page=True)

        # Edit the config through the form, then enable it with the bulk action.
        await page.click("nav a[data-page=configs]")
        row = page.locator("#configs tr", has_text="BTCUSDT")
        await row.locator("button.edit").click()
        await expect(form.locator("input[name=symbol]")).to_have_value("BTCUSDT")
        await expect(form.locator("select[name=exchange]")).to_have_value("binance")
        await expect(page.locator("#configs-notice + section h2")).to_have_text("Edit BTCUSDT on binance (id 1)")
        await expect(form.locator(".chip[aria-pressed=true]")).to_have_text(["1m"])
        await form.locator("input[name=interval_minutes]").fill("0")
        await form.locator("button[type=submit]").click()
        await expect(form.locator("[data-error-for=interval_minutes]")).not_to_have_text("")
        await form.locator("input[name=interval_minutes]").fill("30")
        await form.locator("button[type=submit]").click()
        await expect(row).to_contain_text("30 min")
        await row.locator("input.pick").check()
        await page.click("button.bulk-enable")
        await expect(row.locator("input[aria-label='enabled binance BTCUSDT']")).to_be_checked()

        # A collection started by hand names the venue chosen, and its row shows it (once the run the
        # enabling scheduled at once has ended: the series is busy until then).
        await page.click("nav a[data-page=tasks]")
        await expect(of_type("scheduled_data_collection")).to_have_count(1, timeout=15_000)
        await expect(of_type("data_collection")).to_have_count(1)  # the "Run now"
        await start_form.locator("input[name=symbols]").fill("BTCUSDT")
        await start_form.locator(".chip", has_text=re.compile(r"^1m$")).click()
        async with page.expect_request(lambda r: r.url.endswith("/api/v1/data-collector/start")) as started:
            await start_form.locator("button[type=submit]").click()
        sent = (await started.value).post_data_json
        assert sent == {"exchange": "binance", "symbols": ["BTCUSDT"], "timeframes": ["1m"]}, sent
        await expect(of_type("data_collection")).to_have_count(2, timeout=15_000)
        assert set(await ended.locator("td:nth-child(3)").all_inner_texts()) == {"binance"}
        assert errors == [], errors

// Overview: a health strip (a pill per venue), stat cards, the success rate per hour (24 h) and the mean
// duration per day (7 days), the latest prices, coverage per series, the last 10 executions. Refreshed
// when the stream says something changed.

import { api, ApiError } from "./api.js";
import { h, when, statusCell } from "./dom.js";
import { onEvent } from "./events.js";
import { newChart, seconds } from "./charts.js";
import { lagText } from "./coverage.js";

const ADMIN = "/api/v1/admin/data-collection";

function card(label, value, id) {
  return h("div", { class: "card", id }, h("div", { class: "card-value" }, value), h("div", { class: "card-label" }, label));
}

function healthItem(name, ok, text, dataset = { health: name }) {
  return h("span", { class: `health ${ok ? "ok" : "bad"}`, dataset }, `${name}: ${text}`);
}

// A venue against its limit: paused (it answered a rate limit or a ban) until when, or its limit per window.
function venueHealth(venue) {
  const { limit } = venue;
  const paused = limit.paused_until && new Date(limit.paused_until) > new Date();
  const per = limit.window_seconds === 60 ? "min" : `${limit.window_seconds} s`;
  return healthItem(venue.id, !paused, paused
    ? `${limit.paused_reason === "banned" ? "IP-ban pause" : "rate-limited"} until ${when(limit.paused_until)}`
    : limit.limit ? `ok, limit ${limit.limit}/${per}` : "not heard from yet", { health: "exchange", exchange: venue.id });
}

// "145.46000000" as 145.46: the stored decimal without its trailing zeros.
const price = (text) => (text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text);
const PRICES_SHOWN = 20;

export function overviewPage(main, session) {
  const admin = Boolean(session.user && session.user.is_admin);
  const strip = h("div", { class: "strip", id: "health-strip" });
  const cards = h("div", { class: "cards", id: "stat-cards" });
  const notice = h("p", { class: "notice" });
  const rateHolder = h("div", { class: "chart", id: "success-chart" });
  const durationHolder = h("div", { class: "chart", id: "duration-chart" });
  const recentBody = h("tbody");
  const coverageBody = h("tbody");
  const pricesBody = h("tbody");
  const charts = [];

  async function health() {
    const response = await fetch("/health");
    const body = await response.json().catch(() => ({}));
    return { ok: response.ok, text: body.database || `HTTP ${response.status}` };
  }

  async function load() {
    try {
      const [db, status, venues, prices] = await Promise.all([
        health(), api("/api/v1/data-collector/status"), api("/api/v1/exchanges"), api("/api/v1/data-collector/latest-prices"),
      ]);
      const limiter = status.rate_limiter;
      const schedulers = status.workers.length;
      strip.replaceChildren(
        healthItem("database", db.ok, db.ok ? "ok" : db.text),
        ...venues.map(venueHealth),
        healthItem("scheduler", schedulers > 0 || status.scheduler_status.is_running,
          schedulers ? `${schedulers} process${schedulers > 1 ? "es" : ""} running tasks` : "no process runs tasks"),
      );
      const weight = limiter.weight_budget ? `${limiter.weight_used_this_minute} / ${limiter.weight_budget}` : String(limiter.weight_used_this_minute);
      const base = [card("active tasks", String(status.active_tasks), "card-active"),
        card(`weight used this minute (${status.exchange})`, weight, "card-weight")];
      pricesBody.replaceChildren(...priceRows(prices.prices));
      if (!admin) {
        cards.replaceChildren(...base);
        notice.textContent = "Log in as an admin for run statistics, charts and the last executions.";
        return;
      }
      const [stats, overview, hourly, daily] = await Promise.all([
        api(`${ADMIN}/stats?hours=24`), api(`${ADMIN}/status`),
        api(`${ADMIN}/stats/timeline?bucket=hour&hours=24`), api(`${ADMIN}/stats/timeline?bucket=day&hours=168`),
      ]);
      cards.replaceChildren(
        card("runs (24 h)", String(stats.total_executions), "card-runs"),
        card("success (24 h)", `${stats.success_rate}%`, "card-success"),
        card("mean duration (24 h)", stats.average_duration_seconds === null ? "–" : `${stats.average_duration_seconds} s`, "card-duration"),
        card("candles collected (24 h)", stats.total_records_collected.toLocaleString(), "card-candles"),
        ...base,
      );
      await drawCharts(hourly, daily);
      recentBody.replaceChildren(...overview.recent_executions.map((log) => h("tr", {},
        h("td", {}, log.job_name), h("td", {}, log.exchange || ""), h("td", {}, log.symbol || ""), h("td", {}, statusCell(log.status)),
        h("td", {}, log.records_collected), h("td", {}, when(log.started_at)))));
      coverageBody.replaceChildren(...coverageRows(overview.coverage));
      notice.textContent = "";
    } catch (error) {
      notice.textContent = error instanceof ApiError && error.status === 401
        ? "Log in to see the overview (reads need a token here)." : `Could not load the overview: ${error.message}`;
    }
  }

  // The newest stored close per collected symbol (its finest timeframe with data), the first PRICES_SHOWN.
  function priceRows(entries) {
    if (!entries.length) return [h("tr", {}, h("td", { colspan: 5 }, "Nothing collected yet"))];
    const rows = entries.slice(0, PRICES_SHOWN).map((entry) => h("tr", { dataset: { exchange: entry.exchange, symbol: entry.symbol } },
      h("td", {}, entry.exchange), h("td", {}, entry.symbol), h("td", { class: "number" }, price(entry.price)),
      h("td", {}, entry.timeframe), h("td", {}, `${when(entry.open_time)}${entry.is_closed ? "" : " (open)"}`)));
    if (entries.length > PRICES_SHOWN) rows.push(h("tr", {}, h("td", { colspan: 5, class: "notice" }, `and ${entries.length - PRICES_SHOWN} more`)));
    return rows;
  }

  // One row per configured series; one with holes is flagged (class and text).
  function coverageRows(entries) {
    if (!entries.length) return [h("tr", {}, h("td", { colspan: 6 }, "No configured series"))];
    return entries.map((entry) => h("tr", {
      class: entry.holes ? "flag-holes" : "", dataset: { series: `${entry.symbol} ${entry.timeframe}`, exchange: entry.exchange },
    },
      h("td", {}, entry.exchange), h("td", {}, entry.symbol), h("td", {}, entry.timeframe),
      h("td", {}, entry.collected ? `${entry.completeness_percent} %` : "nothing recorded yet"),
      h("td", {}, entry.holes ? h("span", { class: "badge holes" }, `${entry.holes} hole${entry.holes > 1 ? "s" : ""}, ${entry.candles_missing} candles`) : "0"),
      h("td", {}, lagText(entry.freshness_lag_seconds))));
  }

  async function drawCharts(hourly, daily) {
    if (!charts.length) {
      const rate = await newChart(rateHolder, { height: 200 });
      const duration = await newChart(durationHolder, { height: 200, timeScale: { timeVisible: false } });
      charts.push([rate, rate.addHistogramSeries({ color: "#067647", priceFormat: { type: "percent" } })]);
      charts.push([duration, duration.addLineSeries({ color: "#2563eb", lineWidth: 2 })]);
    }
    charts[0][1].setData(hourly.filter((b) => b.success_rate !== null).map((b) => ({ time: seconds(b.start), value: b.success_rate })));
    charts[1][1].setData(daily.filter((b) => b.average_duration_seconds !== null).map((b) => ({ time: seconds(b.start), value: b.average_duration_seconds })));
    for (const [chart] of charts) chart.timeScale().fitContent();
    rateHolder.dataset.points = String(hourly.filter((b) => b.success_rate !== null).length);
  }

  let reload = null;
  const stop = onEvent((type, event) => {
    if (type === "resync" || type === "execution_log" || (type === "task" && event.status !== "running")) {
      clearTimeout(reload);
      reload = setTimeout(load, 1000);
    }
  });

  main.append(
    h("h1", {}, "Overview"),
    strip,
    notice,
    cards,
    admin ? h("div", { class: "two" },
      h("section", {}, h("h2", {}, "Success rate per hour, last 24 h (%)"), rateHolder),
      h("section", {}, h("h2", {}, "Mean run duration per day, last 7 days (s)"), durationHolder)) : "",
    h("section", {}, h("h2", {}, "Latest prices"), h("table", { id: "latest-prices" },
      h("thead", {}, h("tr", {}, ["Exchange", "Symbol", "Price", "Timeframe", "Candle"].map((t) => h("th", {}, t)))), pricesBody)),
    admin ? h("section", {}, h("h2", {}, "Coverage"), h("table", { id: "coverage-table" },
      h("thead", {}, h("tr", {}, ["Exchange", "Symbol", "Timeframe", "Completeness", "Holes", "Freshness lag"].map((t) => h("th", {}, t)))), coverageBody)) : "",
    admin ? h("section", {}, h("h2", {}, "Last 10 executions"), h("table", { id: "recent-executions" },
      h("thead", {}, h("tr", {}, ["Job", "Exchange", "Symbol", "Status", "Candles", "Started"].map((t) => h("th", {}, t)))), recentBody)) : "",
    admin ? h("p", { class: "notice" }, "Charts by TradingView Lightweight Charts™, ",
      h("a", { href: "https://www.tradingview.com/", rel: "noopener" }, "tradingview.com")) : "",
  );
  load();
  return () => { stop(); clearTimeout(reload); for (const [chart] of charts) chart.remove(); };
}

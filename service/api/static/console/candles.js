// Candles: a candlestick chart of any stored series, read from /api/v1/klines, with the coverage
// ledger's holes (red) and exchange gaps (grey) drawn over it and listed under it (/api/v1/coverage).
// A live series' chart moves with its `candle` events (/api/v1/events): the open candle at most once a
// second, and each close.

import { api, ApiError } from "./api.js";
import { h, when } from "./dom.js";
import { newChart, seconds } from "./charts.js";
import { drawCoverage } from "./coverage.js";
import { onEvent } from "./events.js";
import { venueSelect } from "./venues.js";

export function candlesPage(main) {
  const notice = h("p", { class: "notice", id: "candles-notice" });
  const holder = h("div", { id: "candle-chart", class: "chart tall" });
  const coverageNotice = h("p", { class: "notice", id: "coverage-notice" });
  const holeList = h("ul", { class: "holes", id: "coverage-holes" });
  const title = h("h2", { id: "candles-title", class: "series", hidden: true });
  // The timeframes follow the venue's own set; the one chosen stays when the new venue serves it.
  const timeframe = h("select", { name: "timeframe" }, h("option", { value: "1m" }, "1m"));
  const follow = (venue) => {
    const keep = venue.timeframes.includes(timeframe.value) ? timeframe.value : "1m";
    timeframe.replaceChildren(...venue.timeframes.map((tf) => h("option", { value: tf }, tf)));
    timeframe.value = venue.timeframes.includes(keep) ? keep : venue.timeframes[0];
  };
  const form = h("form", { class: "grid", id: "candles-form" },
    h("label", {}, "Exchange", venueSelect(follow)),
    h("label", {}, "Symbol", h("input", { name: "symbol", value: "BTCUSDT", required: true })),
    h("label", {}, "Timeframe", timeframe),
    h("label", {}, "Candles (newest)", h("input", { name: "limit", type: "number", min: 1, max: 5000, value: 500 })),
    h("div", {}, h("button", { type: "submit", class: "primary" }, "Show")));
  let chart = null;
  let shown = null;  // { exchange, symbol, timeframe, series, last } of the chart on screen

  async function show() {
    const data = new FormData(form);
    const params = new URLSearchParams({
      exchange: String(data.get("exchange")), symbol: String(data.get("symbol")).trim(),
      timeframe: String(data.get("timeframe")), limit: String(data.get("limit")),
    });
    try {
      const body = await api(`/api/v1/klines?${params}`);
      if (chart) chart.remove();
      chart = await newChart(holder, { height: 420 });
      const series = chart.addCandlestickSeries();
      series.setData(body.klines.map((k) => ({
        time: seconds(k.open_time), open: Number(k.open), high: Number(k.high), low: Number(k.low), close: Number(k.close),
      })));
      const last = body.klines.length ? seconds(body.klines.at(-1).open_time) : 0;
      shown = { exchange: body.exchange, symbol: body.symbol, timeframe: body.timeframe, series, last };
      holder.dataset.candles = String(body.count);
      title.textContent = `${body.symbol} ${body.timeframe} on ${body.exchange}`;
      title.hidden = false;
      await showCoverage(body);
      chart.timeScale().fitContent();
      notice.textContent = body.count
        ? `${body.count} candles${body.klines.length && !body.klines.at(-1).is_closed ? " (the last one still open)" : ""}`
        : "No candles stored";
    } catch (error) {
      notice.textContent = error instanceof ApiError ? error.detail : error.message;
    }
  }

  // The ledger over the shown candles: from the first one up to the current candle.
  async function showCoverage(candles) {
    coverageNotice.textContent = "";
    holeList.replaceChildren();
    delete holder.dataset.holes;
    delete holder.dataset.holeBars;
    if (!candles.count) return;
    const params = new URLSearchParams({
      exchange: candles.exchange, symbol: candles.symbol, timeframe: candles.timeframe, start: candles.klines[0].open_time,
    });
    let coverage;
    try {
      coverage = await api(`/api/v1/coverage?${params}`);
    } catch (error) {
      coverageNotice.textContent = `Coverage unavailable: ${error instanceof ApiError ? error.detail : error.message}`;
      return;
    }
    const { bars } = drawCoverage(chart, coverage);
    holder.dataset.holes = String(coverage.holes.length);
    holder.dataset.holeBars = String(bars);
    const gaps = coverage.ranges.filter((r) => r.kind === "exchange_gap");
    coverageNotice.textContent = `Coverage of the shown candles: ${coverage.completeness_percent} % verified or exchange gap`
      + `, ${coverage.holes.length} hole${coverage.holes.length === 1 ? "" : "s"} (${coverage.candles_missing} candles missing, red)`
      + (gaps.length ? `, ${gaps.length} exchange gap${gaps.length === 1 ? "" : "s"} (grey)` : "");
    holeList.replaceChildren(...coverage.holes.map((hole) => h("li", {},
      `${when(hole.start)} – ${when(hole.end)}: ${hole.candles} candle${hole.candles === 1 ? "" : "s"} missing`)));
  }

  // A candle event of the series on screen moves its chart (an older candle than the last drawn
  // would be refused by the chart: those come only with a new Show).
  const stopFollowing = onEvent((type, candle) => {
    if (type !== "candle" || !shown || candle.exchange !== shown.exchange || candle.symbol !== shown.symbol
        || candle.timeframe !== shown.timeframe) return;
    const time = Math.floor(candle.open_time / 1000);
    if (time < shown.last) return;
    shown.last = time;
    shown.series.update({
      time, open: Number(candle.open), high: Number(candle.high), low: Number(candle.low), close: Number(candle.close),
    });
    holder.dataset.liveClose = candle.close;
    holder.dataset.liveClosed = String(candle.is_closed);
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    show();
  });
  main.append(
    h("h1", {}, "Candles"),
    h("section", {}, form, title, notice, holder, coverageNotice, holeList,
      h("p", { class: "notice" }, "Charts by TradingView Lightweight Charts™, ",
        h("a", { href: "https://www.tradingview.com/", rel: "noopener" }, "tradingview.com"))),
  );
  return () => {
    stopFollowing();
    if (chart) chart.remove();
  };
}

// Candles: a candlestick chart of any stored series, read from /api/v1/klines.

import { api, ApiError } from "./api.js";
import { h } from "./dom.js";
import { newChart, seconds } from "./charts.js";

const TIMEFRAMES = ["1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"];

export function candlesPage(main) {
  const notice = h("p", { class: "notice", id: "candles-notice" });
  const holder = h("div", { id: "candle-chart", class: "chart tall" });
  const form = h("form", { class: "grid", id: "candles-form" },
    h("label", {}, "Symbol", h("input", { name: "symbol", value: "BTCUSDT", required: true })),
    h("label", {}, "Timeframe", h("select", { name: "timeframe" },
      TIMEFRAMES.map((tf) => h("option", { value: tf, selected: tf === "1m" }, tf)))),
    h("label", {}, "Candles (newest)", h("input", { name: "limit", type: "number", min: 1, max: 5000, value: 500 })),
    h("div", {}, h("button", { type: "submit", class: "primary" }, "Show")));
  let chart = null;

  async function show() {
    const data = new FormData(form);
    const params = new URLSearchParams({ symbol: String(data.get("symbol")).trim(), timeframe: String(data.get("timeframe")), limit: String(data.get("limit")) });
    try {
      const body = await api(`/api/v1/klines?${params}`);
      if (chart) chart.remove();
      chart = await newChart(holder, { height: 420 });
      const series = chart.addCandlestickSeries();
      series.setData(body.klines.map((k) => ({
        time: seconds(k.open_time), open: Number(k.open), high: Number(k.high), low: Number(k.low), close: Number(k.close),
      })));
      chart.timeScale().fitContent();
      holder.dataset.candles = String(body.count);
      notice.textContent = body.count
        ? `${body.count} candles of ${body.symbol} ${body.timeframe}${body.klines.length && !body.klines.at(-1).is_closed ? " (the last one still open)" : ""}`
        : `No candles stored for ${body.symbol} ${body.timeframe}`;
    } catch (error) {
      notice.textContent = error instanceof ApiError ? error.detail : error.message;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    show();
  });
  main.append(
    h("h1", {}, "Candles"),
    h("section", {}, form, notice, holder,
      h("p", { class: "notice" }, "Charts by TradingView Lightweight Charts™, ",
        h("a", { href: "https://www.tradingview.com/", rel: "noopener" }, "tradingview.com"))),
  );
  return () => { if (chart) chart.remove(); };
}

// Charts through TradingView Lightweight Charts (lightweight-charts-4.2.3.mjs, Apache-2.0, committed
// as published on npm; its license is lightweight-charts-LICENSE.txt). Loaded only by the pages
// that draw a chart. Its attribution logo injects a <style> element, which the page's CSP forbids:
// the pages that draw charts carry the attribution and the link to tradingview.com as text instead.

let library = null;

export async function charts() {
  library ??= import("./lightweight-charts-4.2.3.mjs");
  return library;
}

export async function newChart(container, options = {}) {
  const { createChart } = await charts();
  return createChart(container, {
    height: 260,
    layout: { background: { color: "#ffffff" }, textColor: "#1d2330", attributionLogo: false },
    grid: { vertLines: { color: "#eef0f4" }, horzLines: { color: "#eef0f4" } },
    timeScale: { timeVisible: true, secondsVisible: false },
    autoSize: true,
    ...options,
  });
}

// Seconds since the epoch, as the library wants its times (UTC).
export function seconds(iso) {
  return Math.floor(new Date(iso).getTime() / 1000);
}

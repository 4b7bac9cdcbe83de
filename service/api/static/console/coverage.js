// Coverage on the console: holes and exchange gaps drawn over a candle chart, and lags in words.
// Data from GET /api/v1/coverage (ranges and holes are half-open [start, end) of candle open times).

import { seconds } from "./charts.js";

const STEP_SECONDS = {
  "1s": 1, "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200, "4h": 14400,
  "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400, "3d": 259200, "1w": 604800, "15d": 1296000,
};
// The chart holds at most 5,000 candles; a larger hole is drawn over its first slots only.
const MAX_BARS = 5000;
const HOLE_COLOR = "rgba(180, 35, 24, 0.35)";
const GAP_COLOR = "rgba(102, 112, 133, 0.25)";

// Open times (epoch seconds) of the candles in [startIso, endIso); 1M steps by calendar months (UTC).
export function slotTimes(timeframe, startIso, endIso, limit = MAX_BARS) {
  const end = seconds(endIso);
  const times = [];
  if (timeframe === "1M") {
    const at = new Date(startIso);
    while (at.getTime() / 1000 < end && times.length < limit) {
      times.push(at.getTime() / 1000);
      at.setUTCMonth(at.getUTCMonth() + 1);
    }
    return times;
  }
  for (let t = seconds(startIso); t < end && times.length < limit; t += STEP_SECONDS[timeframe]) times.push(t);
  return times;
}

// A histogram on its own invisible price scale: one full-height bar per missing candle (red) and
// per exchange-gap candle (grey), behind the candles.
export function drawCoverage(chart, coverage) {
  const bars = new Map();
  const add = (items, color) => {
    for (const item of items) {
      for (const time of slotTimes(coverage.timeframe, item.start, item.end)) {
        if (bars.size >= MAX_BARS) return;
        bars.set(time, { time, value: 1, color });
      }
    }
  };
  add(coverage.ranges.filter((r) => r.kind === "exchange_gap"), GAP_COLOR);
  add(coverage.holes, HOLE_COLOR);
  const series = chart.addHistogramSeries({
    priceScaleId: "coverage", priceLineVisible: false, lastValueVisible: false, base: 0,
  });
  chart.priceScale("coverage").applyOptions({ visible: false, scaleMargins: { top: 0, bottom: 0 } });
  series.setData([...bars.values()].sort((a, b) => a.time - b.time));
  return { series, bars: bars.size };
}

export function lagText(secondsBehind) {
  if (secondsBehind === null || secondsBehind === undefined) return "–";
  const s = Math.round(secondsBehind);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

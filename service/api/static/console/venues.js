// The venues this deployment collects from (GET /api/v1/exchanges, read once per page load): the
// exchange select of the forms, and the timeframes each venue serves.

import { api } from "./api.js";
import { h } from "./dom.js";

export const DEFAULT_VENUE = "binance";
// What the forms offer when the list cannot be read (reads need a token here): the default venue.
const FALLBACK = [{ id: DEFAULT_VENUE, market: "Binance spot",
  timeframes: ["1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"] }];
let listing = null;

export function venues() {
  listing ??= api("/api/v1/exchanges").catch(() => { listing = null; return FALLBACK; });
  return listing;
}

// A select named "exchange" filled with the enabled venues; onVenue(venue) once filled and on each change.
export function venueSelect(onVenue = () => {}) {
  const select = h("select", { name: "exchange" }, h("option", { value: DEFAULT_VENUE }, DEFAULT_VENUE));
  let list = FALLBACK;
  const changed = () => onVenue(list.find((v) => v.id === select.value) || { id: select.value, timeframes: [] });
  select.addEventListener("change", changed);
  select.ready = venues().then((found) => {
    list = found;
    const current = select.value;
    select.replaceChildren(...list.map((v) => h("option", { value: v.id, title: v.market }, v.id)));
    select.value = list.some((v) => v.id === current) ? current : list[0].id;
    changed();
  });
  // Choose a venue (an edited config's); one not enabled here is still shown, as what it is.
  select.choose = async (id) => {
    await select.ready;
    if (![...select.options].some((o) => o.value === id)) select.append(h("option", { value: id }, `${id} (not enabled)`));
    select.value = id;
    changed();
  };
  return select;
}

// The venue's timeframes as toggles under a comma-separated input: a click adds or removes one.
export function timeframeChips(input) {
  const box = h("div", { class: "chips" });
  const typed = () => input.value.split(/[\s,]+/).filter(Boolean);
  const mark = () => {
    for (const chip of box.children) chip.setAttribute("aria-pressed", String(typed().includes(chip.value)));
  };
  const toggle = (tf) => {
    const list = typed();
    input.value = (list.includes(tf) ? list.filter((t) => t !== tf) : [...list, tf]).join(", ");
    mark();
  };
  input.addEventListener("input", mark);
  box.show = (timeframes) => {
    box.replaceChildren(...timeframes.map((tf) => h("button", { type: "button", class: "chip", value: tf, onclick: () => toggle(tf) }, tf)));
    mark();
  };
  box.mark = mark;
  return box;
}

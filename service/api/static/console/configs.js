// Configurations: the table, a create form with the API's errors next to the fields, enable/disable,
// run now, delete with confirmation. Admins only (the API says so too).

import { api, ApiError } from "./api.js";
import { h, when } from "./dom.js";
import { onEvent } from "./events.js";
import { clearErrors, showError } from "./forms.js";
import { timeframeChips, venueSelect } from "./venues.js";

const BASE = "/api/v1/admin/data-collection/configs";
const FIELDS = ["symbol", "timeframes", "interval_minutes", "history_start", "description", "exchange"];

export function configsPage(main, session) {
  const body = h("tbody");
  const notice = h("p", { class: "notice", id: "configs-notice" });

  const act = async (work) => {
    try {
      await work();
      notice.textContent = "";
    } catch (error) {
      notice.textContent = error.detail || error.message;
    }
    await load();
  };

  const rowOf = (config) => h("tr", { dataset: { configId: config.id, exchange: config.exchange } },
    h("td", {}, h("input", { type: "checkbox", class: "pick", value: config.id, "aria-label": `select ${config.exchange} ${config.symbol}` })),
    h("td", {}, config.exchange),
    h("td", {}, config.symbol),
    h("td", {}, config.timeframes.join(", ")),
    h("td", {}, `${config.interval_minutes} min`),
    h("td", {}, h("input", {
      type: "checkbox", checked: config.enabled, "aria-label": `enabled ${config.exchange} ${config.symbol}`,
      onchange: (event) => act(() => api(`${BASE}/${config.id}/${event.target.checked ? "enable" : "disable"}`, { method: "POST" })),
    }),
    // Paused by the symbol refresh while the symbol does not trade; enabled or not, it is not scheduled.
    config.paused_reason ? h("span", { class: "badge paused", title: config.paused_reason }, "paused") : null),
    h("td", {}, when(config.next_run_at)),
    h("td", {}, when(config.last_run_at)),
    h("td", {},
      h("button", { type: "button", class: "run-now", onclick: () => act(() => api(`${BASE}/${config.id}/trigger`, { method: "POST" })) }, "Run now"),
      " ",
      h("button", { type: "button", class: "edit", onclick: () => edit(config) }, "Edit"),
      " ",
      h("button", {
        type: "button", class: "danger",
        onclick: () => confirm(`Delete the configuration of ${config.symbol} on ${config.exchange}? Its execution logs stay.`)
          && act(() => api(`${BASE}/${config.id}`, { method: "DELETE" })),
      }, "Delete")));

  async function load() {
    if (!session.user || !session.user.is_admin) {
      notice.textContent = "Configurations are for admins: log in as one.";
      return;
    }
    try {
      const configs = await api(BASE);
      body.replaceChildren(...configs.map(rowOf));
      if (!configs.length) body.append(h("tr", {}, h("td", { colspan: 9, class: "notice" }, "No configuration yet")));
    } catch (error) {
      notice.textContent = error instanceof ApiError ? error.detail : error.message;
    }
  }

  const timeframes = h("input", { name: "timeframes", placeholder: "1m, 1h", required: true });
  const chips = timeframeChips(timeframes);
  const venue = venueSelect((chosen) => chips.show(chosen.timeframes));
  const form = h("form", { class: "grid", id: "config-form" },
    h("label", {}, "Exchange", venue, h("span", { class: "error", dataset: { errorFor: "exchange" } })),
    h("label", {}, "Symbol", h("input", { name: "symbol", placeholder: "BTCUSDT or BTC/USDT", required: true }),
      h("span", { class: "error", dataset: { errorFor: "symbol" } })),
    h("label", { class: "wide" }, "Timeframes (comma separated)", timeframes, chips,
      h("span", { class: "error", dataset: { errorFor: "timeframes" } })),
    h("label", {}, "Every (minutes)", h("input", { name: "interval_minutes", type: "number", value: 60, required: true }),
      h("span", { class: "error", dataset: { errorFor: "interval_minutes" } })),
    h("label", {}, "History from", h("input", { name: "history_start", placeholder: "listing or 2024-01-01 (empty: recent only)" }),
      h("span", { class: "error", dataset: { errorFor: "history_start" } })),
    h("label", {}, "Description", h("input", { name: "description" }),
      h("span", { class: "error", dataset: { errorFor: "description" } })),
    h("label", { class: "inline" }, h("input", { name: "enabled", type: "checkbox", checked: true }), "Enabled (runs at once, then on its interval)"),
    h("div", {}, h("button", { type: "submit", class: "primary" }, "Create"),
      h("p", { class: "error", dataset: { errorFor: "form" } })));
  let editing = null; // the id of the config the form changes; null: the form creates one
  const formTitle = h("h2", {}, "New configuration");
  const cancelEdit = h("button", { type: "button", hidden: true, onclick: () => stopEditing() }, "Cancel editing");

  function edit(config) {
    editing = config.id;
    clearErrors(form);
    form.elements.symbol.value = config.symbol;
    timeframes.value = config.timeframes.join(", ");
    venue.choose(config.exchange);
    form.elements.interval_minutes.value = config.interval_minutes;
    form.elements.history_start.value = config.history_start || "";
    form.elements.description.value = config.description || "";
    form.elements.enabled.checked = config.enabled;
    formTitle.textContent = `Edit ${config.symbol} on ${config.exchange} (id ${config.id})`;
    form.querySelector("button[type=submit]").textContent = "Save";
    cancelEdit.hidden = false;
  }

  function stopEditing() {
    editing = null;
    const chosen = venue.value; // the next config is likely on the same venue
    form.reset();
    venue.choose(chosen);
    clearErrors(form);
    formTitle.textContent = "New configuration";
    form.querySelector("button[type=submit]").textContent = "Create";
    cancelEdit.hidden = true;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const data = new FormData(form);
    const payload = {
      exchange: String(data.get("exchange")),
      symbol: String(data.get("symbol")).trim(),
      timeframes: String(data.get("timeframes")).split(/[\s,]+/).filter(Boolean),
      interval_minutes: Number(data.get("interval_minutes")),
      enabled: data.get("enabled") === "on",
    };
    if (String(data.get("description")).trim()) payload.description = String(data.get("description")).trim();
    if (String(data.get("history_start")).trim()) payload.history_start = String(data.get("history_start")).trim();
    try {
      if (editing === null) await api(BASE, { method: "POST", body: payload });
      else {
        const cleared = { description: payload.description ?? null, history_start: payload.history_start ?? null };
        await api(`${BASE}/${editing}`, { method: "PUT", body: { ...payload, ...cleared } });
      }
      stopEditing();
      await load();
    } catch (error) {
      showError(form, error, FIELDS);
    }
  });

  const picked = () => [...body.querySelectorAll("input.pick:checked")].map((box) => box.value);
  const bulk = (action, label) => h("button", {
    type: "button", class: `bulk-${action}`,
    onclick: () => act(async () => {
      const ids = picked();
      if (!ids.length) throw new Error("select configurations first");
      const failed = [];
      for (const id of ids) {
        try {
          await api(`${BASE}/${id}/${action}`, { method: "POST" });
        } catch (error) {
          failed.push(`${id}: ${error.detail || error.message}`);
        }
      }
      if (failed.length) throw new Error(`${label} failed for ${failed.join("; ")}`);
    }),
  }, `${label} selected`);

  let reload = null;
  const stop = onEvent((type, event) => {
    // A scheduled run starting or ending moves a config's last and next run times.
    if (type === "resync" || (type === "task" && event.task_type === "scheduled_data_collection")) {
      clearTimeout(reload);
      reload = setTimeout(load, 300);
    }
  });

  main.append(
    h("h1", {}, "Configurations"),
    notice,
    h("section", {}, formTitle, form, cancelEdit),
    h("section", {},
      h("div", { class: "actions bulk" }, bulk("enable", "Enable"), bulk("disable", "Disable"), bulk("trigger", "Run")),
      h("table", { id: "configs" },
        h("thead", {}, h("tr", {}, ["", "Exchange", "Symbol", "Timeframes", "Interval", "Enabled", "Next run", "Last run", ""]
          .map((t) => h("th", {}, t)))),
        body)),
  );
  load();
  return () => { stop(); clearTimeout(reload); };
}

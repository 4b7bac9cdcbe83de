// Execution logs (admins): filters, pagination, a detail view with the metadata, CSV export of the filter.

import { api, authHeaders, ApiError } from "./api.js";
import { h, when, statusCell } from "./dom.js";
import { onEvent } from "./events.js";

const BASE = "/api/v1/admin/data-collection/execution-logs";
const PAGE = 50;

export function logsPage(main, session) {
  const notice = h("p", { class: "notice", id: "logs-notice" });
  const body = h("tbody");
  const detail = h("pre", { id: "log-detail", class: "detail", hidden: true });
  const pageLabel = h("span", { id: "logs-page" });
  let skip = 0;

  const filters = h("form", { class: "grid", id: "log-filters" },
    h("label", {}, "Job name", h("input", { name: "job_name", placeholder: "collect_data_1" })),
    h("label", {}, "Type", h("select", { name: "job_type" },
      h("option", { value: "" }, "any"),
      ["scheduled_data_collection", "data_collection", "symbol_refresh"].map((t) => h("option", { value: t }, t)))),
    h("label", {}, "Symbol", h("input", { name: "symbol", placeholder: "BTCUSDT" })),
    h("label", {}, "Status", h("select", { name: "status" },
      h("option", { value: "" }, "any"),
      ["running", "success", "failed", "skipped"].map((s) => h("option", { value: s }, s)))),
    h("label", {}, "From", h("input", { name: "start_date", type: "datetime-local" })),
    h("label", {}, "To", h("input", { name: "end_date", type: "datetime-local" })),
    h("div", {}, h("button", { type: "submit", class: "primary" }, "Filter"), " ",
      h("button", { type: "button", id: "csv-export", onclick: () => exportCsv() }, "Export CSV")));

  function query(extra = {}) {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(filters)) {
      if (!value) continue;
      // datetime-local has no zone: send it as the browser's local time, in UTC.
      params.set(name, name.endsWith("_date") ? new Date(String(value)).toISOString() : String(value));
    }
    for (const [name, value] of Object.entries(extra)) params.set(name, String(value));
    return params.toString();
  }

  async function load() {
    if (!session.user || !session.user.is_admin) {
      notice.textContent = "Execution logs are for admins: log in as one.";
      return;
    }
    try {
      const logs = await api(`${BASE}?${query({ skip, limit: PAGE })}`);
      body.replaceChildren(...logs.map((log) => h("tr", { dataset: { logId: log.id }, class: "clickable", onclick: () => show(log.id) },
        h("td", {}, log.id), h("td", {}, log.job_name), h("td", {}, log.job_type),
        h("td", {}, log.exchange || ""), h("td", {}, log.symbol || ""),
        h("td", {}, statusCell(log.status)), h("td", {}, log.records_collected),
        h("td", {}, log.duration_seconds === null ? "" : `${log.duration_seconds.toFixed(1)} s`),
        h("td", {}, when(log.started_at)), h("td", {}, log.error_message || ""))));
      if (!logs.length) body.append(h("tr", {}, h("td", { colspan: 10, class: "notice" }, "No execution log matches")));
      pageLabel.textContent = `rows ${skip + 1}–${skip + logs.length}`;
      nextButton.disabled = logs.length < PAGE;
      prevButton.disabled = skip === 0;
      notice.textContent = "";
    } catch (error) {
      notice.textContent = error instanceof ApiError ? error.detail : error.message;
    }
  }

  async function show(id) {
    try {
      const log = await api(`${BASE}/${id}`);
      detail.textContent = JSON.stringify(log, null, 2);
      detail.hidden = false;
    } catch (error) {
      notice.textContent = error.detail || error.message;
    }
  }

  async function exportCsv() {
    const response = await fetch(`${BASE}.csv?${query({ limit: 1000 })}`, { headers: authHeaders() });
    if (!response.ok) {
      notice.textContent = `CSV export failed: HTTP ${response.status}`;
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: "execution-logs.csv" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  const prevButton = h("button", { type: "button", onclick: () => { skip = Math.max(skip - PAGE, 0); load(); } }, "Newer");
  const nextButton = h("button", { type: "button", onclick: () => { skip += PAGE; load(); } }, "Older");
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    skip = 0;
    load();
  });

  let reload = null;
  const stop = onEvent((type) => {
    if ((type === "execution_log" || type === "resync") && skip === 0) {
      clearTimeout(reload);
      reload = setTimeout(load, 300);
    }
  });

  main.append(
    h("h1", {}, "Execution logs"),
    notice,
    h("section", {}, filters),
    h("section", {},
      h("table", { id: "logs" },
        h("thead", {}, h("tr", {}, ["Id", "Job", "Type", "Exchange", "Symbol", "Status", "Candles", "Duration", "Started", "Error"]
          .map((t) => h("th", {}, t)))),
        body),
      h("div", { class: "actions pager" }, prevButton, pageLabel, nextButton)),
    h("section", {}, h("h2", {}, "Detail"), h("p", { class: "notice" }, "Click a row to see it whole."), detail),
  );
  load();
  return () => { stop(); clearTimeout(reload); };
}

// Tasks: the active ones with live progress bars and cancel, a form to start a collection, recent history.

import { api, ApiError } from "./api.js";
import { h, when, statusCell } from "./dom.js";
import { onEvent } from "./events.js";
import { clearErrors, showError } from "./forms.js";
import { DEFAULT_VENUE, timeframeChips, venueSelect } from "./venues.js";

const ACTIVE = new Set(["pending", "running"]);

function describe(task) {
  const p = task.params || {};
  if (task.task_type === "symbol_refresh") return "symbol refresh";
  return `${(p.symbols || []).join(", ")} · ${(p.timeframes || []).join(", ")}`;
}

// The venue a task collects from or refreshes (tasks from before there were several name none: Binance's).
const venueOf = (task) => (task.params && task.params.exchange) || DEFAULT_VENUE;

// "42% · 1m 05s left": the ETA a running collection measures from its own throughput.
function progressText(progress, etaSeconds) {
  if (etaSeconds == null) return `${progress}%`;
  const seconds = Math.round(etaSeconds);
  const left = seconds >= 60 ? `${Math.floor(seconds / 60)}m ${String(seconds % 60).padStart(2, "0")}s` : `${seconds}s`;
  return `${progress}% · ${left} left`;
}

function progressCell(task) {
  return h("td", {},
    h("progress", { max: 100, value: task.progress, dataset: { taskId: task.task_id }, "aria-label": "progress" }),
    " ", h("span", { class: "percent", dataset: { taskId: task.task_id } }, progressText(task.progress, task.eta_seconds)));
}

export function tasksPage(main, session) {
  const activeBody = h("tbody");
  const recentBody = h("tbody");
  const notice = h("p", { class: "notice" });
  const admin = Boolean(session.user && session.user.is_admin);

  const rowOf = (task) => h("tr", { dataset: { taskId: task.task_id } },
    h("td", { title: task.task_id }, task.task_id.slice(0, 8)),
    h("td", {}, task.task_type),
    h("td", {}, venueOf(task)),
    h("td", {}, describe(task)),
    h("td", { class: "status" }, statusCell(task.status)),
    progressCell(task),
    h("td", { class: "message" }, task.message || ""),
    h("td", {}, admin && ACTIVE.has(task.status)
      ? h("button", { type: "button", class: "danger", onclick: () => cancel(task.task_id) }, "Cancel") : ""));

  async function cancel(taskId) {
    try {
      await api(`/api/v1/data-collector/task/${taskId}/cancel`, { method: "POST" });
    } catch (error) {
      notice.textContent = error.detail || error.message;
    }
    await load();
  }

  async function load() {
    try {
      const [active, recent] = await Promise.all([
        api("/api/v1/data-collector/tasks/active"), api("/api/v1/data-collector/tasks?limit=20"),
      ]);
      activeBody.replaceChildren(...active.tasks.map(rowOf));
      if (!active.tasks.length) activeBody.append(h("tr", {}, h("td", { colspan: 8, class: "notice" }, "No active task")));
      recentBody.replaceChildren(...recent.tasks.filter((t) => !ACTIVE.has(t.status)).map((task) => h("tr", {},
        h("td", { title: task.task_id }, task.task_id.slice(0, 8)), h("td", {}, task.task_type),
        h("td", {}, venueOf(task)), h("td", {}, describe(task)),
        h("td", {}, statusCell(task.status)), h("td", {}, `${task.progress}%`), h("td", {}, task.message || ""),
        h("td", {}, when(task.completed_at)))));
      notice.textContent = "";
    } catch (error) {
      notice.textContent = error instanceof ApiError && error.status === 401
        ? "Log in to see the tasks (reads need a token here)." : `Could not load the tasks: ${error.message}`;
    }
  }

  let reload = null;
  const later = () => { clearTimeout(reload); reload = setTimeout(load, 150); };
  const stop = onEvent((type, event) => {
    if (type === "resync") return later();
    if (type !== "task") return;
    const bar = activeBody.querySelector(`progress[data-task-id="${event.task_id}"]`);
    if (!bar) return later(); // a task this page does not show yet
    bar.value = event.progress;
    activeBody.querySelector(`.percent[data-task-id="${event.task_id}"]`).textContent =
      progressText(event.progress, event.status === "running" ? event.eta_seconds : null);
    const row = activeBody.querySelector(`tr[data-task-id="${event.task_id}"]`);
    row.querySelector(".status").replaceChildren(statusCell(event.status));
    row.querySelector(".message").textContent = event.message || "";
    if (!ACTIVE.has(event.status)) { // ended: show the end a moment, then move it to the history
      clearTimeout(reload);
      reload = setTimeout(load, 1500);
    }
  });

  main.append(
    h("h1", {}, "Tasks"),
    notice,
    h("section", {}, h("h2", {}, "Active"),
      h("table", { id: "active-tasks" },
        h("thead", {}, h("tr", {}, ["Task", "Type", "Exchange", "What", "Status", "Progress", "Message", ""].map((t) => h("th", {}, t)))),
        activeBody)),
    admin ? startForm(load) : "",
    h("section", {}, h("h2", {}, "Recent"),
      h("table", { id: "recent-tasks" },
        h("thead", {}, h("tr", {}, ["Task", "Type", "Exchange", "What", "Status", "Progress", "Message", "Ended"].map((t) => h("th", {}, t)))),
        recentBody)),
  );
  load();
  return () => { stop(); clearTimeout(reload); };
}

function startForm(load) {
  const timeframes = h("input", { name: "timeframes", placeholder: "1m, 1h", required: true });
  const chips = timeframeChips(timeframes);
  const form = h("form", { class: "grid", id: "start-form" },
    h("label", {}, "Exchange", venueSelect((venue) => chips.show(venue.timeframes)),
      h("span", { class: "error", dataset: { errorFor: "exchange" } })),
    h("label", {}, "Symbols (comma separated)", h("input", { name: "symbols", placeholder: "BTCUSDT, ETH/USDT", required: true }),
      h("span", { class: "error", dataset: { errorFor: "symbols" } })),
    h("label", { class: "wide" }, "Timeframes (comma separated)", timeframes, chips,
      h("span", { class: "error", dataset: { errorFor: "timeframes" } })),
    h("div", {}, h("button", { type: "submit", class: "primary" }, "Start collection"),
      h("p", { class: "error", dataset: { errorFor: "form" } })));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const data = new FormData(form);
    const list = (name) => String(data.get(name)).split(/[\s,]+/).filter(Boolean);
    try {
      const body = { exchange: String(data.get("exchange")), symbols: list("symbols"), timeframes: list("timeframes") };
      await api("/api/v1/data-collector/start", { method: "POST", body });
      form.elements.symbols.value = "";
      timeframes.value = "";
      chips.mark();
      await load();
    } catch (error) {
      showError(form, error, ["symbols", "timeframes", "exchange"]);
    }
  });
  return h("section", {}, h("h2", {}, "Start a collection"), form);
}

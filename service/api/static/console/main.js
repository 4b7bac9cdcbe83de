// The console: hash routes to pages, the login, the live stream.

import { currentUser, login, setToken } from "./api.js";
import { connect } from "./events.js";
import { configsPage } from "./configs.js";
import { logsPage } from "./logs.js";
import { overviewPage } from "./overview.js";
import { candlesPage } from "./candles.js";
import { showSetup } from "./setup.js";
import { tasksPage } from "./tasks.js";

const pages = { overview: overviewPage, tasks: tasksPage, configs: configsPage, logs: logsPage, candles: candlesPage };
export const session = { user: null };
let leave = null;

function route() {
  const name = (location.hash.replace(/^#\//, "") || "overview").split("?")[0];
  const page = pages[name] || pages.overview;
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.dataset.page === name);
  }
  if (leave) leave();
  const main = document.getElementById("page");
  main.replaceChildren();
  leave = page(main, session);
}

function showUser() {
  document.getElementById("who").textContent = session.user
    ? `${session.user.email}${session.user.is_admin ? " (admin)" : ""}` : "";
  document.getElementById("login-button").hidden = Boolean(session.user);
  document.getElementById("logout-button").hidden = !session.user;
}

function setupLogin() {
  const dialog = document.getElementById("login-dialog");
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  document.getElementById("login-button").addEventListener("click", () => {
    error.textContent = "";
    dialog.showModal();
    showSetup(); // an admin made since the page loaded (create-user) hides the banner
  });
  document.getElementById("login-cancel").addEventListener("click", () => dialog.close());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    try {
      session.user = await login(data.get("email"), data.get("password"));
      dialog.close();
      form.reset();
      showUser();
      startLive();
      route();
    } catch (failure) {
      error.textContent = failure.detail || failure.message;
    }
  });
  document.getElementById("logout-button").addEventListener("click", () => {
    setToken(null);
    session.user = null;
    showUser();
    startLive();
    route();
  });
}

function startLive() {
  const live = document.getElementById("live");
  connect((on) => {
    live.textContent = on ? "live" : "offline";
    live.classList.toggle("on", on);
  });
}

async function start() {
  setupLogin();
  showSetup();
  session.user = await currentUser();
  showUser();
  startLive();
  window.addEventListener("hashchange", route);
  route();
}

start();

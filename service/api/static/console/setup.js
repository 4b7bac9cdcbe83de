// A first run: with no admin account yet nobody can log in as one, so a banner says how to make one
// (GET /api/v1/auth/setup); it is hidden once an admin exists.

import { ApiError, authSetup } from "./api.js";
import { h } from "./dom.js";

const RETRY_MS = 2000;
let retry = null;

// The service's sentence, its `backticked` commands and variables shown as code.
function sentence(text) {
  return text.split("`").map((part, index) => (index % 2 ? h("code", {}, part) : part));
}

export async function showSetup() {
  clearTimeout(retry);
  const banner = document.getElementById("setup-banner");
  let setup;
  try {
    setup = await authSetup();
  } catch (error) {
    // Still starting (503): ask again shortly. Anything else: say nothing rather than something wrong.
    if (error instanceof ApiError && error.status === 503) retry = setTimeout(showSetup, RETRY_MS);
    return;
  }
  banner.dataset.adminExists = String(setup.admin_exists);
  banner.hidden = setup.admin_exists;
  banner.replaceChildren(...(setup.admin_exists ? [] : [h("strong", {}, "No admin account yet. "), ...sentence(setup.how)]));
}

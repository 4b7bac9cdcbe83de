// Shows an API error next to the field it names (the error body names fields in `detail` or `extra`).

export function clearErrors(form) {
  for (const element of form.querySelectorAll("[data-error-for]")) element.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

export function showError(form, error, fields) {
  const text = `${error.detail || error.message} ${JSON.stringify(error.extra || {})}`;
  const field = fields.find((name) => new RegExp(`\\b${name}\\b`).test(text))
    || (/timeframe/.test(text) && fields.includes("timeframes") ? "timeframes" : null)
    || (/symbol/.test(text) && fields.includes("symbol") ? "symbol" : null)
    || (/symbol/.test(text) && fields.includes("symbols") ? "symbols" : null);
  const target = form.querySelector(`[data-error-for="${field || "form"}"]`) || form.querySelector('[data-error-for="form"]');
  target.textContent = error.detail || error.message;
  const input = field && form.querySelector(`[name="${field}"]`);
  if (input) input.setAttribute("aria-invalid", "true");
}

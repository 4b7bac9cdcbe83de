// The service's REST API, with the login token (kept for this browser tab only) and its error shape.

const TOKEN_KEY = "kline-collector.token";

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.detail = body && body.detail ? body.detail : "";
    this.extra = (body && body.extra) || {};
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders() {
  const value = token();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json", ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export async function login(email, password) {
  const data = await api("/api/v1/auth/login", { method: "POST", body: { email, password } });
  setToken(data.access_token);
  return currentUser();
}

export async function currentUser() {
  if (!token()) return null;
  try {
    return await api("/api/v1/auth/me");
  } catch (error) {
    if (error.status === 401) {
      setToken(null); // expired or revoked: log in again
      return null;
    }
    throw error;
  }
}

// Whether an admin account exists yet, and how to make one (public: asked before anyone can log in).
export async function authSetup() {
  return api("/api/v1/auth/setup");
}

// The API client: the token lives in this tab's session storage (never in a URL, never in local storage),
// every call sends it as a bearer token, and an error comes back as the API words it.

const KEY = "kumo.token";

export function token() { return sessionStorage.getItem(KEY); }
export function setToken(t) { sessionStorage.setItem(KEY, t); }
export function forget() { sessionStorage.removeItem(KEY); }

export class APIError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** fetch with the token; JSON in and out. Throws APIError with kumod's own message. */
export async function call(method, path, body) {
  const headers = { Authorization: "Bearer " + (token() || "") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  } catch (e) {
    throw new APIError(0, "unreachable", "kumod did not answer (" + e.message + ")");
  }
  if (r.status === 204) return null;
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const e = data && data.error;
    throw new APIError(r.status, e ? e.code : "http_" + r.status, e ? e.message : (text || r.statusText));
  }
  return data;
}

export const get = (p) => call("GET", p);
export const post = (p, b) => call("POST", p, b === undefined ? {} : b);
export const put = (p, b) => call("PUT", p, b);
export const del = (p) => call("DELETE", p);

/** The instance's serial console: a WebSocket that carries the token in its subprotocols (a browser
 * cannot set headers on one, and the token must not go in the URL). */
export function consoleSocket(id) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(scheme + "//" + location.host + "/v1/instances/" + encodeURIComponent(id) + "/console",
    ["kumo.console", "kumo.token." + token()]);
  ws.binaryType = "arraybuffer";
  return ws;
}

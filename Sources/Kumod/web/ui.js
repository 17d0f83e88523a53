// DOM helpers: elements built from data (text nodes only, never HTML from the API), tables, the error bar,
// timers that end when the page changes.

export function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export function table(headers, rows, numeric = []) {
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("thead", {}, h("tr", {}, headers.map((t, i) => h("th", { scope: "col", class: numeric.includes(i) ? "num" : null }, t)))),
      h("tbody", {}, rows.length === 0
        ? h("tr", {}, h("td", { colspan: headers.length, class: "note" }, "none"))
        : rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { class: numeric.includes(i) ? "num" : null }, c)))))));
}

export function state(s) { return h("span", { class: "state " + s }, s); }

export function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter((p) => p[1] !== undefined && p[1] !== null && p[1] !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

const bar = () => document.getElementById("error");
// Whose error is on the bar: a refresh's clears when a refresh works again; a user's action's stays
// until the user's next action (a refresh in the background must not wipe what the user was told).
let shownBy = null;

/** Shows kumod's words for what went wrong (or clears the bar). */
export function showError(e, by = "action") {
  const b = bar();
  if (!e) { b.hidden = true; b.textContent = ""; shownBy = null; return; }
  b.textContent = e.code ? e.message + " (" + e.code + ")" : String(e.message || e);
  b.hidden = false;
  shownBy = by;
}

/** Runs a user's action `f`, showing its error; true when it succeeded. */
export async function attempt(f) {
  try { await f(); showError(null); return true; } catch (e) { showError(e); return false; }
}

/** Runs a background refresh `f`: its error is shown unless a user's action's is (which stays), its
 * success clears only a refresh's error. */
export async function refresh(f) {
  try { await f(); if (shownBy === "refresh") showError(null); return true; } catch (e) { if (shownBy !== "action") showError(e, "refresh"); return false; }
}

// Timers and sockets of the page on screen: ended when the route changes.
let cleanups = [];
export function onLeave(f) { cleanups.push(f); }
export function leave() { for (const f of cleanups.splice(0)) { try { f(); } catch (_) { /* gone already */ } } }

/** Calls `f` (a refresh) now and every `ms` while the page is shown and the tab visible. */
export function every(ms, f) {
  let stopped = false, timer = null;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) await refresh(f);
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  onLeave(() => { stopped = true; clearTimeout(timer); });
}

export function mib(n) { return n >= 1024 ? (n / 1024).toFixed(n % 1024 ? 1 : 0) + " GiB" : n + " MiB"; }
export function when(iso) { return iso ? new Date(iso).toLocaleString() : "-"; }

export function field(label, control, hint) {
  const id = "f-" + Math.random().toString(36).slice(2, 8);
  control.id = id;
  return [h("label", { for: id }, label), hint ? h("div", {}, control, h("div", { class: "note" }, hint)) : control];
}

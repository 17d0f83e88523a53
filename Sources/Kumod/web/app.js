// The console's pages and its router (#/instances, #/instances/ID, #/create, #/alarms, #/lbs, #/host, #/types,
// #/images, #/login). Lists refresh every 3 s while shown, charts every 10 s: an idle page asks kumod
// for less than one thing a second.
import * as api from "/ui/api.js";
import { loadBalancersPage } from "/ui/lb.js";
import { h, table, state, kv, showError, attempt, leave, every, mib, when, field } from "/ui/ui.js";
import { instancePage } from "/ui/instance.js";
import { hostPage } from "/ui/host.js";

const main = () => document.getElementById("main");
let me = null; // {tenant, admin}

function render(...nodes) {
  const m = main();
  m.replaceChildren(...nodes);
}

async function whoAmI() {
  // A tenant token lists only its own; the tenants list answers admins only.
  const list = await api.get("/v1/instances?limit=1");
  let admin = false;
  try { await api.get("/v1/tenants"); admin = true; } catch (e) { if (e.status !== 403) throw e; }
  me = { admin, instances: list.instances };
  document.getElementById("who").textContent = admin ? "admin" : "tenant";
}

function loginPage() {
  const input = h("input", { type: "password", autocomplete: "off", required: true, placeholder: "kumo_…", size: 40 });
  const form = h("form", { class: "grid card", onsubmit: async (ev) => {
    ev.preventDefault();
    api.setToken(input.value.trim());
    const ok = await attempt(whoAmI);
    if (ok) { location.hash = "#/instances"; route(); } else api.forget();
  } },
  ...field("API token", input, "An admin token (kumod's admin.token) or a tenant's (`kumo token create --tenant NAME`). Kept in this tab only."),
  h("div", { class: "full" }, h("button", { type: "submit" }, "Log in")));
  render(h("h1", {}, "Log in"), form);
  input.focus();
}

function instancesPage() {
  const stateFilter = h("select", { "aria-label": "State" }, ["all", "pending", "starting", "running", "stopping", "stopped", "error"].map((s) => h("option", { value: s }, s)));
  const text = h("input", { type: "search", placeholder: "name or id", "aria-label": "Filter by name or id" });
  const holder = h("div");
  let last = [];
  const draw = () => {
    const f = text.value.trim().toLowerCase(), st = stateFilter.value;
    const rows = last.filter((i) => (st === "all" || i.state === st) && (!f || i.id.includes(f) || i.name.toLowerCase().includes(f)))
      .map((i) => [h("a", { href: "#/instances/" + i.id }, i.id), i.name, state(i.state), i.type, String(i.vcpus), mib(i.memory_mib),
        (i.nics || []).map((n) => n.address).join(", "), me && me.admin ? i.tenant : null].filter((c) => c !== null));
    const head = ["ID", "Name", "State", "Type", "vCPUs", "Memory", "Addresses"].concat(me && me.admin ? ["Tenant"] : []);
    holder.replaceChildren(table(head, rows, [4]));
  };
  stateFilter.addEventListener("change", draw);
  text.addEventListener("input", draw);
  render(h("h1", {}, "Instances"),
    h("div", { class: "filters" }, text, stateFilter, h("a", { href: "#/create" }, "Create instance"),
      h("span", { class: "note", "aria-live": "polite", id: "count" })),
    holder);
  every(3000, async () => {
    const r = await api.get("/v1/instances");
    last = r.instances;
    document.getElementById("count")?.replaceChildren(last.length + " instance" + (last.length === 1 ? "" : "s"));
    draw();
  });
}

async function createPage() {
  render(h("h1", {}, "Create instance"), h("p", { class: "note" }, "Loading…"));
  let types, images, networks, keys, groups;
  const ok = await attempt(async () => {
    [types, images, networks, keys, groups] = await Promise.all([
      api.get("/v1/instance-types"), api.get("/v1/images"), api.get("/v1/networks").catch(() => ({ networks: [] })),
      api.get("/v1/key-pairs").catch(() => ({ key_pairs: [] })), api.get("/v1/security-groups").catch(() => ({ security_groups: [] }))]);
  });
  if (!ok) return;
  const type = h("select", { required: true }, types.instance_types.map((t) => h("option", { value: t.name }, `${t.name} (${t.vcpus} vCPU, ${mib(t.memory_mib)})`)));
  const image = h("select", { required: true }, images.images.map((i) => h("option", { value: i.id }, i.name + (i.tenant ? " (" + i.tenant + ")" : ""))));
  const count = h("input", { type: "number", min: 1, max: 100, value: 1 });
  const name = h("input", { type: "text", maxlength: 128 });
  const dedup = h("input", { type: "checkbox" });
  const policy = h("select", {}, h("option", { value: "shared" }, "shared"), h("option", { value: "dedicated" }, "dedicated"));
  const nets = h("select", { multiple: true, size: Math.min(4, Math.max(2, networks.networks.length)) },
    networks.networks.map((n) => h("option", { value: n.id }, `${n.name} (${n.cidr})`)));
  const sgs = h("select", { multiple: true, size: Math.min(4, Math.max(2, groups.security_groups.length)) },
    groups.security_groups.map((g) => h("option", { value: g.id }, g.name)));
  const key = h("select", {}, h("option", { value: "" }, "none"), keys.key_pairs.map((k) => h("option", { value: k.name }, k.name)));
  const userData = h("textarea", { placeholder: "#!/bin/sh\necho hello", spellcheck: "false" });
  const display = h("select", {}, ["none", "640x480", "800x600", "1024x768", "1280x800"].map((d) => h("option", { value: d }, d)));
  const form = h("form", { class: "grid card", onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { type: type.value, image: image.value, count: Number(count.value) };
    if (name.value.trim()) body.name = name.value.trim();
    if (dedup.checked) body.memory_dedup = true;
    if (policy.value !== "shared") body.cpu_policy = policy.value;
    const chosen = [...nets.selectedOptions].map((o) => o.value);
    if (chosen.length) body.networks = chosen;
    const groupsChosen = [...sgs.selectedOptions].map((o) => o.value);
    if (groupsChosen.length) body.security_groups = groupsChosen;
    if (key.value) body.key_pair = key.value;
    if (display.value !== "none") body.display = display.value;
    if (userData.value) body.user_data = btoa(String.fromCharCode(...new TextEncoder().encode(userData.value)));
    await attempt(async () => {
      const r = await api.post("/v1/instances", body);
      location.hash = r.instances.length === 1 ? "#/instances/" + r.instances[0].id : "#/instances";
    });
  } },
  ...field("Type", type), ...field("Image", image), ...field("Count", count), ...field("Name", name, "optional; up to 128 bytes"),
  ...field("Memory dedup", dedup, "offer guest RAM to KSM (merged within your tenant only)"),
  ...field("CPU policy", policy, "dedicated: host CPUs of its own, never overcommitted"),
  ...field("Networks", nets, "eth0 first; none chosen: your default network"),
  ...field("Security groups", sgs, "none chosen: your default group"),
  ...field("Key pair", key), ...field("Display", display, "a screen and keyboard, seen in the instance's Screen tab (VNC)"),
  ...field("User data", userData, "cloud-init user-data: a script (#!) or #cloud-config, at most 16 KiB"),
  h("div", { class: "full" }, h("button", { type: "submit" }, "Create")));
  render(h("h1", {}, "Create instance"), form);
}

function alarmsPage() {
  const holder = h("div");
  const name = h("input", { required: true, maxlength: 128 });
  const inst = h("input", { placeholder: "i-… (empty: the host, admins)" });
  const metric = h("input", { required: true, value: "cpu_percent" });
  const cmp = h("select", {}, h("option", { value: "above" }, "above"), h("option", { value: "below" }, "below"));
  const threshold = h("input", { type: "number", step: "any", required: true, value: 80 });
  const dur = h("input", { type: "number", min: 10, max: 86400, value: 300 });
  const form = h("form", { class: "grid card", onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { name: name.value.trim(), metric: metric.value.trim(), comparison: cmp.value, threshold: Number(threshold.value), duration_seconds: Number(dur.value) };
    if (inst.value.trim()) body.instance = inst.value.trim();
    if (await attempt(() => api.post("/v1/alarms", body))) name.value = "";
  } }, ...field("Name", name), ...field("Instance", inst), ...field("Metric", metric, "a series of `kumo instance metrics ID`"),
  ...field("When", cmp), ...field("Threshold", threshold), ...field("For (seconds)", dur), h("div", { class: "full" }, h("button", { type: "submit" }, "Add alarm")));
  render(h("h1", {}, "Alarms"), holder, h("h2", {}, "New alarm"), form);
  every(5000, async () => {
    const r = await api.get("/v1/alarms");
    holder.replaceChildren(table(["Name", "On", "Rule", "State", "Since", "Last value", ""], r.alarms.map((a) => [
      a.name, a.instance ? h("a", { href: "#/instances/" + a.instance }, a.instance) : "host",
      `${a.metric} ${a.comparison} ${a.threshold} for ${a.duration_seconds} s`, state(a.state), when(a.state_since),
      a.last_value === null || a.last_value === undefined ? "-" : Number(a.last_value).toFixed(2),
      h("span", {}, h("button", { type: "button", class: "secondary", onclick: () => showHistory(a.id) }, "History"), " ",
        h("button", { type: "button", class: "danger", onclick: async () => {
          if (confirm(`Delete alarm ${a.name}?`)) await attempt(() => api.del("/v1/alarms/" + a.id));
        } }, "Delete"))])));
  });
  async function showHistory(id) {
    await attempt(async () => {
      const a = await api.get("/v1/alarms/" + id);
      holder.append(h("h2", {}, "History of " + a.name),
        table(["At", "State", "Value", "Message"], (a.history || []).map((e) => [when(e.at), state(e.state), e.value ?? "-", e.message])));
    });
  }
}

function typesPage() {
  const holder = h("div");
  const name = h("input", { required: true }), vcpus = h("input", { type: "number", min: 1, value: 1 }), mem = h("input", { type: "number", min: 64, value: 2048 });
  const bw = h("input", { type: "number", min: 1, placeholder: "unlimited" });
  const form = h("form", { class: "grid card", onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { name: name.value.trim(), vcpus: Number(vcpus.value), memory_mib: Number(mem.value) };
    if (bw.value) body.bandwidth_mbps = Number(bw.value);
    if (await attempt(() => api.post("/v1/instance-types", body))) { name.value = ""; load(); }
  } }, ...field("Name", name), ...field("vCPUs", vcpus), ...field("Memory (MiB)", mem), ...field("Bandwidth (Mbit/s)", bw),
  h("div", { class: "full" }, h("button", { type: "submit" }, "Add type (admin)")));
  const load = () => attempt(async () => {
    const r = await api.get("/v1/instance-types");
    holder.replaceChildren(table(["Name", "vCPUs", "Memory", "CPU cap", "Bandwidth", "Built in", ""], r.instance_types.map((t) => [
      t.name, String(t.vcpus), mib(t.memory_mib), t.cpu_cap_percent ? t.cpu_cap_percent + " %" : "-", t.bandwidth_mbps ? t.bandwidth_mbps + " Mbit/s" : "-",
      t.builtin ? "yes" : "no", t.builtin || !me.admin ? "" : h("button", { type: "button", class: "danger", onclick: async () => {
        if (confirm(`Delete type ${t.name}?`) && await attempt(() => api.del("/v1/instance-types/" + encodeURIComponent(t.name)))) load();
      } }, "Delete")]), [1]));
  });
  render(h("h1", {}, "Instance types"), holder, me.admin ? [h("h2", {}, "New type"), form] : h("p", { class: "note" }, "Types are defined by admins."));
  load();
}

function imagesPage() {
  const holder = h("div");
  render(h("h1", {}, "Images"), holder, h("p", { class: "note" }, "Import your own with `kumo image import`, or make one of a stopped instance with `kumo image create --from-instance`."));
  attempt(async () => {
    const r = await api.get("/v1/images");
    holder.replaceChildren(table(["ID", "Name", "Owner", "Root disk", "Source", "Created"], r.images.map((i) => [
      i.id, i.name, i.tenant || "public", i.root_disk ? (i.disk_format || "raw") : "-", i.source || "registered", when(i.created_at)])));
  });
}

const routes = {
  instances: instancesPage, create: createPage, alarms: alarmsPage, lbs: loadBalancersPage, host: () => hostPage(me), types: typesPage, images: imagesPage,
};

let firstRoute = true;

async function route() {
  // Focus goes to the content when the user moves between pages, not on the first load (the first Tab
  // then reaches the skip link).
  const moved = !firstRoute;
  firstRoute = false;
  leave();
  showError(null);
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const loggedIn = !!api.token();
  document.getElementById("nav").hidden = !loggedIn;
  document.getElementById("logout").hidden = !loggedIn;
  if (!loggedIn || parts[0] === "login") return loginPage();
  if (!me && !(await attempt(whoAmI))) { api.forget(); return loginPage(); }
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.section === (parts[0] || "instances")) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (parts[0] === "instances" && parts[1]) return instancePage(parts[1], me);
  (routes[parts[0]] || instancesPage)();
  if (moved) main().focus({ preventScroll: true });
}

document.getElementById("logout").addEventListener("click", () => { api.forget(); me = null; location.hash = "#/login"; route(); });
window.addEventListener("hashchange", route);
route();

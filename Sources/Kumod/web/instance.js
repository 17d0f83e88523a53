// One instance: its details and state history (live), start/stop/reboot/delete with confirmation, its
// monitoring charts with a choice of period, the serial console (xterm.js over kumod's console WebSocket),
// vCPU pinning and the address translation form.
import * as api from "/ui/api.js";
import { h, table, state, kv, showError, attempt, refresh, onLeave, every, mib, when, field } from "/ui/ui.js";

const CHARTS = [
  ["CPU (% of a host CPU)", ["cpu_percent", "cpu_wait_percent"]],
  ["Memory (MiB)", ["memory.rss_mib", "memory.guest_used_mib", "memory.guest_cached_mib"]],
  ["Disk (bytes/s)", ["disk.vda.read_bytes_per_s", "disk.vda.write_bytes_per_s"]],
  ["Network (bytes/s)", ["net.eth0.rx_bytes_per_s", "net.eth0.tx_bytes_per_s"]],
  ["VM exits (/s)", ["exits_per_s", "exits_per_s.io", "exits_per_s.mmio", "exits_per_s.hlt"]],
];
const SPANS = { 10: 3600, 60: 6 * 3600, 3600: 7 * 86400 };
const COLORS = ["#1f5fbf", "#c0392b", "#1b7a3a", "#8e44ad", "#d35400"];

export function instancePage(id, me) {
  const head = h("div"), details = h("div", { class: "card" }), body = h("div");
  const tabs = ["Overview", "Monitoring", "Console", "Screen", "CPUs"];
  let current = "Overview";
  const tabBar = h("div", { class: "tabs", role: "tablist" }, tabs.map((t) => h("button", {
    type: "button", role: "tab", "aria-selected": t === current ? "true" : "false", onclick: () => select(t),
  }, t)));
  document.getElementById("main").replaceChildren(head, tabBar, body);
  let inst = null;
  let stopTab = () => {};

  function select(t) {
    current = t;
    for (const b of tabBar.children) b.setAttribute("aria-selected", b.textContent === t ? "true" : "false");
    stopTab();
    stopTab = () => {};
    if (t === "Overview") body.replaceChildren(details);
    if (t === "Monitoring") stopTab = monitoring(body, id);
    if (t === "Console") stopTab = consoleTab(body, id, inst);
    if (t === "Screen") stopTab = screenTab(body, id, inst);
    if (t === "CPUs") cpusTab(body, id, inst);
  }
  onLeave(() => stopTab());

  const act = (what, method, path, ask) => h("button", {
    type: "button", class: what === "Delete" ? "danger" : "secondary", onclick: async () => {
      if (ask && !confirm(ask)) return;
      await attempt(() => api.call(method, path, method === "DELETE" ? undefined : {}));
      if (what === "Delete") location.hash = "#/instances";
    },
  }, what);

  every(3000, async () => {
    inst = await api.get("/v1/instances/" + encodeURIComponent(id));
    head.replaceChildren(h("h1", {}, inst.name || inst.id, " ", state(inst.state)),
      h("div", { class: "actions" },
        act("Start", "POST", `/v1/instances/${id}/start`),
        act("Stop", "POST", `/v1/instances/${id}/stop`, `Stop ${inst.name || id}? The guest gets the ACPI power button.`),
        act("Reboot", "POST", `/v1/instances/${id}/reboot`, `Reboot ${inst.name || id}?`),
        act("Delete", "DELETE", `/v1/instances/${id}`, `Delete ${inst.name || id}? Its disks go with it.`)));
    details.replaceChildren(kv([
      ["ID", inst.id], ["Name", inst.name], ["State", inst.state + (inst.state_reason ? " — " + inst.state_reason : "")],
      ["Type", `${inst.type} (${inst.vcpus} vCPU, ${mib(inst.memory_mib)})`], ["Image", inst.image], ["Tenant", inst.tenant],
      ["CPU policy", inst.cpu_policy], ["Memory dedup", inst.memory_dedup ? "on" : "off"], ["Key pair", inst.key_pair],
      ["Display", inst.display ? inst.display + " (the Screen tab)" : null],
      ["VMM pid", me.admin ? inst.pid : null], ["Created", when(inst.created_at)], ["Launched", when(inst.launched_at)],
    ]),
    h("h2", {}, "Network interfaces"),
    table(["NIC", "Network", "Address", "MAC", "Security groups", "Port forwards"], (inst.nics || []).map((n) => [
      "eth" + n.index, n.network_name || n.network, n.address, h("code", {}, n.mac), (n.security_groups || []).join(", "),
      (n.port_forwards || []).map((p) => `${p.host_port} → ${p.port}/${p.protocol || "tcp"}`).join(", ")])),
    h("h2", {}, "State history"),
    table(["When", "State", "Reason"], (inst.history || []).slice().reverse().map((s) => [when(s.at), state(s.state), s.reason])));
    if (current === "Overview" && body.firstChild !== details) body.replaceChildren(details);
  });
}

function monitoring(body, id) {
  const period = h("select", { "aria-label": "Period" },
    h("option", { value: 10 }, "10 s points (last hour)"), h("option", { value: 60 }, "1 min points (6 hours)"), h("option", { value: 3600 }, "1 h points (7 days)"));
  const grid = h("div", { class: "charts" });
  body.replaceChildren(h("div", { class: "filters" }, h("label", {}, "Period ", period), h("span", { class: "note" }, "Sampled by kumod from the VMM: no agent in the guest.")), grid);
  const charts = [];
  let available = null;
  async function draw() {
    if (!window.Chart) { showError({ message: "Chart.js did not load (/ui/lib/chart.js)" }); return; }
    if (!available) available = (await api.get(`/v1/instances/${id}/metrics`)).metrics;
    const p = Number(period.value), end = Math.floor(Date.now() / 1000), start = end - SPANS[p] + p;
    for (const [i, [title, series]] of CHARTS.entries()) {
      const present = series.filter((s) => available.includes(s));
      if (!present.length) continue;
      const data = await Promise.all(present.map((m) => api.get(`/v1/instances/${id}/metrics?metric=${encodeURIComponent(m)}&period=${p}&start=${start}&end=${end}`)));
      const datasets = data.map((d, k) => ({
        label: d.metric, data: d.points.map((pt) => ({ x: pt.time * 1000, y: pt.avg })), borderColor: COLORS[k], backgroundColor: COLORS[k],
        pointRadius: 1.5, borderWidth: 1.5, tension: 0.2,
      }));
      if (!charts[i]) {
        const canvas = h("canvas", { role: "img", "aria-label": title, "data-metric": present[0] });
        grid.append(h("div", { class: "chart" }, h("strong", {}, title), canvas));
        charts[i] = new window.Chart(canvas, {
          type: "line", data: { datasets },
          options: { animation: false, maintainAspectRatio: false, parsing: false,
            scales: { x: { type: "linear", ticks: { callback: (v) => new Date(v).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }), maxTicksLimit: 6 } },
              y: { beginAtZero: true } },
            plugins: { legend: { labels: { boxWidth: 10 } } } },
        });
        charts[i].canvas.dataset.points = String(datasets.reduce((n, d) => n + d.data.length, 0));
      } else {
        charts[i].data.datasets = datasets;
        charts[i].update();
        charts[i].canvas.dataset.points = String(datasets.reduce((n, d) => n + d.data.length, 0));
      }
    }
  }
  let stopped = false, timer = null;
  const loop = async () => { if (stopped) return; if (!document.hidden) await refresh(draw); if (!stopped) timer = setTimeout(loop, 10000); };
  period.addEventListener("change", () => attempt(draw));
  loop();
  return () => { stopped = true; clearTimeout(timer); for (const c of charts) c && c.destroy(); };
}

function consoleTab(body, id, inst) {
  const box = h("div", { class: "terminal", id: "terminal" });
  const status = h("span", { class: "note", "aria-live": "polite" });
  body.replaceChildren(h("div", { class: "filters" }, status, h("span", { class: "note" }, "The guest's serial console; what you type goes to it.")), box);
  if (!window.KumoXterm) { showError({ message: "xterm.js did not load (/ui/lib/xterm.js)" }); return () => {}; }
  if (inst && inst.state !== "running") { status.textContent = `The instance is ${inst.state}: its console is there while it runs.`; return () => {}; }
  const { Terminal, fit } = window.KumoXterm;
  const term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14, convertEol: false });
  term.open(box);
  const resize = () => { try { fit.fit(term); } catch (_) { /* not laid out yet */ } };
  resize();
  window.addEventListener("resize", resize);
  const ws = api.consoleSocket(id);
  const decoder = new TextDecoder();
  ws.onopen = () => { status.textContent = "connected"; term.focus(); };
  ws.onmessage = (ev) => { term.write(typeof ev.data === "string" ? ev.data : decoder.decode(new Uint8Array(ev.data), { stream: true })); };
  ws.onclose = (ev) => { status.textContent = "disconnected" + (ev.reason ? ": " + ev.reason : ""); };
  ws.onerror = () => { status.textContent = "the console could not be reached"; };
  term.on("data", (d) => { if (ws.readyState === WebSocket.OPEN) ws.send(new TextEncoder().encode(d)); });
  // For tests and screen readers: the screen's text.
  // (xterm.js 3.8, Debian's, has no public buffer API yet: its core's buffer.)
  window.kumoConsoleText = () => {
    const b = term._core.buffer;
    const lines = [];
    for (let i = 0; i < b.lines.length; i++) lines.push(b.translateBufferLineToString(i, true));
    return lines.join("\n");
  };
  return () => { window.removeEventListener("resize", resize); ws.close(); term.dispose(); };
}

// The instance's screen: noVNC (Debian's, as ES modules) over a one-time WebSocket URL from kumod.
function screenTab(body, id, inst) {
  const box = h("div", { class: "screen", id: "screen" });
  const status = h("span", { class: "note", "aria-live": "polite" });
  body.replaceChildren(h("div", { class: "filters" }, status, h("span", { class: "note" }, "The instance's screen over VNC: click it, then type.")), box);
  if (inst && !inst.display) { status.textContent = "This instance has no display (create one with a display, e.g. 1024x768)."; return () => {}; }
  if (inst && inst.state !== "running") { status.textContent = `The instance is ${inst.state}: its screen is there while it runs.`; return () => {}; }
  let rfb = null, stopped = false;
  (async () => {
    try {
      const { default: RFB } = await import("/ui/novnc/core/rfb.js");
      const t = await api.post(`/v1/instances/${encodeURIComponent(id)}/vnc`);
      if (stopped) return;
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      status.textContent = "connecting";
      rfb = new RFB(box, scheme + "//" + location.host + t.url);
      rfb.scaleViewport = true;
      rfb.addEventListener("connect", () => { status.textContent = "connected"; rfb.focus(); });
      rfb.addEventListener("disconnect", (e) => { status.textContent = "disconnected" + (e.detail && e.detail.clean ? "" : " (the connection was lost)"); });
      window.kumoScreen = rfb;
    } catch (e) {
      showError(e);
    }
  })();
  return () => { stopped = true; if (rfb) rfb.disconnect(); window.kumoScreen = null; };
}

function cpusTab(body, id, inst) {
  const holder = h("div"), result = h("div");
  const vcpu = h("input", { type: "number", min: 0, value: 0 }), cpus = h("input", { placeholder: "0-1,3 (empty: unpin)" });
  const pin = h("form", { class: "inline card", onsubmit: async (ev) => {
    ev.preventDefault();
    await attempt(async () => {
      await api.put(`/v1/instances/${id}/cpus`, { vcpus: [{ vcpu: Number(vcpu.value), cpus: cpus.value.trim() || null }] });
      await load();
    });
  } }, ...field("vCPU", vcpu), ...field("Host CPUs", cpus), h("button", { type: "submit" }, "Pin"));
  const gva = h("input", { placeholder: "0xffffffff81000000", required: true, size: 22 }), tv = h("input", { type: "number", min: 0, value: 0 });
  const translate = h("form", { class: "inline card", onsubmit: async (ev) => {
    ev.preventDefault();
    await attempt(async () => {
      const t = await api.get(`/v1/instances/${id}/translate?address=${encodeURIComponent(gva.value.trim())}&vcpu=${Number(tv.value)}`);
      result.replaceChildren(kv([
        ["Paging", `${t.paging.mode} (CR3 ${t.paging.cr3})`], ["Host paging", `${t.host_kvm}: ${t.host_two_dimensional_paging ? "EPT/NPT" : "shadow page tables"}`],
        ["GVA", t.gva], ["GPA", t.gpa], ["HVA", t.hva], ["HPA", t.hpa], ["Page size", t.page_size], ["Fault", t.fault], ["Note", t.note],
      ]), table(["Level", "Table", "Entry GPA", "Entry", "Present", "Writable", "User", "Leaf"], (t.levels || []).map((l) => [
        String(l.level), l.table, l.entry_gpa, l.entry, String(l.present), String(l.writable), String(l.user), String(l.leaf)])));
    });
  } }, ...field("Address (GVA)", gva), ...field("vCPU", tv), h("button", { type: "submit" }, "Translate"));
  async function load() {
    const c = await api.get(`/v1/instances/${id}/cpus`);
    holder.replaceChildren(table(["vCPU", "Pinned", "Allowed host CPUs"], c.vcpus.map((v) => [String(v.vcpu), v.pinned || "-", v.cpus_allowed || "-"])));
  }
  body.replaceChildren(h("h2", {}, "Where the vCPUs run"), holder, pin, h("h2", {}, "Address translation (GVA → GPA → HPA)"), translate, result);
  attempt(load);
}

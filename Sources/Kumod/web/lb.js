// Load balancers: each listener's backends and their health as kumod's checks found it (with the last
// failed probe's reason), refreshed; a balancer's events on demand. Made and changed with `kumo lb`.
import * as api from "/ui/api.js";
import { h, table, state, attempt, every, when } from "/ui/ui.js";

export function loadBalancersPage() {
  const holder = h("div"), events = h("div");
  document.getElementById("main").replaceChildren(h("h1", {}, "Load balancers"), holder, events,
    h("p", { class: "note" }, "Create them, their backend groups and listeners with `kumo lb` (docs/LB.md)."));
  every(3000, async () => {
    const r = await api.get("/v1/load-balancers");
    holder.replaceChildren(...(r.load_balancers.length === 0 ? [h("p", { class: "note" }, "No load balancers.")] : r.load_balancers.map((b) => {
      const groups = Object.fromEntries(b.backend_groups.map((g) => [g.id, g.name]));
      return h("section", { class: "card lb", "data-lb": b.id },
        h("h2", {}, `${b.name} — ${b.address}`, b.network ? ` (network ${b.network})` : " (host address)"),
        table(["Listener", "Scheduler", "Group", "Backend", "Weight", "Health", "Since", "Reason"], b.listeners.flatMap((l) =>
          (l.backends.length ? l.backends : [null]).map((e) => [
            `${l.protocol}/${l.port}`, l.scheduler + (l.persistence_seconds ? `, sticky ${l.persistence_seconds} s` : ""), groups[l.backend_group] || l.backend_group,
            e ? `${e.address}:${e.port}` : "-", e ? String(e.weight) : "-", e ? state(e.health) : "-", e ? when(e.since) : "-", e?.reason || ""]))),
        h("button", { type: "button", class: "secondary", onclick: () => showEvents(b) }, "Events"));
    })));
  });
  async function showEvents(b) {
    await attempt(async () => {
      const r = await api.get(`/v1/load-balancers/${encodeURIComponent(b.id)}/events`);
      events.replaceChildren(h("h2", {}, "Events of " + b.name), table(["At", "Message"], r.events.slice().reverse().map((e) => [when(e.at), e.message])));
    });
  }
}

// The host: how many of each type still fit and why (the placement formula with the overcommit in force),
// KSM's and the balloon's savings, the host's own charts, and the policies (admins change them).
import * as api from "/ui/api.js";
import { h, table, kv, attempt, every, mib, field } from "/ui/ui.js";

export function hostPage(me) {
  const cap = h("div", { class: "card" }), ksm = h("div", { class: "card" }), balloon = h("div", { class: "card" }), charts = h("div", { class: "card" });
  const policies = h("div");
  document.getElementById("main").replaceChildren(h("h1", {}, "Host"), h("h2", {}, "Capacity"), cap, h("h2", {}, "Now"), charts,
    h("h2", {}, "KSM (memory deduplication)"), ksm, h("h2", {}, "Balloon reclaim"), balloon, policies);
  every(10000, async () => {
    const [c, k, b] = await Promise.all([api.get("/v1/host/capacity"), api.get("/v1/host/ksm"), api.get("/v1/host/balloon")]);
    const p = c.policy;
    cap.replaceChildren(
      h("p", {}, `vCPUs: ${c.vcpus_used} of ${c.vcpus_total} allocated = ${c.shared_cpus.length} shared host CPUs × cpu_allocation_ratio ${p.cpu_allocation_ratio}`
        + ` (${c.logical_cpus} logical CPUs, ${p.reserved_cpus} reserved, ${c.dedicated_cpus.length} dedicated); overcommit now ${Number(c.vcpu_overcommit).toFixed(2)} vCPU per shared CPU.`),
      h("p", {}, `Memory: ${mib(c.memory_mib_used)} of ${mib(c.memory_mib_total)} allocated = (host ${mib(c.host_memory_mib)} − reserved ${mib(p.reserved_host_memory_mib)})`
        + ` × ram_allocation_ratio ${p.ram_allocation_ratio}.`),
      h("p", { class: "note" }, `Measured savings: KSM ${mib(c.ksm_saved_mib)}, balloons ${mib(c.balloon_reclaimed_mib)}.`),
      table(["Type", "More that fit", "Counting the savings"], Object.keys(c.fits).sort().map((t) => [t, String(c.fits[t]), String(c.fits_with_savings[t] ?? "-")]), [1, 2]));
    ksm.replaceChildren(kv([["Running", k.run === 1 ? "yes" : "no"], ["Pages shared / sharing", `${k.pages_shared} / ${k.pages_sharing}`],
      ["Saved", mib(Math.round(k.pages_sharing * 4 / 1024))], ["pages_to_scan", k.pages_to_scan], ["Trust domain", k.domain_tenant || "none"],
      ["Instances with dedup", (k.dedup_instances || []).join(", ") || "none"]]));
    balloon.replaceChildren(kv([["Policy", b.policy.enabled ? `on: inflate under ${b.policy.low_free_percent} % free, deflate over ${b.policy.high_free_percent} %` : "off"],
      ["Host free", b.host_free_percent === null || b.host_free_percent === undefined ? "-" : b.host_free_percent.toFixed(1) + " %"]]),
      table(["Instance", "Memory", "Target", "Balloon", "Guest free"], b.instances.map((i) => [i.instance, mib(i.memory_mib), mib(i.target_mib), mib(i.actual_mib),
        i.guest_free_mib === null || i.guest_free_mib === undefined ? "-" : mib(i.guest_free_mib)])));
    const [cpu, mem, running] = await Promise.all(["cpu_percent", "memory.used_mib", "instances.running"].map((m) => api.get(`/v1/host/metrics?metric=${m}&period=10`)));
    const last = (d) => (d.points.length ? d.points[d.points.length - 1].avg : null);
    charts.replaceChildren(kv([["CPU", last(cpu) === null ? "-" : last(cpu).toFixed(1) + " %"], ["Memory used", last(mem) === null ? "-" : mib(Math.round(last(mem)))],
      ["Instances running", last(running) === null ? "-" : String(last(running))]]));
  });
  if (me.admin) policies.replaceChildren(placementForm(), balloonForm());
}

function placementForm() {
  const cpu = h("input", { type: "number", step: "any", min: 0.1, max: 64 }), ram = h("input", { type: "number", step: "any", min: 0.1, max: 16 });
  const rmem = h("input", { type: "number", min: 0 }), rcpu = h("input", { type: "number", min: 0 });
  attempt(async () => {
    const c = await api.get("/v1/host/capacity");
    cpu.value = c.policy.cpu_allocation_ratio; ram.value = c.policy.ram_allocation_ratio;
    rmem.value = c.policy.reserved_host_memory_mib; rcpu.value = c.policy.reserved_cpus;
  });
  return [h("h2", {}, "Placement policy (admin)"), h("form", { class: "grid card", onsubmit: async (ev) => {
    ev.preventDefault();
    await attempt(() => api.put("/v1/host/placement", { cpu_allocation_ratio: Number(cpu.value), ram_allocation_ratio: Number(ram.value),
      reserved_host_memory_mib: Number(rmem.value), reserved_cpus: Number(rcpu.value) }));
  } }, ...field("CPU allocation ratio", cpu, "vCPUs per shared host CPU (overcommit)"), ...field("RAM allocation ratio", ram),
  ...field("Reserved memory (MiB)", rmem), ...field("Reserved CPUs", rcpu), h("div", { class: "full" }, h("button", { type: "submit" }, "Save")))];
}

function balloonForm() {
  const enabled = h("input", { type: "checkbox" }), low = h("input", { type: "number", step: "any" }), high = h("input", { type: "number", step: "any" });
  attempt(async () => {
    const b = await api.get("/v1/host/balloon");
    enabled.checked = b.policy.enabled; low.value = b.policy.low_free_percent; high.value = b.policy.high_free_percent;
  });
  return [h("h2", {}, "Balloon policy (admin)"), h("form", { class: "grid card", onsubmit: async (ev) => {
    ev.preventDefault();
    await attempt(() => api.put("/v1/host/balloon-policy", { enabled: enabled.checked, low_free_percent: Number(low.value), high_free_percent: Number(high.value) }));
  } }, ...field("Reclaim", enabled), ...field("Inflate under (% free)", low), ...field("Deflate over (% free)", high),
  h("div", { class: "full" }, h("button", { type: "submit" }, "Save")))];
}

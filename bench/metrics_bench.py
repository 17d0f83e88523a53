#!/usr/bin/env python3
"""kumod's monitoring (make bench), each figure against a baseline measured in the same run:
 - the sampler's CPU per instance per pass with N idle instances running (kumod's "kumod-metrics" thread,
   from its schedstat), against what the N kumo-vmm processes themselves spend answering those samples
   (their "control" threads): the part of the cost that is kumod's own.
 - a metrics query for a 31-day range (744 hourly points) and one for a day of minutes (1440 points),
   p50/p99, against GET /v1/instance-types (the HTTP, auth and store floor) under the same load.
Usage: metrics_bench.py --kumod BIN --vmm BIN --tiny ELF --work DIR [--instances N]  (prints JSON rows)"""
import argparse, http.client, json, os, shutil, time

import kumodproc

p = argparse.ArgumentParser()
for a in ("kumod", "vmm", "tiny", "work"):
    p.add_argument("--" + a, required=True)
p.add_argument("--instances", type=int, default=100)
p.add_argument("--passes", type=int, default=6)
p.add_argument("--queries", type=int, default=300)
args = p.parse_args()

data = os.path.join(args.work, "metrics-data")
kumod, port, H = kumodproc.start(args.kumod, args.vmm, data, os.path.join(args.work, "kumod-metrics.log"), "--metrics-interval", "10")


def thread_ns(pid, name):
    """Summed CPU time (ns, schedstat) of the process's threads called `name`."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            if open(f"/proc/{pid}/task/{t}/comm").read().strip() == name:
                total += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
        except OSError:
            pass
    return total


try:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(method, path, body=None, conn=None):
        conn = conn or c
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=H)
        r = conn.getresponse()
        d = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {d[:300]!r}")
        return json.loads(d) if d and r.getheader("Content-Type", "").startswith("application/json") else d

    # Room for N one-vCPU idle guests on a small host: overcommit as far as the placement allows.
    call("PUT", "/v1/host/placement", {"cpu_allocation_ratio": 64, "ram_allocation_ratio": 1, "reserved_host_memory_mib": 512, "reserved_cpus": 0})
    call("POST", "/v1/instance-types", {"name": "bench", "vcpus": 1, "memory_mib": 64})
    shutil.copy(args.tiny, os.path.join(data, "images", "tiny.elf"))
    call("POST", "/v1/images", {"name": "idle", "kernel": "tiny.elf", "cmdline": "console=ttyS0"})
    ids = []
    while len(ids) < args.instances:
        n = min(50, args.instances - len(ids))
        ids += [i["id"] for i in call("POST", "/v1/instances", {"type": "bench", "image": "idle", "count": n})["instances"]]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        running = [i for i in call("GET", "/v1/instances?limit=1000")["instances"] if i["state"] == "running"]
        if len(running) == len(ids):
            break
        time.sleep(1)
    pids = [i["pid"] for i in running]

    # The sampler over whole passes: from just after one to just after another.
    def passes():
        text = call("GET", "/metrics").decode()
        return int(next(l.split()[1] for l in text.splitlines() if l.startswith("kumo_monitoring_passes_total ")))
    first = passes()
    while passes() < first + 2:  # a pass that saw all of them
        time.sleep(0.5)
    start = passes()
    k0, v0 = thread_ns(kumod.pid, "kumod-metrics"), sum(thread_ns(p, "control") for p in pids)
    while passes() < start + args.passes:
        time.sleep(0.5)
    k1, v1 = thread_ns(kumod.pid, "kumod-metrics"), sum(thread_ns(p, "control") for p in pids)
    samples = args.passes * len(pids)
    print(json.dumps({"test": "sampler", "instances": len(pids), "passes": args.passes, "kumod_us_per_sample": (k1 - k0) / 1e3 / samples,
                      "vmm_us_per_sample": (v1 - v0) / 1e3 / samples}), flush=True)

    # Queries: a month of hours, a day of minutes, and the floor.
    now = int(time.time())
    month = f"/v1/instances/{ids[0]}/metrics?metric=cpu_percent&period=3600&start={now - 31 * 86400}&end={now}"
    day = f"/v1/instances/{ids[0]}/metrics?metric=memory.rss_mib&period=60&start={now - 1439 * 60}&end={now}"
    points = {"month": len(call("GET", month)["points"]), "day": len(call("GET", day)["points"])}

    def lat(path):
        out = []
        for _ in range(args.queries):
            t0 = time.perf_counter()
            call("GET", path)
            out.append((time.perf_counter() - t0) * 1000)
        out.sort()
        return {"p50": out[len(out) // 2], "p99": out[int(len(out) * 0.99)]}
    lat("/v1/instance-types")
    base = lat("/v1/instance-types")
    print(json.dumps({"test": "query", "month": lat(month), "day": lat(day), "baseline": base, "points": points}), flush=True)
finally:
    try:
        for i in call("GET", "/v1/instances?limit=1000")["instances"]:
            call("DELETE", "/v1/instances/" + i["id"])
    except Exception:  # noqa: BLE001 - kumod's own exit ends the rest
        pass
    kumodproc.stop(kumod, data)

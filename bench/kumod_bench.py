#!/usr/bin/env python3
"""kumod benchmarks (part of make bench), each against a baseline measured in the same run:
 - RunInstances -> VMM running: from the POST to the instance's kumo-vmm answering on its control socket
   (the guest's own boot excluded: the guest is an idle PVH stub), against spawning the same kumo-vmm
   with the same config by hand and waiting for the same answer.
 - DescribeInstances p50/p99 with 1000 instances recorded, under concurrent load (CLIENTS threads issuing
   requests back to back), against GET /v1/instance-types (the HTTP, auth and store floor) under the
   same load.
Usage: kumod_bench.py --kumod BIN --vmm BIN --tiny ELF --work DIR  (prints JSON rows)"""
import argparse, http.client, json, os, shutil, socket, sqlite3, statistics, subprocess, sys, threading, time, uuid

import kumodproc

p = argparse.ArgumentParser()
for a in ("kumod", "vmm", "tiny", "work"):
    p.add_argument("--" + a, required=True)
p.add_argument("--launches", type=int, default=10)
p.add_argument("--clients", type=int, default=4)
p.add_argument("--requests", type=int, default=400, help="per client")
args = p.parse_args()

data = os.path.join(args.work, "kumod-data")
# Networking off: the figures stay comparable with earlier runs (the API path alone).
kumod, port, H = kumodproc.start(args.kumod, args.vmm, data, os.path.join(args.work, "kumod.log"))
vmms = []
# The hand-spawned VMMs' jail joins an empty network namespace made beforehand, as kumod's VMMs join kumod's
# (which kumod passes as a descriptor the hand-spawned ones do not have).
netns = "kumo-bench-%d" % os.getpid()
subprocess.run(["ip", "netns", "add", netns], check=True)


def cleanup():
    for v in vmms:
        if v.poll() is None:
            v.kill(); v.wait()
    kumodproc.stop(kumod, data)
    subprocess.run(["ip", "netns", "del", netns])


try:

    def call(conn, method, path, body=None):
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=H)
        r = conn.getresponse()
        data = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data) if data else None

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    call(c, "POST", "/v1/instance-types", {"name": "bench", "vcpus": 1, "memory_mib": 64})
    # kumod registers image files from its images directory only.
    shutil.copy(args.tiny, os.path.join(data, "images", "tiny.elf"))
    image = call(c, "POST", "/v1/images", {"name": "idle", "kernel": "tiny.elf", "cmdline": "console=ttyS0"})

    def control_answers(path, deadline):
        """Polls a VMM's control socket until vm.info answers; the time it did, or None."""
        while time.monotonic() < deadline:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(1)
                    s.connect(path)
                    s.sendall(b'{"op":"vm.info"}\n')
                    if b'"ok":true' in s.recv(4096):
                        return time.monotonic()
            except OSError:
                pass
            time.sleep(0.001)
        return None

    # (1) RunInstances -> running VMM, alternating with the direct spawn.
    via, direct = [], []
    for i in range(args.launches):
        t0 = time.monotonic()
        inst = call(c, "POST", "/v1/instances", {"type": "bench", "image": "idle", "name": f"launch-{i}"})["instances"][0]
        work = os.path.join(data, "instances", inst["id"])
        t1 = control_answers(os.path.join(work, "control.sock"), t0 + 30)
        if t1 is None:
            raise RuntimeError(f"instance {inst['id']} never answered: {call(c, 'GET', '/v1/instances/' + inst['id'])}")
        via.append((t1 - t0) * 1000)
        cfg = json.load(open(os.path.join(work, "config.json")))
        # The same VMM and config, spawned by hand; the instance's own files (its seed) copied first: they go with it.
        base = os.path.join(args.work, f"direct-{i}")
        os.makedirs(base, exist_ok=True)
        for d in cfg.get("disks", []):
            if d["path"].startswith(work + "/"):
                shutil.copy(d["path"], os.path.join(base, os.path.basename(d["path"])))
                d["path"] = os.path.join(base, os.path.basename(d["path"]))
        call(c, "DELETE", "/v1/instances/" + inst["id"])
        cfg["serial"] = "file:" + os.path.join(base, "console.log")
        cfg["serial_socket"] = os.path.join(base, "console.sock")
        cfg["api_socket"] = os.path.join(base, "control.sock")
        if "vsock" in cfg:
            cfg["vsock"]["path"] = os.path.join(base, "v.sock")
        if "jail" in cfg:  # jailed as kumod's was, its jail mounted under this run's directory (the instance's is gone)
            cfg["jail"]["directory"] = base
            if "network_namespace" in cfg["jail"]:
                cfg["jail"]["network_namespace"] = "/run/netns/" + netns
        json.dump(cfg, open(os.path.join(base, "config.json"), "w"))
        t0 = time.monotonic()
        v = subprocess.Popen([args.vmm, "--config", os.path.join(base, "config.json")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        vmms.append(v)
        t1 = control_answers(cfg["api_socket"], t0 + 30)
        direct.append((t1 - t0) * 1000 if t1 else float("nan"))
        v.kill()
        if t1 is None:
            raise RuntimeError("the VMM spawned by hand never answered: " + v.communicate()[1][-300:])
        v.wait()
    print(json.dumps({"test": "run_to_running_ms", "kumod_median": statistics.median(via), "direct_median": statistics.median(direct),
                      "kumod": via, "direct": direct}), flush=True)

    # (2) 1000 instances recorded (stopped), written into kumod's database as RunInstances leaves them.
    db = sqlite3.connect(os.path.join(data, "kumod.sqlite"), timeout=30)
    tenant = db.execute("SELECT id FROM tenants WHERE name = 'admin'").fetchone()[0]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with db:
        for i in range(1000):
            rid, iid = "r-" + uuid.uuid4().hex[:17], "i-" + uuid.uuid4().hex[:17]
            db.execute("INSERT INTO reservations (id, tenant_id, client_token, request, created_at) VALUES (?, ?, NULL, '{}', ?)", (rid, tenant, now))
            db.execute("""INSERT INTO instances (id, name, tenant_id, reservation_id, type, vcpus, memory_mib, image_id, state,
                          state_reason, created_at, updated_at, work_dir) VALUES (?, ?, ?, ?, 'bench', 1, 64, ?, 'stopped',
                          'StopInstances', ?, ?, ?)""", (iid, f"web-{i}", tenant, rid, image["id"], now, now, os.path.join(data, "instances", iid)))
    db.close()
    total = call(c, "GET", "/v1/instances?limit=1000")
    recorded = len(total["instances"])

    def load(path):
        lat, errors = [], []
        def client():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for _ in range(args.requests):
                t0 = time.perf_counter()
                try:
                    call(conn, "GET", path)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(str(e)); conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30); continue
                lat.append((time.perf_counter() - t0) * 1000)
        ts = [threading.Thread(target=client) for _ in range(args.clients)]
        t0 = time.monotonic()
        for t in ts: t.start()
        for t in ts: t.join()
        lat.sort()
        return {"p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99)], "rps": len(lat) / (time.monotonic() - t0), "errors": len(errors)}

    load("/v1/instance-types")   # warm up
    base = load("/v1/instance-types")
    page = load("/v1/instances")                 # the default page: 100 instances
    full = load("/v1/instances?limit=1000")      # all 1000 in one page
    print(json.dumps({"test": "describe", "recorded": recorded, "clients": args.clients, "baseline": base,
                      "page100": page, "page1000": full}), flush=True)
finally:
    cleanup()

"""A kumod for a benchmark: started on a free loopback port with networking off (no bridge, tap or dnsmasq
outlives the run), and the admin token's headers once it answers."""
import http.client, os, socket, subprocess, time


def start(kumod, vmm, data, log, *extra):
    os.makedirs(data, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([kumod, "--data-dir", data, "--listen", f"127.0.0.1:{port}", "--vmm", vmm, "--stop-timeout", "1",
                             "--networking", "off", *extra], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    token_file = os.path.join(data, "admin.token")
    for _ in range(200):
        if os.path.exists(token_file) and os.path.getsize(token_file) > 0:
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/v1/health")
                break
            except OSError:
                pass
        time.sleep(0.05)
    headers = {"Authorization": "Bearer " + open(token_file).read().strip(), "Content-Type": "application/json"}
    return proc, port, headers


def stop(proc, data):
    """Ends the kumod, then every VMM it started (they outlive kumod by design, even one a DELETE was still
    stopping), then the cgroups kumod made for them: a benchmark leaves nothing running."""
    proc.terminate()
    proc.wait()
    # By command line: a deleted instance's directory (and its vmm.pid) may be gone while its VMM still stops.
    instances = os.path.join(data, "instances")
    pids, ids = [], set()
    for p in os.listdir("/proc"):
        try:
            argv = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        for a in argv:
            if a.startswith((instances + "/").encode()):
                pids.append(int(p))
                ids.add(a[len(instances) + 1:].split(b"/")[0].decode())
                break
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.05)
    for i in ids | set(os.listdir(instances) if os.path.isdir(instances) else []):
        for group in (f"/sys/fs/cgroup/cpu/kumo/{i}", f"/sys/fs/cgroup/kumo/{i}"):
            try:
                os.rmdir(group)
            except OSError:
                pass

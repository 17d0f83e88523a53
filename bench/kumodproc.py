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

#!/usr/bin/env python3
"""The load balancer's kernel data path against HAProxy and against no balancer (make bench; issue 19).

Network namespaces only: a client, and three backends that each answer a connection with a few bytes
and close it (bench/lb-conn.c). The host routes between them and carries, in the same run:
  - kumo: the nftables DNAT rule kumod's LoadBalancerRules writes for round robin over the three
    (`numgen inc mod 3 map { … }`, the text LoadBalancerPathTests.rulesAsText checks), on a listener address;
  - HAProxy (Debian's) in TCP mode, round robin over the same three, listening on the host's address;
  - direct: the client to one backend, routed, no balancer.
Each is hit with the same connections (connect, read the reply, close), alternating, medians of the
rounds. Prints one JSON line. Usage: lb_bench.py --conn BIN --work DIR"""
import argparse, json, os, random, statistics, subprocess, sys, time

p = argparse.ArgumentParser()
p.add_argument("--conn", required=True)
p.add_argument("--work", required=True)
p.add_argument("--connections", type=int, default=10000)
p.add_argument("--concurrency", type=int, default=4)
p.add_argument("--rounds", type=int, default=3)
args = p.parse_args()
tag = "%04x" % random.randrange(0x10000)
client, backends = "lbbc" + tag, ["lbb%d%s" % (i, tag) for i in (1, 2, 3)]
table = "kumolbbench" + tag
procs = []


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True)


routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
net = next((f"10.{n}" for n in range(78, 100) if f"10.{n}." not in routes), None) or sys.exit("lb_bench: no free 10.N (78-99)")


def link(ns, i):
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", ns + "h", "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "addr", "add", f"{net}.{i}.1/24", "dev", ns + "h")
    sh("ip", "link", "set", ns + "h", "up")
    sh("ip", "-n", ns, "addr", "add", f"{net}.{i}.2/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", f"{net}.{i}.1")


def hit(addr, port):
    out = subprocess.run(["ip", "netns", "exec", client, args.conn, "hit", addr, str(port), str(args.connections), str(args.concurrency)],
                         capture_output=True, text=True, check=True, timeout=600).stdout.split()
    rate, p50, p99, failures = float(out[0]), float(out[1]), float(out[2]), int(out[3])
    if failures:
        raise RuntimeError(f"{failures} of {args.connections} connections to {addr}:{port} failed")
    return rate, p50, p99


result = {}
try:
    link(client, 0)
    for i, b in enumerate(backends, 1):
        link(b, i)
        procs.append(subprocess.Popen(["ip", "netns", "exec", b, args.conn, "serve", f"{net}.{i}.2", "8080", f"backend{i}\n"]))
    targets = " , ".join(f"{i} : {net}.{i + 1}.2 . 8080" for i in range(3))
    rules = f"""table inet {table} {{
\tchain lb_l1 {{
\t\tmeta l4proto tcp dnat ip to numgen inc mod 3 map {{ {targets} }}
\t}}
\tchain lb_prerouting {{
\t\ttype nat hook prerouting priority dstnat - 1; policy accept;
\t\tip daddr {net}.100.1 tcp dport 80 jump lb_l1
\t}}
}}
"""
    path = os.path.join(args.work, "lb-bench.nft")
    open(path, "w").write(rules)
    sh("nft", "-f", path)
    cfg = os.path.join(args.work, "lb-bench-haproxy.cfg")
    open(cfg, "w").write(f"""global
\tmaxconn 8000
defaults
\tmode tcp
\ttimeout connect 2s
\ttimeout client 10s
\ttimeout server 10s
frontend lb
\tbind {net}.0.1:8081
\tdefault_backend pool
backend pool
\tbalance roundrobin
""" + "".join(f"\tserver b{i} {net}.{i}.2:8080\n" for i in (1, 2, 3)))
    procs.append(subprocess.Popen(["haproxy", "-f", cfg, "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)
    paths = {"kumo": (f"{net}.100.1", 80), "haproxy": (f"{net}.0.1", 8081), "direct": (f"{net}.1.2", 8080)}
    runs = {name: [] for name in paths}
    hit(*paths["direct"])  # warm-up: ARP, the page cache
    for _ in range(args.rounds):
        for name, (a, port) in paths.items():
            runs[name].append(hit(a, port))
    for name, rs in runs.items():
        result[name] = {"conns_per_s": statistics.median(r[0] for r in rs), "p50_us": statistics.median(r[1] for r in rs),
                        "p99_us": statistics.median(r[2] for r in rs)}
    result["connections"] = args.connections
    result["concurrency"] = args.concurrency
finally:
    for pr in procs:
        pr.kill()
        pr.wait()
    subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)
    for ns in [client] + backends:
        subprocess.run(["ip", "link", "del", ns + "h"], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
print(json.dumps(result))

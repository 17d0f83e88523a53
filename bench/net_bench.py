#!/usr/bin/env python3
"""Host <-> guest TCP over tap + virtio-net, and the NIC rate limiter's accuracy (make bench; issue 15).

One boot of the Kumo test kernel with two NICs on two taps: eth0 without a limit, eth1 held to
--limit-mbps each way (kumo-vmm's token buckets, as kumod sets them from an instance type's
bandwidth). The guest's "agent" scenario (guest/init/scenario.sh) takes commands on its serial console;
kumo-tcpblast (guest/tools) is the guest's end of each stream. The host measures every stream at its
end, past the first seconds (the token bucket starts full). Baseline, in this run: the same program
between the host and a network namespace over a veth pair (the kernel's path without a VMM).
Prints one JSON line; exits 1 with the reason when something cannot be set up."""
import argparse, json, os, random, socket, subprocess, sys, threading, time

p = argparse.ArgumentParser()
for a in ("vmm", "guest", "work"):
    p.add_argument("--" + a, required=True)
p.add_argument("--limit-mbps", type=int, default=4)
p.add_argument("--skip", type=float, default=3.0)
p.add_argument("--span", type=float, default=6.0)
args = p.parse_args()
kernel = os.path.join(args.guest, "test-kernel/vmlinux")
initrd = os.path.join(args.guest, "initramfs/initramfs.cpio")
blast = os.path.join(args.guest, "initramfs/root/usr/bin/kumo-tcpblast")
tag = "%04x" % random.randrange(0x10000)
taps, netns, veth = ["kbn%sa" % tag, "kbn%sb" % tag], "kumobench" + tag, "kbn%sv" % tag
made = []


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def free_net():
    """A 172.31.x.0/24 that no address or route of the host touches: its first three octets."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout + \
           subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    for _ in range(200):
        n = "172.31.%d" % random.randrange(256)
        if n + "." not in used:
            return n
    sys.exit("net_bench: no free 172.31.x.0/24")


def measure(conn, direction, skip=args.skip, span=args.span):
    """Mbit/s of one stream on conn between skip and skip + span s after its first byte, then closes it."""
    buf, first, start, counted = bytearray(1 << 16), None, None, 0
    conn.settimeout(15)
    try:
        while True:
            if direction == "read":
                n = conn.recv_into(buf)
            else:
                n = conn.send(buf)
            if n <= 0:
                return None
            now = time.monotonic()
            first = first or now
            if now - first >= skip:
                if start is None:
                    start = now
                else:
                    counted += n
                if now - first >= skip + span:
                    return counted * 8 / (now - start) / 1e6
    except OSError:
        return None
    finally:
        conn.close()


def into_host(listen_addr, start_sender):
    """A stream from the far end to listen_addr, measured here: start_sender(port) starts the far end."""
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((listen_addr, 0))
    l.listen(1)
    l.settimeout(60)
    start_sender(l.getsockname()[1])
    try:
        c, _ = l.accept()
    except OSError:
        return None
    finally:
        l.close()
    return measure(c, "read")


def out_of_host(addr, port):
    c = socket.create_connection((addr, port), timeout=30)
    return measure(c, "write")


class Console:
    """The guest's serial console: commands typed into its socket, answers read from its log."""

    def __init__(self, sock, log):
        self.log, self.seen = log, 0
        for _ in range(100):
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(sock)
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("net_bench: no console socket")

    def result(self, key, timeout=900):
        deadline = time.monotonic() + timeout
        needle = "kumo-result: %s=" % key
        while time.monotonic() < deadline:
            text = open(self.log, errors="replace").read() if os.path.exists(self.log) else ""
            i = text.find(needle, self.seen)
            if i >= 0 and "\n" in text[i:]:
                end = text.index("\n", i)
                self.seen = end
                return text[i + len(needle):end].strip()
            time.sleep(0.3)
        sys.exit("net_bench: no %s from the guest; console ends: %s" % (key, text[-600:]))

    def type(self, line):
        self.s.sendall((line + "\n").encode())


def cleanup():
    for link in made:
        subprocess.run(["ip", "link", "del", link], capture_output=True)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True)


out = {}
vmm = None
try:
    nets = [free_net(), None]
    nets[1] = free_net()
    while nets[1] == nets[0]:
        nets[1] = free_net()
    for t, n in zip(taps, nets):
        sh("ip", "tuntap", "add", "dev", t, "mode", "tap")
        made.append(t)
        sh("ip", "addr", "add", n + ".1/24", "dev", t)
        sh("ip", "link", "set", t, "up")
    # Baseline: host <-> namespace over a veth, the same kumo-tcpblast at the far end.
    vnet = free_net()
    sh("ip", "netns", "add", netns)
    sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    made.append(veth)
    sh("ip", "addr", "add", vnet + ".1/24", "dev", veth)
    sh("ip", "link", "set", veth, "up")
    sh("ip", "-n", netns, "addr", "add", vnet + ".2/24", "dev", "eth0")
    sh("ip", "-n", netns, "link", "set", "eth0", "up")
    secs = int(args.skip + args.span + 3)
    out["veth_tx"] = into_host(vnet + ".1", lambda port: subprocess.Popen(
        ["ip", "netns", "exec", netns, blast, "send", vnet + ".1", str(port), str(secs), blast], stdout=subprocess.DEVNULL))
    rx = subprocess.Popen(["ip", "netns", "exec", netns, blast, "recv", "5201"], stdout=subprocess.PIPE, text=True)
    rx.stdout.readline()  # recv_listening
    out["veth_rx"] = out_of_host(vnet + ".2", 5201)
    rx.wait(timeout=30)

    limit = args.limit_mbps * 1_000_000 // 8
    log, sock = os.path.join(args.work, "net-console.log"), os.path.join(args.work, "net-console.sock")
    cmdline = "console=ttyS0 panic=-1 ip=%s.2::%s.1:255.255.255.0::eth0:off kumo.scenario=agent" % (nets[0], nets[0])
    vmm = subprocess.Popen([args.vmm, "--kernel", kernel, "--initrd", initrd, "--memory", "256", "--vcpus", "1",
                            "--cmdline", cmdline, "--serial", "file:" + log, "--serial-socket", sock,
                            "--net", "tap=%s,mac=52:54:00:be:0c:01" % taps[0],
                            "--net", "tap=%s,mac=52:54:00:be:0c:02,tx-bandwidth=%d,rx-bandwidth=%d" % (taps[1], limit, limit)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    t0 = time.monotonic()
    con = Console(sock, log)
    if con.result("agent") != "ready":
        sys.exit("net_bench: the guest's agent did not start")
    out["boot_s"] = time.monotonic() - t0
    con.type("addr eth1 %s.2/24" % nets[1])
    if con.result("addr") != "eth1=%s.2/24" % nets[1]:
        sys.exit("net_bench: eth1 got no address")
    for i, key in ((0, "guest"), (1, "limited")):
        out[key + "_tx"] = into_host(nets[i] + ".1", lambda port: con.type("send %s.1 %d %d" % (nets[i], port, secs)))
        con.result("send", timeout=60)
        con.type("recv 5201")
        con.result("recv_listening", timeout=60)
        out[key + "_rx"] = out_of_host(nets[i] + ".2", 5201)
        con.result("recv", timeout=60)
    con.type("done")
    con.result("agent", timeout=30)
    out["limit_mbps"] = args.limit_mbps
    # Frames the guest wrote per tap, and their mean size (segmentation offload makes them large).
    for t, key in zip(taps, ("guest", "limited")):
        st = lambda f: int(open("/sys/class/net/%s/statistics/%s" % (t, f)).read())
        out[key + "_frames_from_guest"] = st("rx_packets")
        out[key + "_mean_frame_bytes"] = st("rx_bytes") // max(1, st("rx_packets"))
    print(json.dumps(out))
finally:
    if vmm and vmm.poll() is None:
        vmm.terminate()
        try:
            vmm.wait(timeout=10)
        except subprocess.TimeoutExpired:
            vmm.kill()
    cleanup()

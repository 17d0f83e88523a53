#!/usr/bin/env python3
"""The VNC server's cost (make bench, issue 18): kumo-vmm --display 1024x768 with the display guest
(Tests/guests/display.S: 's' scrolls its screen up a 16-row line and draws a new one, 'f' repaints all of
it). Two viewers take turns, each alone on the server: kumo's (Hextile, CopyRect, Raw: what noVNC asks for)
and the baseline (Raw only: the pixels themselves). For each: bytes and the VNC thread's CPU per full
screen (the first picture, and after each repaint) and per one-line scroll; then the VNC thread's CPU
over 10 s of an idle screen with a viewer waiting for an update, against 10 s with no viewer.
Prints one JSON line. Usage: vnc_bench.py --vmm BIN --work DIR --source Tests/guests/display.S"""
import argparse, json, os, socket, struct, subprocess, time

p = argparse.ArgumentParser()
for a in ("vmm", "work", "source"):
    p.add_argument("--" + a, required=True)
p.add_argument("--scrolls", type=int, default=8)
p.add_argument("--repaints", type=int, default=2)
args = p.parse_args()
W, H = 1024, 768


def vnc_cpu_ns(pid):
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            if open(f"/proc/{pid}/task/{t}/comm").read().startswith("vnc"):
                return int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
        except OSError:
            pass
    return 0


class Viewer:
    """A VNC viewer that counts bytes: 32 bpp, the encodings given; rectangles are parsed for their length."""

    def __init__(self, path, encodings):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(60)
        self.s.connect(path)
        self.read(12); self.s.sendall(b"RFB 003.008\n")
        self.read(self.read(1)[0]); self.s.sendall(b"\x01"); self.read(4); self.s.sendall(b"\x01")
        self.read(20); self.read(struct.unpack(">I", self.read(4))[0])
        self.s.sendall(struct.pack(">BxxxBBBBHHHBBBxxx", 0, 32, 24, 0, 1, 255, 255, 255, 0, 8, 16))
        self.s.sendall(struct.pack(">BxH", 2, len(encodings)) + b"".join(struct.pack(">i", e) for e in encodings))
        self.bytes = 0

    def read(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise EOFError("the server closed the connection")
            b += c
        return b

    def request(self, incremental):
        self.s.sendall(struct.pack(">BBHHHH", 3, 1 if incremental else 0, 0, 0, W, H))

    def key(self, ch):
        for down in (1, 0):
            self.s.sendall(struct.pack(">BBxxI", 4, down, ord(ch)))

    def update(self):
        """Reads one FramebufferUpdate; returns its size in bytes and its encodings."""
        _, _, n = struct.unpack(">BBH", self.read(4))
        size, encs = 4, []
        for _ in range(n):
            x, y, w, h, enc = struct.unpack(">HHHHi", self.read(12))
            size += 12
            encs.append(enc)
            if enc == 0:
                self.read(w * h * 4); size += w * h * 4
            elif enc == 1:
                self.read(4); size += 4
            elif enc == 5:
                size += self.hextile(w, h)
            else:
                raise ValueError(f"encoding {enc}")
        self.bytes += size
        return size, encs

    def hextile(self, w, h):
        size = 0
        for ty in range(0, h, 16):
            for tx in range(0, w, 16):
                tw, th = min(16, w - tx), min(16, h - ty)
                sub = self.read(1)[0]; size += 1
                if sub & 1:
                    self.read(tw * th * 4); size += tw * th * 4; continue
                if sub & 2:
                    self.read(4); size += 4
                if sub & 4:
                    self.read(4); size += 4
                if sub & 8:
                    n = self.read(1)[0]; size += 1
                    each = 6 if sub & 16 else 2
                    self.read(n * each); size += n * each
        return size


subprocess.run(["as", "--64", "-o", f"{args.work}/display.o", args.source], check=True)
subprocess.run(["ld", "-m", "elf_x86_64", "-Ttext=0x1000000", "-e", "_start", "-o", f"{args.work}/display.elf", f"{args.work}/display.o"], check=True)
sock, log = f"{args.work}/vnc-bench.sock", f"{args.work}/vnc-bench.log"
for f in (sock, log):
    if os.path.exists(f):
        os.unlink(f)  # an earlier run's "ready" must not count
vm = subprocess.Popen([args.vmm, "--kernel", f"{args.work}/display.elf", "--memory", "64", "--display", f"{W}x{H}", "--vnc-socket", sock,
                       "--serial", f"file:{log}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def serial():
    try:
        return open(log).read()
    except OSError:
        return ""


def wait_serial(text, count=1, timeout=120):
    deadline = time.monotonic() + timeout
    while serial().count(text) < count:
        if time.monotonic() > deadline or vm.poll() is not None:
            raise TimeoutError(f"the display guest did not print {text!r} ({count} times)")
        time.sleep(0.02)


def measured(v, incremental):
    """Asks for an update and reads it: (bytes, the VNC thread's CPU in us, encodings)."""
    c0 = vnc_cpu_ns(vm.pid)
    v.request(incremental)
    size, encs = v.update()
    return size, (vnc_cpu_ns(vm.pid) - c0) / 1000, encs


out = {"width": W, "height": H}
try:
    wait_serial("kumo display guest ready")
    releases = {"s": 0, "f": 0}
    for name, encodings in (("kumo", [5, 1, 0]), ("raw", [0])):
        v = Viewer(sock, encodings)
        full = [measured(v, False)]
        scrolls = []
        for _ in range(args.scrolls):
            v.key("s")
            releases["s"] += 1
            wait_serial("key 9f", releases["s"])  # the guest has scrolled and drawn the line
            scrolls.append(measured(v, True))
        for _ in range(args.repaints):
            v.key("f")
            releases["f"] += 1
            wait_serial("key a1", releases["f"], timeout=300)
            full.append(measured(v, True))
        mean = lambda xs, i: sum(x[i] for x in xs) / len(xs)
        out[name] = {"full_bytes": mean(full, 0), "full_cpu_us": mean(full, 1), "scroll_bytes": mean(scrolls, 0),
                     "scroll_cpu_us": mean(scrolls, 1), "scroll_copyrect": all(1 in s[2] for s in scrolls)}
        if name == "kumo":
            # Idle with a viewer waiting for an update, then with none.
            v.request(True)
            c0, t0 = vnc_cpu_ns(vm.pid), time.monotonic()
            time.sleep(10)
            out["idle_viewer_cpu_percent"] = (vnc_cpu_ns(vm.pid) - c0) / 1e9 / (time.monotonic() - t0) * 100
        v.s.close()
    time.sleep(0.5)
    c0, t0 = vnc_cpu_ns(vm.pid), time.monotonic()
    time.sleep(10)
    out["idle_alone_cpu_percent"] = (vnc_cpu_ns(vm.pid) - c0) / 1e9 / (time.monotonic() - t0) * 100
finally:
    vm.terminate()
    try:
        vm.wait(10)
    except subprocess.TimeoutExpired:
        vm.kill()
print(json.dumps(out))

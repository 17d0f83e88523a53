#!/usr/bin/env python3
"""KSM saving with 4 identical idle guests (make bench): four kumo-vmm --memory-dedup, 128 MiB each, each
holding the same 32 MiB (an initrd kumo-vmm writes into guest RAM) and an idle vCPU. ksmd runs with the
settings kumod's tuner uses when host memory is short (pages_to_scan 1000, sleep 10 ms); KSM's own
settings are put back afterwards. Prints one JSON line: pages merged, MiB saved, percent of guest RAM
and of the ideal (3 of the 4 copies), seconds to converge (95 % of the final saving).
Usage: ksm_bench.py --vmm BIN --tiny ELF --work DIR"""
import argparse, json, os, random, subprocess, time

p = argparse.ArgumentParser()
for a in ("vmm", "tiny", "work"):
    p.add_argument("--" + a, required=True)
args = p.parse_args()
ksm = "/sys/kernel/mm/ksm/"
if not os.path.exists(ksm + "run"):
    print(json.dumps({"test": "ksm", "skipped": "no KSM in this kernel"})); raise SystemExit
def rd(n): return open(ksm + n).read().strip()
def wr(n, v): open(ksm + n, "w").write(str(v))
saved = {n: rd(n) for n in ("run", "pages_to_scan", "sleep_millisecs")}
fill = os.path.join(args.work, "ksm-fill.bin")
rng = random.Random(42)
with open(fill, "wb") as f:
    f.write(rng.randbytes(32 << 20))
vms = []
try:
    wr("run", 0)
    for i in range(4):
        vms.append(subprocess.Popen([args.vmm, "--kernel", args.tiny, "--initrd", fill, "--memory", "128", "--serial", "none",
                                     "--memory-dedup"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)
    base_sharing = int(rd("pages_sharing"))
    wr("pages_to_scan", 1000); wr("sleep_millisecs", 10); wr("run", 1)
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < 120:
        merged = 0
        for v in vms:
            for line in open(f"/proc/{v.pid}/ksm_stat"):
                k, _, val = line.partition(" ")
                if k == "ksm_merging_pages":
                    merged += int(val)
        samples.append((time.monotonic() - t0, merged, int(rd("pages_sharing")) - base_sharing))
        if len(samples) > 6 and samples[-1][1] == samples[-7][1] and merged > 0:
            break   # no change for 3 s
        time.sleep(0.5)
    final_sharing = samples[-1][2]
    converge = next((t for t, _, s in samples if s >= 0.95 * final_sharing), samples[-1][0])
    ideal = 3 * (32 << 20) // 4096
    print(json.dumps({"test": "ksm", "vms": 4, "guest_mib": 4 * 128, "merging_pages": samples[-1][1],
                      "saved_mib": final_sharing * 4096 / (1 << 20), "percent_of_guest_ram": 100 * final_sharing * 4096 / (4 * 128 << 20),
                      "percent_of_ideal": 100 * final_sharing / ideal, "converge_s": converge}), flush=True)
finally:
    for v in vms:
        v.kill(); v.wait()
    for n in ("pages_to_scan", "sleep_millisecs", "run"):
        wr(n, saved[n])

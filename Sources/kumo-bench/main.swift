// kumo-bench: measurements `make bench` takes of kumo-vmm's own machinery.
//   kumo-bench exits N [sandboxed DIR]
//                         the userspace exit round trip (ns per exit) on the same tiny guest as
//                         bench/exit-loop.c: N × `out %al, $0x80` in long mode, ring 0; sandboxed: as
//                         kumo-vmm runs it, in a jail (its mount point under DIR) with the vCPU's seccomp filter.
//   kumo-bench blk FILE    virtio-blk back end, driven by the host-side test driver through the real
//                         transport and queues: 4 KiB random reads (IOPS) and 1 MiB sequential reads
//                         (MiB/s), each next to pread(2) on the same file and offsets in the same run.
//   kumo-bench overlay FILE, kumo-bench qcow2-writer OVERLAY: see Overlay.swift.
import CKumoSys
import DiskImage
import VMM
import VMMContract
import Virtio
import VirtioTestDriver
import KVM
import SystemKit
import Boot
#if canImport(Glibc)
import Glibc
#endif

let args = Array(CommandLine.arguments.dropFirst())
if (2...3).contains(args.count), args[0] == "blk" {
    guard let format = DiskFormat(rawValue: args.count == 3 ? args[2] : "raw") else { eprint("kumo-bench: blk FILE [raw|qcow2]"); exit(2) }
    blockBench(args[1], format: format)
    exit(0)
}
if args.count == 2, args[0] == "overlay" {
    overlayBench(args[1])
    exit(0)
}
if args.count == 2, args[0] == "qcow2-writer" { qcow2Writer(args[1]) }
guard args.count == 2 || (args.count == 4 && args[2] == "sandboxed"), args[0] == "exits", let n = UInt32(args[1]) else {
    eprint("usage: kumo-bench exits N [sandboxed DIR] | kumo-bench blk FILE [raw|qcow2] | kumo-bench overlay FILE | kumo-bench qcow2-writer OVERLAY")
    exit(2)
}
do {
    let kvm = try KVMSystem()
    if args.count == 4 {
        try Sandbox.prepare(.enforce)
        try Jail.enter(
            JailConfig(uid: 3_065_000, gid: 3_065_000, directory: args[3]),
            limits: csys_jail_limits(open_files: 1024, file_size: 1 << 30, address_space: 8 << 30, threads: 64))
    }
    var o = Machine.Options(memorySize: 4 << 20, vcpus: 1)
    o.irqchip = false
    let m = try Machine(o, kvm: kvm, serialSink: nil)
    let code: [UInt8] = [
        0xB9, UInt8(n & 0xFF), UInt8((n >> 8) & 0xFF), UInt8((n >> 16) & 0xFF), UInt8(n >> 24),
        0xE6, 0x80, 0xFF, 0xC9, 0x75, 0xFA, 0xF4,
    ]
    try m.memory.write(code, at: 0x100000)
    try BootLoader.writePageTables(m.memory)
    let s = BootLoader.segments(longMode: true)
    try m.setBootState(
        BootCPUState(
            rip: 0x100000, rsp: 0x80000, cr0: 0x8005_0033, cr3: Layout.pml4, cr4: 0x20, efer: 0x500,
            code: s.code, data: s.data, tss: s.tss, gdtLimit: 39), vcpu: 0)
    try m.start()
    if args.count == 4 { try Sandbox.install("main") }
    let outcome = m.wait()
    let first = m.firstRunNanos.load(ordering: .acquiring)
    let end = monotonicNanos()
    let exits = m.counters[0].ioOut
    guard outcome == .halted(vcpu: 0), exits == UInt64(n) else {
        eprint("kumo-bench: unexpected outcome \(outcome), \(exits) exits")
        exit(1)
    }
    let perExit = Double(end - first) / Double(exits)
    print((perExit * 10).rounded() / 10)
} catch {
    eprint("kumo-bench: \(error)")
    exit(1)
}

/// Random 4 KiB and sequential 1 MiB reads through virtio-blk vs pread, printed as JSON lines. With a
/// qcow2 image the pread side reads the file's own bytes (a baseline for the raw run only).
func blockBench(_ path: String, format: DiskFormat) {
    do {
        let blk = try VirtioBlock(path: path, readOnly: true, format: format)
        let d = try VirtioTestDriver(device: blk, memorySize: 256 << 20)
        guard d.negotiate() else { eprint("kumo-bench: negotiation failed"); exit(1) }
        let q = d.setupQueue(0, size: 256)
        d.driverOK()
        let sectors = blk.sectors
        let fd = open(path, O_RDONLY)
        var rng = SystemRandomNumberGenerator()
        func now() -> UInt64 { monotonicNanos() }
        // Request headers, data and status buffers, allocated once.
        let depth = 64
        var allocated: [Int: ([UInt64], [UInt64], [UInt64])] = [:]
        func buffers(_ block: Int) -> ([UInt64], [UInt64], [UInt64]) {
            if let b = allocated[block] { return b }
            let b = (
                (0..<depth).map { _ in d.alloc(16) }, (0..<depth).map { _ in d.alloc(UInt64(block), align: 4096) },
                (0..<depth).map { _ in d.alloc(1) }
            )
            allocated[block] = b
            return b
        }
        /// Nanoseconds for `count` reads: the device's own time (inside the kick: pop, validation, pread,
        /// used ring, interrupt), the same with the test driver's work around it (filling descriptors,
        /// reaping used entries; a guest does that on its vCPU, beside the device's worker), and pread.
        func run(_ block: Int, _ count: Int, random: Bool, virtioFirst: Bool = true) -> (device: Double, withDriver: Double, pread: Double) {
            let perBlock = UInt64(block / 512)
            let blocks = sectors / perBlock
            // Each side gets its own offsets from the same distribution (sequential runs start half the
            // file apart), so neither runs on caches (page-cache tree, CPU) the other has just warmed.
            func pick(start: UInt64) -> [UInt64] {
                (0..<count).map { i in
                    (random ? UInt64.random(in: 0..<blocks, using: &rng) : (start + UInt64(i)) % blocks) * perBlock
                }
            }
            let offsets = pick(start: 0)
            let baseline = pick(start: blocks / 2)
            let (hdrs, datas, stats) = buffers(block)
            // The baseline reads into the same rotation of buffers (same cache footprint).
            let hosts = datas.map { d.memory.hostPointer($0, length: UInt64(block))! }
            func preadSide() -> Double {
                let t1 = now()
                for (k, o) in baseline.enumerated() { _ = pread(fd, hosts[k % depth], block, off_t(o * 512)) }
                return Double(now() - t1)
            }
            let preadFirst = virtioFirst ? 0 : preadSide()
            let t0 = now()
            var deviceNs: UInt64 = 0
            var i = 0
            while i < count {
                let batch = min(depth, count - i)
                for k in 0..<batch {
                    try! d.memory.store(UInt32(0), at: hdrs[k])
                    try! d.memory.store(offsets[i + k], at: hdrs[k] + 8)
                    q.submit([
                        Buffer(hdrs[k], 16, writable: false), Buffer(datas[k], UInt32(block), writable: true),
                        Buffer(stats[k], 1, writable: true),
                    ])
                }
                let k0 = now()
                q.kick()  // the test driver's notify runs the device synchronously
                deviceNs += now() - k0
                var got = 0
                while q.popUsed() != nil { got += 1 }
                if got != batch { eprint("kumo-bench: \(got) of \(batch) completed"); exit(1) }
                i += batch
            }
            let virtioNs = Double(now() - t0)
            let preadNs = virtioFirst ? preadSide() : preadFirst
            return (Double(deviceNs), virtioNs, preadNs)
        }
        /// `rounds` runs of `count / rounds` reads, the two sides taking turns (neither always runs
        /// first, on caches the other left), summed.
        func rounds(_ block: Int, _ count: Int, random: Bool, rounds: Int = 4) -> (device: Double, withDriver: Double, pread: Double) {
            var sum = (device: 0.0, withDriver: 0.0, pread: 0.0)
            for round in 0..<rounds {
                let r = run(block, count / rounds, random: random, virtioFirst: round % 2 == 0)
                sum.device += r.device; sum.withDriver += r.withDriver; sum.pread += r.pread
            }
            return sum
        }
        _ = run(4096, 20000, random: true)  // warm the page cache and the code
        let r4 = rounds(4096, 200_000, random: true)
        print(
            "{\"test\": \"randread4k\", \"virtio_iops\": \(Int(200_000 / (r4.device / 1e9))), \"with_driver_iops\": "
                + "\(Int(200_000 / (r4.withDriver / 1e9))), \"pread_iops\": \(Int(200_000 / (r4.pread / 1e9)))}"
        )
        let n = 2000
        // Warm up the 1 MiB side too: its 64 data buffers are new guest memory, and without this the
        // first round (virtio first) paid their first-touch page faults alone, a bias against virtio that
        // grew when the host had fewer free huge pages (inside a full make bench).
        _ = run(1 << 20, 128, random: false)
        let r1 = rounds(1 << 20, n, random: false)
        print(
            "{\"test\": \"seqread1m\", \"virtio_mibs\": \(Int(Double(n) / (r1.device / 1e9))), \"with_driver_mibs\": "
                + "\(Int(Double(n) / (r1.withDriver / 1e9))), \"pread_mibs\": \(Int(Double(n) / (r1.pread / 1e9)))}"
        )
        close(fd)
    } catch {
        eprint("kumo-bench: \(error)")
        exit(1)
    }
}

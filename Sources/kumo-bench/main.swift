// kumo-bench: measurements `make bench` takes of kumo-vmm's own machinery.
//   kumo-bench exits N    the userspace exit round trip (ns per exit) on the same tiny guest as
//                         bench/exit-loop.c: N × `out %al, $0x80` in long mode, ring 0.
import VMM
import KVM
import Boot
#if canImport(Glibc)
import Glibc
#endif

let args = Array(CommandLine.arguments.dropFirst())
guard args.count == 2, args[0] == "exits", let n = UInt32(args[1]) else {
    eprint("usage: kumo-bench exits N")
    exit(2)
}
do {
    let kvm = try KVMSystem()
    var o = Machine.Options(memorySize: 4 << 20, vcpus: 1)
    o.irqchip = false
    let m = try Machine(o, kvm: kvm, serialSink: nil)
    let code: [UInt8] = [0xB9, UInt8(n & 0xFF), UInt8((n >> 8) & 0xFF), UInt8((n >> 16) & 0xFF), UInt8(n >> 24),
                         0xE6, 0x80, 0xFF, 0xC9, 0x75, 0xFA, 0xF4]
    try m.memory.write(code, at: 0x100000)
    try BootLoader.writePageTables(m.memory)
    let s = BootLoader.segments(longMode: true)
    try m.setBootState(BootCPUState(rip: 0x100000, rsp: 0x80000, cr0: 0x8005_0033, cr3: Layout.pml4, cr4: 0x20, efer: 0x500,
                                    code: s.code, data: s.data, tss: s.tss, gdtLimit: 39), vcpu: 0)
    try m.start()
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

import Foundation
import Testing
import Synchronization
@testable import VMM
import KVM
import SystemKit
import Boot
import Devices
import GuestMemory

final class CaptureSink: SerialSink, @unchecked Sendable {
    let bytes = Mutex<[UInt8]>([])
    func write(_ byte: UInt8) { bytes.withLock { $0.append(byte) } }
    var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
}

enum Harness {
    static let kvmAvailable = access("/dev/kvm", R_OK | W_OK) == 0
    static let host = HostKVM.detect()

    /// Assembles GNU-as source into a flat binary linked at `origin`.
    static func assemble(_ source: String, bits: Int = 64, origin: UInt64 = 0x100000) throws -> [UInt8] {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-asm-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let src = dir.appendingPathComponent("g.S"), obj = dir.appendingPathComponent("g.o"), bin = dir.appendingPathComponent("g.bin")
        try ((bits == 64 ? ".code64\n" : ".code32\n") + source + "\n").write(to: src, atomically: true, encoding: .utf8)
        try run("/usr/bin/as", [bits == 64 ? "--64" : "--32", "-o", obj.path, src.path])
        try run(
            "/usr/bin/ld",
            [
                "-m", bits == 64 ? "elf_x86_64" : "elf_i386", "-Ttext=0x" + String(origin, radix: 16),
                "--oformat", "binary", "-e", "0", "-o", bin.path, obj.path,
            ])
        return Array(try Data(contentsOf: bin))
    }

    static func run(_ tool: String, _ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        let err = Pipe()
        p.standardError = err
        try p.run()
        p.waitUntilExit()
        if p.terminationStatus != 0 {
            let msg = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw HarnessError(description: "\(tool) failed: \(msg)")
        }
    }

    struct HarnessError: Error, CustomStringConvertible { let description: String }

    /// A machine with no in-kernel irqchip (so HLT exits), `code` at 1 MiB, long mode, identity-mapped.
    static func longModeMachine(
        _ code: [UInt8], vcpus: Int = 1, entries: [UInt64]? = nil, memory: UInt64 = 16 << 20,
        fallback: Bool = true
    ) throws -> (Machine, CaptureSink) {
        let kvm = try KVMSystem()
        var o = Machine.Options(memorySize: memory, vcpus: vcpus)
        o.irqchip = false
        o.emulationFallback = fallback
        o.cpuid = host.emulatesGuestKernel ? CPUTemplate.nested.modifiers : []
        let sink = CaptureSink()
        let m = try Machine(o, kvm: kvm, serialSink: sink)
        try m.memory.write(code, at: 0x100000)
        try BootLoader.writePageTables(m.memory)
        for (i, d) in BootLoader.gdt(longMode: true).enumerated() { try m.memory.store(d, at: Layout.gdt + UInt64(i) * 8) }
        let s = BootLoader.segments(longMode: true)
        for i in 0..<vcpus {
            let cpu = BootCPUState(
                rip: entries?[i] ?? 0x100000, rsp: 0x80000 - UInt64(i) * 0x1000, cr0: 0x8005_0033,
                cr3: Layout.pml4, cr4: 0x20 | 0x200 | 0x400, efer: 0x500,
                code: s.code, data: s.data, tss: s.tss, gdtLimit: 39, idtBase: 0x3000, idtLimit: 0x0FFF)
            try m.setBootState(cpu, vcpu: i)
        }
        return (m, sink)
    }

    /// Writes a 64-bit interrupt gate for `vector` → `handler` into the IDT at 0x3000.
    static func setGate(_ m: Machine, vector: Int, handler: UInt64) throws {
        var lo: UInt64 = handler & 0xFFFF
        lo |= UInt64(0x10) << 16  // code selector
        lo |= UInt64(0x8E) << 40  // present, DPL0, 64-bit interrupt gate
        lo |= ((handler >> 16) & 0xFFFF) << 48
        try m.memory.store(lo, at: 0x3000 + UInt64(vector) * 16)
        try m.memory.store(handler >> 32, at: 0x3000 + UInt64(vector) * 16 + 8)
    }

    /// Runs until the machine stops, with a watchdog so a broken guest fails the test instead of hanging it.
    static func run(_ m: Machine, timeout: Double = 20) throws -> MachineOutcome {
        try m.start()
        let watchdog = Watchdog(try EventFD())
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout) { watchdog.fire() }
        let outcome = m.wait(extraFD: watchdog.event.fd.raw)
        watchdog.done.store(true, ordering: .relaxed)
        return outcome
    }
}

final class Watchdog: Sendable {
    let event: EventFD
    let done = Atomic<Bool>(false)
    init(_ e: EventFD) { event = e }
    func fire() { if !done.load(ordering: .relaxed) { event.signal() } }
}

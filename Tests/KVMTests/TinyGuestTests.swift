import Testing
import TestSupport
@testable import VMM
import KVM
import SystemKit
import Boot
import Devices
import GuestMemory

@Suite(.ownThreads, .enabled(if: Harness.kvmAvailable, "needs /dev/kvm"))
struct TinyGuestTests {
    @Test func portIOReachesTheUART() throws {
        let code = try Harness.assemble(
            """
            mov $0x3f8, %dx
            lea msg(%rip), %rsi
            mov $5, %rcx
            rep outsb            # one exit with count 5
            mov $0x3fd, %dx
            in %dx, %al          # LSR: 0x60
            mov $0x3f8, %dx
            out %al, %dx
            hlt
            msg: .ascii "hello"
            """)
        let (m, sink) = try Harness.longModeMachine(code)
        #expect(try Harness.run(m) == .halted(vcpu: 0))
        #expect(sink.text == "hello`")
        #expect(m.counters[0].ioOut >= 2 && m.counters[0].ioIn == 1)
        #expect(m.counters[0].value(5) == 1)  // one HLT exit
    }

    @Test func mmioWriteIsTheBootMarker() throws {
        let code = try Harness.assemble(
            """
            movl $0xc0000000, %edi
            movb $7, (%rdi)        # wrong value: ignored
            movb (%rdi), %al       # MMIO read
            movb $123, (%rdi)
            hlt
            """)
        let (m, _) = try Harness.longModeMachine(code)
        var marker: UInt64? = nil
        try m.start()
        let outcome = m.wait { marker = $0 }
        #expect(outcome == .halted(vcpu: 0))
        #expect(marker != nil && marker! >= m.firstRunNanos.load(ordering: .relaxed))
        #expect(m.counters[0].mmioWrite == 2 && m.counters[0].mmioRead == 1)
    }

    @Test func twoVCPUsRunOnTheirOwnThreads() throws {
        let code = try Harness.assemble(
            """
            cpu0:
              mov $0x3f8, %dx
              mov $'A', %al
              out %al, %dx
              hlt
            .org 0x40
            cpu1:
              mov $0x3f8, %dx
              mov $'B', %al
              out %al, %dx
              hlt
            """)
        let (m, sink) = try Harness.longModeMachine(code, vcpus: 2, entries: [0x100000, 0x100040])
        #expect(try Harness.run(m) != .stopped)
        #expect(sink.text.sorted() == ["A", "B"])
        #expect(m.counters[0].ioOut == 1 && m.counters[1].ioOut == 1)
    }

    @Test func exceptionIsDeliveredToTheGuestIDT() throws {
        let code = try Harness.assemble(
            """
            ud2
            hlt                      # not reached
            .org 0x100
            ud_handler:
              mov $0x3f8, %dx
              mov $'U', %al
              out %al, %dx
              hlt
            """)
        let (m, sink) = try Harness.longModeMachine(code)
        try Harness.setGate(m, vector: 6, handler: 0x100100)
        #expect(try Harness.run(m) == .halted(vcpu: 0))
        #expect(sink.text == "U")
    }

    @Test func int3FwaitAndMXCSRRunEvenWhereKVMCannotEmulateThem() throws {
        let code = try Harness.assemble(
            """
            int3                     # → #BP handler, which returns after the int3
            fwait
            ldmxcsr newcsr(%rip)
            movl $0x2000, %edi
            stmxcsr (%rdi)
            mov $0x3f8, %dx
            mov $'R', %al
            out %al, %dx
            hlt
            newcsr: .long 0x1fc0
            .org 0x100
            bp_handler:
              mov $0x3f8, %dx
              mov $'B', %al
              out %al, %dx
              iretq
            """)
        let (m, sink) = try Harness.longModeMachine(code)
        try Harness.setGate(m, vector: 3, handler: 0x100100)
        #expect(try Harness.run(m) == .halted(vcpu: 0))
        #expect(sink.text == "BR")
        let stored = try m.memory.load(UInt32.self, at: 0x2000)
        #expect(try m.vcpus[0].getMXCSR() == 0x1FC0)
        #expect(stored == 0x1FC0, "stmxcsr stored 0x\(String(stored, radix: 16))")
        if Harness.host.emulatesGuestKernel {
            // Here KVM's emulator fails on each of them: kumo-vmm's fallback ran them.
            #expect(m.counters[0].fallback(0) == 1 && m.counters[0].fallback(1) == 1)
            #expect(m.counters[0].fallback(2) == 1 && m.counters[0].fallback(3) == 1)
        }
    }

    @Test(.enabled(if: Harness.host.emulatesGuestKernel, "only hosts whose KVM emulates guest kernel code fail on popcnt"))
    func unhandledEmulationFailureIsReported() throws {
        let code = try Harness.assemble(
            """
            popcnt %rdi, %rax
            hlt
            """)
        let (m, _) = try Harness.longModeMachine(code)
        guard case let .fatal(msg) = try Harness.run(m) else { Issue.record("expected a fatal outcome"); return }
        #expect(msg.contains("RIP 0x100000"))
        #expect(msg.contains("GPA 0x100000"))
        #expect(msg.contains("instruction bytes [f3 48 0f b8 c7"))
        #expect(msg.contains("rip 0000000000100000"))
    }

    @Test func acpiPowerOffAndI8042Reset() throws {
        let off = try Harness.assemble(
            """
            mov $0x600, %dx
            mov $0x34, %al       # SLP_TYP 5 | SLP_EN
            out %al, %dx
            hlt
            """)
        let (m1, _) = try Harness.longModeMachine(off)
        #expect(try Harness.run(m1) == .powerOff)
        let reset = try Harness.assemble(
            """
            mov $0xfe, %al
            out %al, $0x64
            hlt
            """)
        let (m2, _) = try Harness.longModeMachine(reset)
        #expect(try Harness.run(m2) == .reset(.i8042, vcpu: 0))
    }
}

@Suite(.ownThreads, .enabled(if: Harness.kvmAvailable, "needs /dev/kvm"))
struct BootProtocolTests {
    /// Wraps flat code in an ELF the loader accepts, with or without the PVH note.
    static func elf(_ code: [UInt8], pvh: Bool) -> [UInt8] { TinyKernel.elf(code, pvh: pvh) }

    static func bootTiny(_ elf: [UInt8], proto: BootProtocol) throws -> (MachineOutcome, String) {
        let kvm = try KVMSystem()
        var o = Machine.Options(memorySize: 64 << 20, vcpus: 1)
        o.irqchip = false
        let sink = CaptureSink()
        let m = try Machine(o, kvm: kvm, serialSink: sink)
        let r = try BootLoader.load(
            BootSpec(
                kernel: try KernelImage(bytes: elf), initrd: nil, cmdline: "console=ttyS0",
                memorySize: 64 << 20, vcpus: 1, bootProtocol: proto), into: m.memory, acpi: ACPIConfig(vcpus: 1))
        try m.setBootState(r.cpu, vcpu: 0)
        return (try Harness.run(m), sink.text)
    }

    @Test func pvhEntryGetsStartInfoIn32BitMode() throws {
        let code = try Harness.assemble(
            """
            cmpl $0x336ec578, (%ebx)     # hvm_start_info magic
            jne 1f
            mov 24(%ebx), %esi           # cmdline_paddr
            mov $0x3f8, %dx
            mov $8, %ecx
            rep outsb                    # prints "console="
            1: hlt
            """, bits: 32, origin: 0x100_0000)
        let (outcome, text) = try Self.bootTiny(Self.elf(code, pvh: true), proto: .auto)
        #expect(outcome == .halted(vcpu: 0))
        #expect(text == "console=")
    }

    @Test func linux64EntryGetsBootParamsInLongMode() throws {
        let code = try Harness.assemble(
            """
            cmpl $0x53726448, 0x202(%rsi)  # "HdrS" in boot_params
            jne 1f
            movl 0x228(%rsi), %esi         # cmd_line_ptr
            mov $0x3f8, %dx
            mov $7, %ecx
            rep outsb                      # prints "console"
            1: hlt
            """, origin: 0x100_0000)
        let (outcome, text) = try Self.bootTiny(Self.elf(code, pvh: true), proto: .linux64)
        #expect(outcome == .halted(vcpu: 0))
        #expect(text == "console")
    }
}

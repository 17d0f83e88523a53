import Foundation
import Testing
import TestSupport
@testable import VMM
@testable import Boot
import Devices

/// Every way a guest asks for a restart ends the machine with a reset, named, from the vCPU that asked.
/// That vCPU never runs the instruction after its request (a store to 0x3000), and a second vCPU that is
/// busy at the time (counting at 0x2000) does not stop it.
@Suite(.ownThreads, .enabled(if: Harness.kvmAvailable, "needs /dev/kvm"))
struct ResetTests {
    /// Each request as 64-bit code.
    static func request(_ cause: ResetCause) -> String {
        switch cause {
        case .acpi: return "mov $0x602, %dx\n mov $1, %al\n out %al, %dx"
        case .i8042: return "mov $0xfe, %al\n out %al, $0x64"
        // As Linux does it: read, ask for a hard reset (bit 1), then set RST_CPU (bit 2).
        case .cf9: return "mov $0xcf9, %dx\n in %dx, %al\n or $0x02, %al\n out %al, %dx\n or $0x04, %al\n out %al, %dx"
        // No IDT: #UD cannot be delivered, nor the #GP and #DF that follow.
        case .tripleFault: return "lidt zero(%rip)\n ud2"
        default: return ""
        }
    }

    /// The asking vCPU at 0x100000 (waiting first, with 2 vCPUs, until the other has counted to 1000),
    /// the busy one at 0x101000.
    static func program(_ cause: ResetCause, waitForOther: Bool) throws -> [UInt8] {
        try Harness.assemble(
            """
            \(waitForOther ? "2: cmpq $1000, 0x2000\n jb 2b" : "")
            \(request(cause))
            movl $1, 0x3000          # must never run
            1: hlt
            jmp 1b
            zero: .word 0
                  .quad 0
            .org 0x1000
            busy:
            lock incq 0x2000
            pause
            jmp busy
            """)
    }

    static let cases: [(ResetCause, Int, Int)] = [ResetCause.acpi, .i8042, .cf9, .tripleFault].flatMap { c in
        [(c, 1, 0), (c, 2, 0), (c, 2, 1)]  // (cause, vCPUs, the one that asks)
    }

    @Test(arguments: cases)
    func resetRequestStopsTheMachine(cause: ResetCause, vcpus: Int, asker: Int) throws {
        let code = try Self.program(cause, waitForOther: vcpus == 2)
        let entries: [UInt64] = vcpus == 1 ? [0x100000] : (asker == 0 ? [0x100000, 0x101000] : [0x101000, 0x100000])
        let (m, _) = try Harness.longModeMachine(code, vcpus: vcpus, entries: entries)
        #expect(try Harness.run(m) == .reset(cause, vcpu: asker))
        #expect(try m.memory.load(UInt32.self, at: 0x3000) == 0, "the asking vCPU ran on after its request")
        if vcpus == 2 { #expect(try m.memory.load(UInt64.self, at: 0x2000) >= 1000, "the other vCPU was not running") }
    }

    /// Linux's last resort (machine_real_restart): real mode, then a far jump to F000:FFF0. There is no
    /// firmware; the machine's stub there pulses the reset line, and the reset is named for the vector.
    @Test(arguments: [1, 2])
    func realModeJumpToTheResetVectorResets(vcpus: Int) throws {
        let code = try Self.program(.i8042, waitForOther: false)
        let (m, _) = try Harness.longModeMachine(code, vcpus: vcpus, entries: vcpus == 1 ? [0x100000] : [0x100000, 0x101000])
        try m.memory.write([0xEA, 0xF0, 0xFF, 0x00, 0xF0], at: 0x7000)  // ljmp $0xf000, $0xfff0
        let seg = { (type: UInt8) in SegmentState(base: 0, limit: 0xFFFF, selector: 0, type: type, db: 0, l: 0, g: 0) }
        let real = BootCPUState(
            rip: 0x7000, rsp: 0x6000, cr0: 0x10, code: seg(0xB), data: seg(0x3), tss: seg(0xB),
            gdtLimit: 0xFFFF, idtBase: 0, idtLimit: 0x3FF)
        try m.setBootState(real, vcpu: 0)
        #expect(try Harness.run(m) == .reset(.resetVector, vcpu: 0))
    }

    /// kumo-vmm's whole life: `--on-reboot exit` ends with status 3 and the cause, instead of booting
    /// the guest again.
    @Test func onRebootExitEndsTheVMM() throws {
        let k = try CLI.tinyKernel(CLI.printsBThenResets)
        defer { unlink(k) }
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-onreboot-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: log) }
        let r = try CLI.run(["--kernel", k, "--memory", "32", "--serial", "file:" + log, "--on-reboot", "exit"]) { _ in }
        #expect(r.status == exitStatusReboot, "\(r.stderr)")
        #expect(r.stderr.contains("guest reset (i8042 reset line, vCPU 0); exiting (on_reboot exit)"))
        #expect(r.stderr.contains("reboot cause: i8042"))
        #expect((try? String(contentsOfFile: log, encoding: .utf8)) == "b", "booted once")
        let bad = try CLI.run(["--kernel", k, "--on-reboot", "sometimes"]) { _ in }
        #expect(bad.status == 2 && bad.stderr.contains("--on-reboot: must be restart or exit"), "\(bad.stderr)")
    }
}

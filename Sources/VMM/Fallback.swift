import VMMContract
import KVM
import SystemKit
import GuestMemory
import CKVM

/// The emulation-failure fallback: where the host's KVM reports KVM_EXIT_INTERNAL_ERROR (emulation)
/// at an instruction its emulator cannot run, kumo-vmm runs the few that stock kernels need at boot:
/// `int3` (inject #BP after it), `fwait` (no-op unless an x87 exception is pending: then #MF), and
/// `ldmxcsr`/`stmxcsr` (through the vCPU's XSAVE image). Anything else is reported, never retried.
/// On hardware-assisted KVM this path is never reached.
public enum EmulationFallback {
    public enum Result {
        case handled(DecodedInstruction.Kind)
        case unhandled(String)
    }

    static func registers(_ r: Regs) -> [UInt64] {
        [r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15]
    }

    public static func handle(_ vcpu: VCPU, memory: GuestMemory) -> Result {
        do {
            var regs = try vcpu.getRegs()
            var sregs = try vcpu.getSRegs()
            let mode = PagingMode(cr0: sregs.cr0, cr3: sregs.cr3, cr4: sregs.cr4, efer: sregs.efer)
            let longMode = mode.longMode && sregs.cs.l == 1
            let linear = longMode ? regs.rip : (sregs.cs.base &+ regs.rip) & 0xFFFF_FFFF
            var fetched = memory.readVirtual(linear, count: 15, mode: mode)
            // Decode what KVM's emulator actually fetched when it reports it: the guest may have
            // rewritten the instruction since (the kernel patches live code through int3).
            var kvmBytes = [UInt8](repeating: 0, count: 15)
            let n = kvmBytes.withUnsafeMutableBufferPointer { ckvm_run_emulation_insn(vcpu.run, $0.baseAddress!) }
            if n > 0 { fetched.bytes = Array(kvmBytes[0..<Int(n)]) }
            let source = n > 0 ? "as KVM fetched them" : "read from guest memory"
            let insn = Decoder.decode(fetched.bytes, longMode: longMode)
            switch insn.kind {
            case .int3:
                regs.rip &+= UInt64(insn.length)
                try vcpu.setRegs(regs)
                try vcpu.injectException(vector: 3)
            case .fwait:
                let fpu = try vcpu.getFPU()
                if fpu.fsw & 0x80 != 0 {  // ES: an unmasked x87 exception is pending
                    try vcpu.injectException(vector: 16)
                } else {
                    regs.rip &+= UInt64(insn.length)
                    try vcpu.setRegs(regs)
                }
            case .ldmxcsr, .stmxcsr:
                guard let op = insn.memory else { return .unhandled(report(vcpu.id, linear, fetched, "no operand")) }
                let segBase: UInt64
                switch op.segment {
                case .fs: segBase = sregs.fs.base
                case .gs: segBase = sregs.gs.base
                default: segBase = longMode ? 0 : sregs.ds.base
                }
                let ea = Decoder.effectiveAddress(op, registers: registers(regs), rip: regs.rip, length: insn.length, segmentBase: segBase)
                let isStore = insn.kind == .stmxcsr
                guard (ea & 0xFFF) <= 0xFFC, let t = try? memory.translate(ea, mode: mode),
                    !isStore || t.writable || sregs.cr0 & (1 << 16) == 0
                else {
                    // Not mapped (or read-only): the guest takes a page fault at this instruction.
                    sregs.cr2 = ea
                    try vcpu.setSRegs(sregs)
                    try vcpu.injectException(vector: 14, errorCode: isStore ? 2 : 0)
                    return .handled(insn.kind)
                }
                // MXCSR goes through the XSAVE image: KVM_GET/SET_FPU do not carry it on every host.
                if isStore {
                    guard (try? memory.store(try vcpu.getMXCSR(), at: t.gpa)) != nil else {
                        return .unhandled(report(vcpu.id, linear, fetched, "stmxcsr target GPA 0x\(hex(t.gpa)) is not RAM"))
                    }
                } else {
                    guard let v = try? memory.load(UInt32.self, at: t.gpa) else {
                        return .unhandled(report(vcpu.id, linear, fetched, "ldmxcsr source GPA 0x\(hex(t.gpa)) is not RAM"))
                    }
                    if v & 0xFFFF_0000 != 0 {  // reserved MXCSR bits: #GP(0)
                        try vcpu.injectException(vector: 13, errorCode: 0)
                        return .handled(insn.kind)
                    }
                    try vcpu.setMXCSR(v)
                }
                regs.rip &+= UInt64(insn.length)
                try vcpu.setRegs(regs)
            case .unknown:
                return .unhandled(report(vcpu.id, linear, fetched, "kumo-vmm does not emulate this instruction (bytes \(source))"))
            }
            return .handled(insn.kind)
        } catch {
            return .unhandled("vCPU \(vcpu.id): emulation fallback failed: \(error)")
        }
    }

    static func report(_ id: UInt32, _ rip: UInt64, _ fetched: (bytes: [UInt8], firstGPA: UInt64?), _ why: String) -> String {
        let bytes = fetched.bytes.prefix(15).map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined(separator: " ")
        let gpa = fetched.firstGPA.map { "0x" + hex($0) } ?? "unmapped"
        return "vCPU \(id): KVM emulation failure at RIP 0x\(hex(rip)) (GPA \(gpa)), instruction bytes [\(bytes)]: \(why)"
    }
}

func hex<T: BinaryInteger>(_ v: T) -> String { String(v, radix: 16) }

/// A register dump for fatal exits.
public func registerDump(_ vcpu: VCPU, memory: GuestMemory?) -> String {
    guard let r = try? vcpu.getRegs(), let s = try? vcpu.getSRegs() else { return "vCPU \(vcpu.id): registers unavailable" }
    func h(_ v: UInt64) -> String { let x = hex(v); return String(repeating: "0", count: max(0, 16 - x.count)) + x }
    var out = "vCPU \(vcpu.id) registers:\n"
    out += " rip \(h(r.rip))  rsp \(h(r.rsp))  rflags \(h(r.rflags))\n"
    out += " rax \(h(r.rax))  rbx \(h(r.rbx))  rcx \(h(r.rcx))  rdx \(h(r.rdx))\n"
    out += " rsi \(h(r.rsi))  rdi \(h(r.rdi))  rbp \(h(r.rbp))  r8  \(h(r.r8))\n"
    out += " r9  \(h(r.r9))  r10 \(h(r.r10))  r11 \(h(r.r11))  r12 \(h(r.r12))\n"
    out += " r13 \(h(r.r13))  r14 \(h(r.r14))  r15 \(h(r.r15))\n"
    out += " cr0 \(h(s.cr0))  cr2 \(h(s.cr2))  cr3 \(h(s.cr3))  cr4 \(h(s.cr4))  efer \(h(s.efer))\n"
    out +=
        " cs \(hex(s.cs.selector)) (l=\(s.cs.l) db=\(s.cs.db))  ss \(hex(s.ss.selector))  gdt \(h(s.gdt.base))/\(s.gdt.limit)  idt "
        + "\(h(s.idt.base))/\(s.idt.limit)"
    if let mem = memory {
        let mode = PagingMode(cr0: s.cr0, cr3: s.cr3, cr4: s.cr4, efer: s.efer)
        let rip = mode.longMode && s.cs.l == 1 ? r.rip : (s.cs.base &+ r.rip) & 0xFFFF_FFFF
        let f = mem.readVirtual(rip, count: 16, mode: mode)
        if !f.bytes.isEmpty {
            out += "\n code at rip: " + f.bytes.map { b in (b < 16 ? "0" : "") + hex(b) }.joined(separator: " ")
        }
    }
    return out
}

import Testing
@testable import VMM

@Suite struct DecoderTests {
    @Test func simpleInstructions() {
        #expect(Decoder.decode([0xCC, 0x90], longMode: true) == .init(kind: .int3, length: 1, memory: nil))
        #expect(Decoder.decode([0x9B], longMode: true).kind == .fwait)
        #expect(Decoder.decode([0xF3, 0x48, 0x0F, 0xB8, 0xC7], longMode: true).kind == .unknown)  // popcnt
        #expect(Decoder.decode([], longMode: true).kind == .unknown)
        #expect(Decoder.decode([0x0F, 0xAE], longMode: true).kind == .unknown)  // truncated
        #expect(Decoder.decode([0x0F, 0xAE, 0xD0], longMode: true).kind == .unknown)  // mod = 3
        #expect(Decoder.decode([0x0F, 0xAE, 0x27], longMode: true).kind == .unknown)  // xsave /4
    }

    @Test func ldmxcsrAddressingForms() {
        // ldmxcsr [rdi]
        let a = Decoder.decode([0x0F, 0xAE, 0x17], longMode: true)
        #expect(a.kind == .ldmxcsr && a.length == 3 && a.memory?.base == 7)
        // stmxcsr [rsp+0x10] (SIB, disp8)
        let b = Decoder.decode([0x0F, 0xAE, 0x5C, 0x24, 0x10], longMode: true)
        #expect(b.kind == .stmxcsr && b.length == 5 && b.memory?.base == 4 && b.memory?.index == nil && b.memory?.displacement == 0x10)
        // ldmxcsr [rip+0x1000]
        let c = Decoder.decode([0x0F, 0xAE, 0x15, 0x00, 0x10, 0x00, 0x00], longMode: true)
        #expect(c.kind == .ldmxcsr && c.length == 7 && c.memory?.ripRelative == true)
        #expect(
            Decoder.effectiveAddress(
                c.memory!, registers: [UInt64](repeating: 0, count: 16), rip: 0xFFFF_FFFF_8100_0000,
                length: c.length, segmentBase: 0) == 0xFFFF_FFFF_8100_1007)
        // ldmxcsr gs:[r12 + r13*8 - 8] (REX.B and REX.X, disp8 negative)
        let d = Decoder.decode([0x65, 0x43, 0x0F, 0xAE, 0x54, 0xEC, 0xF8], longMode: true)
        #expect(d.kind == .ldmxcsr && d.length == 7)
        #expect(d.memory?.base == 12 && d.memory?.index == 13 && d.memory?.scale == 8 && d.memory?.segment == .gs)
        var regs = [UInt64](repeating: 0, count: 16)
        regs[12] = 0x1000; regs[13] = 2
        #expect(Decoder.effectiveAddress(d.memory!, registers: regs, rip: 0, length: d.length, segmentBase: 0x5000) == 0x6008)
        // 32-bit code: mod 0 rm 5 is an absolute disp32, not RIP-relative.
        let e = Decoder.decode([0x0F, 0xAE, 0x15, 0x78, 0x56, 0x34, 0x12], longMode: false)
        #expect(e.memory?.ripRelative == false && e.memory?.displacement == 0x1234_5678 && e.memory?.addressSize32 == true)
        // SIB with no base (mod 0, base 5): [rax*4 + disp32]
        let f = Decoder.decode([0x0F, 0xAE, 0x14, 0x85, 0x00, 0x20, 0x00, 0x00], longMode: true)
        #expect(f.memory?.base == nil && f.memory?.index == 0 && f.memory?.scale == 4 && f.memory?.displacement == 0x2000 && f.length == 8)
    }
}

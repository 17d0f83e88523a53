/// Decodes the few x86 instructions kumo-vmm emulates itself when the host's KVM cannot
/// (see EmulationFallback). Pure: bytes in, description out, so it is unit-tested without KVM.
public struct DecodedInstruction: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case int3
        case fwait
        case ldmxcsr
        case stmxcsr
        case unknown
    }

    /// A ModRM memory operand: base + index*scale + displacement (+ RIP for RIP-relative), segment.
    public struct MemoryOperand: Equatable, Sendable {
        public var base: Int?  // register number 0…15
        public var index: Int?
        public var scale: UInt64 = 1
        public var displacement: Int64 = 0
        public var ripRelative = false
        public var segment: Segment = .ds
        public var addressSize32 = false
    }

    public enum Segment: Equatable, Sendable { case es, cs, ss, ds, fs, gs }

    public var kind: Kind
    public var length: Int
    public var memory: MemoryOperand?
}

public enum Decoder {
    /// `longMode`: 64-bit code segment (REX prefixes, RIP-relative addressing, 64-bit addresses).
    public static func decode(_ b: [UInt8], longMode: Bool) -> DecodedInstruction {
        var i = 0
        var segment: DecodedInstruction.Segment = .ds
        var addr32 = !longMode
        var rex: UInt8 = 0
        prefixes: while i < b.count && i < 14 {
            switch b[i] {
            case 0xF0, 0xF2, 0xF3, 0x66: i += 1
            case 0x67: addr32 = true; i += 1
            case 0x26: segment = .es; i += 1
            case 0x2E: segment = .cs; i += 1
            case 0x36: segment = .ss; i += 1
            case 0x3E: segment = .ds; i += 1
            case 0x64: segment = .fs; i += 1
            case 0x65: segment = .gs; i += 1
            default: break prefixes
            }
        }
        if longMode, i < b.count, b[i] & 0xF0 == 0x40 { rex = b[i]; i += 1 }
        guard i < b.count else { return .init(kind: .unknown, length: 0, memory: nil) }
        switch b[i] {
        case 0xCC: return .init(kind: .int3, length: i + 1, memory: nil)
        case 0x9B: return .init(kind: .fwait, length: i + 1, memory: nil)
        case 0x0F where i + 2 < b.count && b[i + 1] == 0xAE:
            let modrm = b[i + 2]
            let reg = (modrm >> 3) & 7
            guard modrm >> 6 != 3, reg == 2 || reg == 3 else { break }
            guard case (var op, let len)? = memoryOperand(b, at: i + 2, rex: rex, addr32: addr32, longMode: longMode) else { break }
            op.segment = segment
            return .init(kind: reg == 2 ? .ldmxcsr : .stmxcsr, length: len, memory: op)
        default: break
        }
        return .init(kind: .unknown, length: 0, memory: nil)
    }

    /// Decodes ModRM (+SIB, displacement) at `at`; returns the operand and the instruction's end.
    static func memoryOperand(_ b: [UInt8], at: Int, rex: UInt8, addr32: Bool, longMode: Bool)
        -> (DecodedInstruction.MemoryOperand, Int)?
    {
        let modrm = b[at]
        let mod = modrm >> 6
        let rm = Int(modrm & 7)
        var op = DecodedInstruction.MemoryOperand()
        op.addressSize32 = addr32
        var i = at + 1
        let rexB = Int(rex & 1) << 3, rexX = Int(rex & 2) << 2
        if rm == 4 {
            guard i < b.count else { return nil }
            let sib = b[i]
            i += 1
            let scale = UInt64(1) << UInt64(sib >> 6)
            let index = Int((sib >> 3) & 7) | rexX
            let base = Int(sib & 7)
            if index != 4 { op.index = index; op.scale = scale }
            if base == 5 && mod == 0 {
                guard i + 4 <= b.count else { return nil }
                op.displacement = Int64(Int32(bitPattern: le32(b, i)))
                i += 4
            } else {
                op.base = base | rexB
            }
        } else if rm == 5 && mod == 0 {
            guard i + 4 <= b.count else { return nil }
            op.displacement = Int64(Int32(bitPattern: le32(b, i)))
            op.ripRelative = longMode
            i += 4
        } else {
            op.base = rm | rexB
        }
        if mod == 1 {
            guard i < b.count else { return nil }
            op.displacement = Int64(Int8(bitPattern: b[i]))
            i += 1
        } else if mod == 2 {
            guard i + 4 <= b.count else { return nil }
            op.displacement = Int64(Int32(bitPattern: le32(b, i)))
            i += 4
        }
        return (op, i)
    }

    static func le32(_ b: [UInt8], _ i: Int) -> UInt32 {
        UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24
    }

    /// The effective (linear) address of `op` for an instruction of `length` bytes at `rip`.
    public static func effectiveAddress(
        _ op: DecodedInstruction.MemoryOperand, registers r: [UInt64], rip: UInt64,
        length: Int, segmentBase: UInt64
    ) -> UInt64 {
        var a = UInt64(bitPattern: op.displacement)
        if let base = op.base { a &+= r[base] }
        if let index = op.index { a &+= r[index] &* op.scale }
        if op.ripRelative { a &+= rip &+ UInt64(length) }
        if op.addressSize32 { a &= 0xFFFF_FFFF }
        return a &+ segmentBase
    }
}

/// The smallest kernels Kumo's loader accepts, for tests: flat x86-64 code at 16 MiB wrapped in an ELF
/// executable, with or without Xen's PVH entry note.
public enum TinyKernel {
    public static func elf(_ code: [UInt8], pvh: Bool) -> [UInt8] {
        func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
        func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xFF) } }
        func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8((v >> (8 * UInt64($0))) & 0xFF) } }
        let phnum = pvh ? 2 : 1
        let dataOff = 64 + 56 * phnum
        let note: [UInt8] = pvh ? le32(4) + le32(4) + le32(18) + Array("Xen\0".utf8) + le32(0x100_0000) : []
        var b: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1] + [UInt8](repeating: 0, count: 9)
        b += le16(2) + le16(62) + le32(1) + le64(0x100_0000) + le64(64) + le64(0) + le32(0) + le16(64) + le16(56)
        b += le16(UInt16(phnum)) + le16(0) + le16(0) + le16(0)
        let codeOff = UInt64(dataOff + note.count)
        b += le32(1) + le32(5) + le64(codeOff) + le64(0x100_0000) + le64(0x100_0000) + le64(UInt64(code.count)) + le64(UInt64(code.count)) + le64(0x1000)
        if pvh { b += le32(4) + le32(4) + le64(UInt64(dataOff)) + le64(0) + le64(0) + le64(UInt64(note.count)) + le64(UInt64(note.count)) + le64(4) }
        return b + note + code
    }

    /// `cli; 1: hlt; jmp 1b` as a PVH kernel: boots and idles.
    public static let idle = elf([0xFA, 0xF4, 0xEB, 0xFD], pvh: true)
}

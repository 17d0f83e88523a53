import GuestMemory

public enum BootProtocol: String, Sendable, CaseIterable {
    case auto
    /// PVH: 32-bit protected mode, paging off, %ebx = hvm_start_info (ELF vmlinux with the Xen PVH note).
    case pvh
    /// The Linux 64-bit boot protocol: long mode, identity-mapped page tables, %rsi = boot_params.
    case linux64
}

public enum KernelError: Error, Equatable, CustomStringConvertible {
    case notAKernel(String)
    case unsupported(String)
    case doesNotFit(String)
    case cmdlineTooLong(length: Int, limit: Int)

    public var description: String {
        switch self {
        case let .notAKernel(why): return "not a Linux kernel: \(why)"
        case let .unsupported(why): return "unsupported kernel: \(why)"
        case let .doesNotFit(why): return "kernel does not fit in guest memory: \(why)"
        case let .cmdlineTooLong(length, limit): return "kernel command line is \(length) bytes; this kernel accepts at most \(limit - 1)"
        }
    }
}

/// A parsed kernel file: an ELF vmlinux or a bzImage. Parsing reads headers only and touches no VM.
public struct KernelImage: Sendable {
    public enum Format: Sendable, Equatable { case elf, bzImage }
    public struct Segment: Sendable, Equatable {
        public var fileOffset: Int
        public var fileSize: Int
        public var physAddr: UInt64
        public var memSize: UInt64
    }

    public let format: Format
    public let bytes: [UInt8]
    /// ELF: PT_LOAD segments. bzImage: the protected-mode kernel as one segment at 1 MiB.
    public let segments: [Segment]
    /// ELF e_entry (physical startup_64), or for bzImage the 64-bit entry (load address + 0x200).
    public let entry64: UInt64
    /// The PVH entry from the XEN_ELFNOTE_PHYS32_ENTRY note, when present.
    public let pvhEntry: UInt64?
    /// bzImage: the setup header bytes to copy into boot_params (offset 0x1f1 on).
    public let setupHeader: [UInt8]
    public let cmdlineLimit: Int
    public let initrdAddrMax: UInt64
    /// Highest guest-physical byte the kernel needs while booting (bzImage: load + init_size).
    public let end: UInt64

    public init(bytes: [UInt8]) throws(KernelError) {
        if bytes.count >= 4, bytes[0] == 0x7F, bytes[1] == 0x45, bytes[2] == 0x4C, bytes[3] == 0x46 {
            self = try KernelImage.parseELF(bytes)
        } else if bytes.count > 0x260, le(bytes, 0x202, UInt32.self) == 0x5372_6448 {  // "HdrS"
            self = try KernelImage.parseBzImage(bytes)
        } else {
            throw .notAKernel("neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" setup header)")
        }
    }

    init(
        format: Format, bytes: [UInt8], segments: [Segment], entry64: UInt64, pvhEntry: UInt64?,
        setupHeader: [UInt8], cmdlineLimit: Int, initrdAddrMax: UInt64, end: UInt64
    ) {
        self.format = format; self.bytes = bytes; self.segments = segments; self.entry64 = entry64
        self.pvhEntry = pvhEntry; self.setupHeader = setupHeader; self.cmdlineLimit = cmdlineLimit
        self.initrdAddrMax = initrdAddrMax; self.end = end
    }

    static func parseELF(_ b: [UInt8]) throws(KernelError) -> KernelImage {
        guard b.count >= 64 else { throw .notAKernel("truncated ELF header") }
        guard b[4] == 2 else { throw .unsupported("32-bit ELF; Kumo boots x86_64 kernels") }
        guard b[5] == 1 else { throw .unsupported("big-endian ELF") }
        guard le(b, 18, UInt16.self) == 62 else { throw .unsupported("ELF machine \(le(b, 18, UInt16.self) ?? 0) is not x86_64") }
        guard let type = le(b, 16, UInt16.self), type == 2 || type == 3 else { throw .notAKernel("ELF is not an executable") }
        let entry = le(b, 24, UInt64.self)!
        let phoff = Int(le(b, 32, UInt64.self)!)
        let phentsize = Int(le(b, 54, UInt16.self)!)
        let phnum = Int(le(b, 56, UInt16.self)!)
        guard phentsize >= 56, phnum > 0, phnum < 256, phoff > 0, phoff <= b.count,
            phnum * phentsize <= b.count - phoff
        else { throw .notAKernel("bad ELF program headers") }
        var segs: [Segment] = []
        var pvh: UInt64? = nil
        var end: UInt64 = 0
        for i in 0..<phnum {
            let o = phoff + i * phentsize
            let ptype = le(b, o, UInt32.self)!
            let off = le(b, o + 8, UInt64.self)!
            let paddr = le(b, o + 24, UInt64.self)!
            let filesz = le(b, o + 32, UInt64.self)!
            let memsz = le(b, o + 40, UInt64.self)!
            guard off <= UInt64(b.count), filesz <= UInt64(b.count) - off else {
                throw .notAKernel("ELF segment \(i) runs past the end of the file")
            }
            if ptype == 1 {  // PT_LOAD
                guard memsz >= filesz, paddr < (1 << 46), memsz < (1 << 36) else { throw .notAKernel("bad PT_LOAD \(i)") }
                segs.append(Segment(fileOffset: Int(off), fileSize: Int(filesz), physAddr: paddr, memSize: memsz))
                end = max(end, paddr + memsz)
            } else if ptype == 4 {  // PT_NOTE: look for Xen's PVH entry note
                pvh = pvh ?? findPVHNote(b, Int(off), Int(filesz))
            }
        }
        guard !segs.isEmpty else { throw .notAKernel("ELF has no loadable segments") }
        guard segs.allSatisfy({ $0.physAddr >= Layout.highMemory }) else {
            throw .unsupported("ELF loads below 1 MiB, where Kumo keeps boot structures")
        }
        return KernelImage(
            format: .elf, bytes: b, segments: segs, entry64: entry, pvhEntry: pvh,
            setupHeader: [], cmdlineLimit: 2048, initrdAddrMax: Layout.mmioHoleStart - 1, end: end)
    }

    static func findPVHNote(_ b: [UInt8], _ start: Int, _ size: Int) -> UInt64? {
        var o = start
        let limit = start + size
        while o + 12 <= limit {
            let namesz = Int(le(b, o, UInt32.self)!)
            let descsz = Int(le(b, o + 4, UInt32.self)!)
            let type = le(b, o + 8, UInt32.self)!
            let nameOff = o + 12
            let descOff = nameOff + (namesz + 3) & ~3
            guard namesz < 256, descsz < 4096, descOff + descsz <= limit else { return nil }
            if type == 18, namesz == 4, b[nameOff] == 0x58, b[nameOff + 1] == 0x65, b[nameOff + 2] == 0x6E {  // "Xen"
                if descsz >= 8 { return le(b, descOff, UInt64.self) }
                if descsz >= 4 { return UInt64(le(b, descOff, UInt32.self)!) }
            }
            o = descOff + (descsz + 3) & ~3
        }
        return nil
    }

    static func parseBzImage(_ b: [UInt8]) throws(KernelError) -> KernelImage {
        let version = le(b, 0x206, UInt16.self)!
        guard version >= 0x020C else {
            throw .unsupported("boot protocol \(version >> 8).\(version & 0xFF) is older than 2.12 (no 64-bit entry)")
        }
        let xloadflags = le(b, 0x236, UInt16.self)!
        guard xloadflags & 1 != 0 else { throw .unsupported("bzImage has no 64-bit entry point (XLF_KERNEL_64)") }
        guard b[0x211] & 1 != 0 else { throw .unsupported("not a bzImage (zImage loads low)") }
        var setupSects = Int(b[0x1F1])
        if setupSects == 0 { setupSects = 4 }
        let pmOffset = (setupSects + 1) * 512
        guard pmOffset < b.count else { throw .notAKernel("bzImage truncated before its protected-mode kernel") }
        let headerEnd = min(0x202 + Int(b[0x201]), 0x290)
        let initSize = UInt64(le(b, 0x260, UInt32.self)!)
        let cmdlineSize = Int(le(b, 0x238, UInt32.self)!)
        let initrdMax = UInt64(le(b, 0x22C, UInt32.self)!)
        let seg = Segment(
            fileOffset: pmOffset, fileSize: b.count - pmOffset, physAddr: Layout.bzImageLoad,
            memSize: UInt64(b.count - pmOffset))
        let end = Layout.bzImageLoad + max(initSize, seg.memSize)
        return KernelImage(
            format: .bzImage, bytes: b, segments: [seg], entry64: Layout.bzImageLoad + 0x200,
            pvhEntry: nil, setupHeader: Array(b[0x1F1..<headerEnd]),
            cmdlineLimit: cmdlineSize > 0 ? cmdlineSize + 1 : 256,
            initrdAddrMax: initrdMax > 0 ? initrdMax : 0x37FF_FFFF, end: end)
    }

    /// The boot protocol `requested` resolves to for this image.
    public func resolve(_ requested: BootProtocol) throws(KernelError) -> BootProtocol {
        switch requested {
        case .auto: return pvhEntry != nil ? .pvh : .linux64
        case .pvh:
            guard pvhEntry != nil else { throw .unsupported("no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); use the linux64 boot protocol") }
            return .pvh
        case .linux64: return .linux64
        }
    }
}

import GuestMemory

/// A segment register's hidden state, as the boot protocol wants it.
public struct SegmentState: Sendable, Equatable {
    public var base: UInt64 = 0
    public var limit: UInt32 = 0xFFFF_FFFF
    public var selector: UInt16
    public var type: UInt8
    public var present: UInt8 = 1
    public var dpl: UInt8 = 0
    public var db: UInt8
    public var s: UInt8 = 1
    public var l: UInt8
    public var g: UInt8 = 1

    /// The 8-byte GDT descriptor for this segment.
    public var descriptor: UInt64 {
        let lim = UInt64(g == 1 ? limit >> 12 : limit)
        var d = lim & 0xFFFF
        d |= (base & 0xFF_FFFF) << 16
        d |= UInt64(type & 0xF) << 40
        d |= UInt64(s) << 44
        d |= UInt64(dpl & 3) << 45
        d |= UInt64(present) << 47
        d |= ((lim >> 16) & 0xF) << 48
        d |= UInt64(l) << 53
        d |= UInt64(db) << 54
        d |= UInt64(g) << 55
        d |= ((base >> 24) & 0xFF) << 56
        return d
    }
}

/// Where and how the boot vCPU starts.
public struct BootCPUState: Sendable, Equatable {
    public var rip: UInt64
    public var rsp: UInt64 = 0
    public var rsi: UInt64 = 0
    public var rbx: UInt64 = 0
    public var rflags: UInt64 = 0x2
    public var cr0: UInt64
    public var cr3: UInt64 = 0
    public var cr4: UInt64 = 0
    public var efer: UInt64 = 0
    public var code: SegmentState
    public var data: SegmentState
    public var tss: SegmentState
    public var gdtBase: UInt64 = Layout.gdt
    public var gdtLimit: UInt16
    public var idtBase: UInt64 = Layout.idt
    public var idtLimit: UInt16 = 0

    public init(
        rip: UInt64, rsp: UInt64 = 0, rsi: UInt64 = 0, rbx: UInt64 = 0, cr0: UInt64, cr3: UInt64 = 0,
        cr4: UInt64 = 0, efer: UInt64 = 0, code: SegmentState, data: SegmentState, tss: SegmentState,
        gdtLimit: UInt16, idtBase: UInt64 = Layout.idt, idtLimit: UInt16 = 0
    ) {
        self.rip = rip; self.rsp = rsp; self.rsi = rsi; self.rbx = rbx; self.cr0 = cr0; self.cr3 = cr3
        self.cr4 = cr4; self.efer = efer; self.code = code; self.data = data; self.tss = tss
        self.gdtLimit = gdtLimit; self.idtBase = idtBase; self.idtLimit = idtLimit
    }
}

public enum BootError: Error, CustomStringConvertible {
    case kernel(KernelError)
    case memory(MemoryError)
    case initrdDoesNotFit(size: Int, below: UInt64)
    case acpiTablesTooLarge(end: UInt64)

    public var description: String {
        switch self {
        case let .kernel(e): return e.description
        case let .memory(e): return e.description
        case let .initrdDoesNotFit(size, below):
            return "initrd of \(size >> 10) KiB does not fit between the kernel and 0x\(String(below, radix: 16)); give the guest more memory"
        case let .acpiTablesTooLarge(end):
            return "the ACPI tables would end at 0x\(String(end, radix: 16)), past the reset vector (fewer vCPUs or devices)"
        }
    }
}

/// A linear framebuffer the guest is told about (boot_params' screen_info): 32 bpp XRGB at `base`.
public struct DisplayMode: Sendable, Equatable {
    public var width: Int, height: Int
    /// Bytes per line.
    public var stride: Int
    public var base: UInt64
    /// Bytes the framebuffer spans (at least stride × height).
    public var size: UInt64
    public init(width: Int, height: Int, stride: Int, base: UInt64, size: UInt64) {
        self.width = width; self.height = height; self.stride = stride; self.base = base; self.size = size
    }
}

/// Everything the loader needs to lay out a guest.
public struct BootSpec: Sendable {
    public var kernel: KernelImage
    public var initrd: [UInt8]?
    public var cmdline: String
    public var memorySize: UInt64
    public var vcpus: Int
    public var bootProtocol: BootProtocol
    /// A display: the kernel learns of it through screen_info, which only the 64-bit boot protocol
    /// carries (PVH's start info has no place for it).
    public var display: DisplayMode?

    public init(
        kernel: KernelImage, initrd: [UInt8]?, cmdline: String, memorySize: UInt64, vcpus: Int,
        bootProtocol: BootProtocol = .auto, display: DisplayMode? = nil
    ) {
        self.kernel = kernel; self.initrd = initrd; self.cmdline = cmdline
        self.memorySize = memorySize; self.vcpus = vcpus; self.bootProtocol = bootProtocol; self.display = display
    }

    /// The protocol a boot will use: with a display, `auto` means the 64-bit one.
    public func resolvedProtocol() throws(KernelError) -> BootProtocol {
        if display != nil {
            guard bootProtocol != .pvh else {
                throw .unsupported("a display is described in boot_params' screen_info, which PVH does not carry: boot with the linux64 protocol")
            }
            return .linux64
        }
        return try kernel.resolve(bootProtocol)
    }
}

public struct BootResult: Sendable {
    public var cpu: BootCPUState
    public var protocolUsed: BootProtocol
    public var initrdAddress: UInt64?
    public var rsdp: UInt64
}

public enum BootLoader {
    /// GDT entries: 0 null, 1 null, 2 = code (0x10), 3 = data (0x18), 4 = TSS (0x20), as Linux's
    /// 64-bit boot protocol wants (__BOOT_CS 0x10, __BOOT_DS 0x18).
    public static func segments(longMode: Bool) -> (code: SegmentState, data: SegmentState, tss: SegmentState) {
        let code = SegmentState(selector: 0x10, type: 0xB, db: longMode ? 0 : 1, l: longMode ? 1 : 0)
        let data = SegmentState(selector: 0x18, type: 0x3, db: 1, l: 0)
        let tss = SegmentState(base: 0, limit: 0x67, selector: 0x20, type: 0xB, db: 0, s: 0, l: 0, g: 0)
        return (code, data, tss)
    }

    public static func gdt(longMode: Bool) -> [UInt64] {
        let s = segments(longMode: longMode)
        return [0, 0, s.code.descriptor, s.data.descriptor, s.tss.descriptor]
    }

    /// Identity map of the low 4 GiB with 2 MiB pages: PML4 → one PDPT → four PDs.
    public static func writePageTables(_ mem: GuestMemory) throws(MemoryError) {
        try mem.store(Layout.pdpt | 0x3, at: Layout.pml4)
        for i in 0..<4 {
            let pd = Layout.pd + UInt64(i) * 0x1000
            try mem.store(pd | 0x3, at: Layout.pdpt + UInt64(i) * 8)
            for j in 0..<512 {
                let phys = (UInt64(i) << 30) | (UInt64(j) << 21)
                try mem.store(phys | 0x83, at: pd + UInt64(j) * 8)  // present, writable, 2 MiB
            }
        }
    }

    /// Loads kernel, initrd, command line, boot structures and ACPI tables into `mem`.
    public static func load(_ spec: BootSpec, into mem: GuestMemory, acpi: ACPIConfig) throws(BootError) -> BootResult {
        do {
            return try loadThrowing(spec, into: mem, acpi: acpi)
        } catch let e as BootError {
            throw e
        } catch let e as KernelError {
            throw .kernel(e)
        } catch let e as MemoryError {
            throw .memory(e)
        } catch {
            throw .kernel(.notAKernel("\(error)"))
        }
    }

    /// Checks that `spec` can boot (protocol, sizes, command line) without touching guest memory.
    public static func check(_ spec: BootSpec) throws(BootError) {
        let k = spec.kernel
        do { _ = try spec.resolvedProtocol() } catch { throw .kernel(error) }
        let lowEnd = min(spec.memorySize, Layout.mmioHoleStart)
        guard k.end <= lowEnd else {
            throw .kernel(.doesNotFit("it needs memory up to \(k.end >> 20) MiB; the guest has \(lowEnd >> 20) MiB"))
        }
        let limit = min(k.cmdlineLimit, Int(Layout.cmdlineMax))
        let length = spec.cmdline.utf8.count
        guard length < limit else { throw .kernel(.cmdlineTooLong(length: length, limit: limit)) }
        if let initrd = spec.initrd {
            let top = min(lowEnd, k.initrdAddrMax + 1)
            let size = UInt64(initrd.count)
            guard size < top, (top - size) & ~0xFFF >= k.end else { throw .initrdDoesNotFit(size: initrd.count, below: top) }
        }
    }

    static func loadThrowing(_ spec: BootSpec, into mem: GuestMemory, acpi: ACPIConfig) throws -> BootResult {
        try check(spec)
        let k = spec.kernel
        let proto = try spec.resolvedProtocol()
        let lowEnd = min(spec.memorySize, Layout.mmioHoleStart)
        // Kernel segments.
        for s in k.segments {
            guard let dst = mem.hostPointer(s.physAddr, length: UInt64(s.fileSize)) else {
                throw MemoryError.outOfBounds(gpa: s.physAddr, length: UInt64(s.fileSize))
            }
            k.bytes.withUnsafeBytes { raw in
                dst.copyMemory(from: raw.baseAddress! + s.fileOffset, byteCount: s.fileSize)
            }
            if s.memSize > UInt64(s.fileSize) {
                try mem.fill(0, at: s.physAddr + UInt64(s.fileSize), count: Int(s.memSize - UInt64(s.fileSize)))
            }
        }
        // Command line.
        let cmd = Array(spec.cmdline.utf8)
        let limit = min(k.cmdlineLimit, Int(Layout.cmdlineMax))
        guard cmd.count < limit else { throw KernelError.cmdlineTooLong(length: cmd.count, limit: limit) }
        try mem.write(cmd + [0], at: Layout.cmdline)
        // Initrd: as high as allowed, page-aligned, above the kernel.
        var initrdAddr: UInt64? = nil
        if let initrd = spec.initrd {
            let top = min(lowEnd, k.initrdAddrMax + 1)
            let size = UInt64(initrd.count)
            guard size < top, (top - size) & ~0xFFF >= k.end else {
                throw BootError.initrdDoesNotFit(size: initrd.count, below: top)
            }
            let addr = (top - size) & ~UInt64(0xFFF)
            try mem.write(initrd, at: addr)
            initrdAddr = addr
        }
        // ACPI tables, below the reset vector (the machine puts its stub there: Machine.init).
        let tables = ACPITables.build(acpi)
        for t in tables.blobs {
            let end = t.address + UInt64(t.bytes.count)
            guard end <= Layout.resetVector else { throw BootError.acpiTablesTooLarge(end: end) }
            try mem.write(t.bytes, at: t.address)
        }
        // GDT and an empty IDT.
        let longMode = proto == .linux64
        for (i, d) in gdt(longMode: longMode).enumerated() { try mem.store(d, at: Layout.gdt + UInt64(i) * 8) }
        try mem.store(UInt64(0), at: Layout.idt)
        let segs = segments(longMode: longMode)
        let e820 = E820.map(memorySize: spec.memorySize)

        switch proto {
        case .pvh, .auto:
            try writePVHStartInfo(
                mem, initrd: initrdAddr.map { ($0, UInt64(spec.initrd!.count)) },
                rsdp: tables.rsdp, e820: e820)
            let cpu = BootCPUState(
                rip: k.pvhEntry!, rbx: Layout.pvhStartInfo, cr0: 0x11, code: segs.code,
                data: segs.data, tss: segs.tss, gdtLimit: UInt16(5 * 8 - 1))
            return BootResult(cpu: cpu, protocolUsed: .pvh, initrdAddress: initrdAddr, rsdp: tables.rsdp)
        case .linux64:
            try writePageTables(mem)
            try writeZeroPage(
                mem, kernel: k, cmdlineLength: cmd.count,
                initrd: initrdAddr.map { ($0, UInt64(spec.initrd!.count)) }, rsdp: tables.rsdp, e820: e820, display: spec.display)
            let cpu = BootCPUState(
                rip: k.entry64, rsp: Layout.bootStack, rsi: Layout.zeroPage,
                cr0: 0x8005_0033, cr3: Layout.pml4, cr4: 0x20, efer: 0x500,
                code: segs.code, data: segs.data, tss: segs.tss, gdtLimit: UInt16(5 * 8 - 1))
            return BootResult(cpu: cpu, protocolUsed: .linux64, initrdAddress: initrdAddr, rsdp: tables.rsdp)
        }
    }

    /// boot_params ("zero page") for the 64-bit boot protocol.
    public static func zeroPage(
        kernel k: KernelImage, cmdlineLength: Int, initrd: (UInt64, UInt64)?, rsdp: UInt64,
        e820: [E820Entry], display: DisplayMode? = nil
    ) -> [UInt8] {
        var z = ByteWriter(size: 4096)
        if let d = display { screenInfo(d, into: &z) }
        if !k.setupHeader.isEmpty { z.put(k.setupHeader, at: 0x1F1) }
        z.put(UInt16(0xAA55), at: 0x1FE)  // boot_flag
        z.put(UInt32(0x5372_6448), at: 0x202)  // "HdrS"
        if k.setupHeader.isEmpty { z.put(UInt16(0x020F), at: 0x206) }  // version, for a bare vmlinux
        z.put(UInt8(0xFF), at: 0x210)  // type_of_loader: undefined/other
        var loadflags = z.bytes[0x211]
        loadflags |= 0x01 | 0x80  // LOADED_HIGH, CAN_USE_HEAP
        loadflags &= ~0x20  // not QUIET: we want the console
        z.put(loadflags, at: 0x211)
        z.put(UInt16(0xFE00), at: 0x224)  // heap_end_ptr
        z.put(UInt32(Layout.cmdline), at: 0x228)  // cmd_line_ptr
        z.put(UInt32(cmdlineLength), at: 0x238)  // cmdline_size
        if k.setupHeader.isEmpty { z.put(UInt32(0x0100_0000), at: 0x230) }  // kernel_alignment
        if let (addr, size) = initrd {
            z.put(UInt32(truncatingIfNeeded: addr), at: 0x218)
            z.put(UInt32(truncatingIfNeeded: size), at: 0x21C)
            z.put(UInt32(truncatingIfNeeded: addr >> 32), at: 0x0C0)
            z.put(UInt32(truncatingIfNeeded: size >> 32), at: 0x0C4)
        }
        z.put(rsdp, at: 0x070)  // acpi_rsdp_addr
        let entries = e820.prefix(128)
        z.put(UInt8(entries.count), at: 0x1E8)
        for (i, e) in entries.enumerated() {
            let o = 0x2D0 + i * 20
            z.put(e.address, at: o); z.put(e.size, at: o + 8); z.put(e.kind.rawValue, at: o + 16)
        }
        return z.bytes
    }

    static func writeZeroPage(
        _ mem: GuestMemory, kernel: KernelImage, cmdlineLength: Int, initrd: (UInt64, UInt64)?,
        rsdp: UInt64, e820: [E820Entry], display: DisplayMode?
    ) throws(MemoryError) {
        try mem.write(
            zeroPage(kernel: kernel, cmdlineLength: cmdlineLength, initrd: initrd, rsdp: rsdp, e820: e820, display: display),
            at: Layout.zeroPage)
    }

    /// struct screen_info (boot_params offset 0): an EFI-style linear framebuffer, which the kernel's
    /// sysfb hands to efifb (CONFIG_FB_EFI) with no driver for any graphics device.
    static func screenInfo(_ d: DisplayMode, into z: inout ByteWriter) {
        z.put(UInt8(0x70), at: 0x0F)  // orig_video_isVGA = VIDEO_TYPE_EFI
        z.put(UInt16(d.width), at: 0x12)  // lfb_width
        z.put(UInt16(d.height), at: 0x14)  // lfb_height
        z.put(UInt16(32), at: 0x16)  // lfb_depth
        z.put(UInt32(truncatingIfNeeded: d.base), at: 0x18)  // lfb_base
        z.put(UInt32(truncatingIfNeeded: d.size), at: 0x1C)  // lfb_size (bytes, for EFI)
        z.put(UInt16(d.stride), at: 0x24)  // lfb_linelength
        // XRGB8888: red 8 at 16, green 8 at 8, blue 8 at 0, reserved 8 at 24.
        for (i, v) in [UInt8(8), 16, 8, 8, 8, 0, 8, 24].enumerated() { z.put(v, at: 0x26 + i) }
        z.put(UInt32(1 << 1), at: 0x36)  // capabilities: VIDEO_CAPABILITY_64BIT_BASE
        z.put(UInt32(truncatingIfNeeded: d.base >> 32), at: 0x3A)  // ext_lfb_base
    }

    /// hvm_start_info (version 1) with a module list (the initrd) and the memory map.
    public static func pvhStartInfo(
        initrd: (UInt64, UInt64)?, rsdp: UInt64,
        e820: [E820Entry]
    ) -> (startInfo: [UInt8], modlist: [UInt8], memmap: [UInt8]) {
        var s = ByteWriter()
        s.append(UInt32(0x336E_C578))  // magic
        s.append(UInt32(1))  // version
        s.append(UInt32(0))  // flags
        s.append(UInt32(initrd == nil ? 0 : 1))  // nr_modules
        s.append(initrd == nil ? UInt64(0) : Layout.pvhModlist)
        s.append(Layout.cmdline)  // cmdline_paddr
        s.append(rsdp)  // rsdp_paddr
        s.append(Layout.pvhMemmap)  // memmap_paddr
        let entries = e820.prefix(Layout.pvhMemmapMax)
        s.append(UInt32(entries.count))
        s.append(UInt32(0))
        var m = ByteWriter()
        if let (addr, size) = initrd { m.append(addr); m.append(size); m.append(UInt64(0)); m.append(UInt64(0)) }
        var mm = ByteWriter()
        for e in entries { mm.append(e.address); mm.append(e.size); mm.append(e.kind.rawValue); mm.append(UInt32(0)) }
        return (s.bytes, m.bytes, mm.bytes)
    }

    static func writePVHStartInfo(
        _ mem: GuestMemory, initrd: (UInt64, UInt64)?, rsdp: UInt64,
        e820: [E820Entry]
    ) throws(MemoryError) {
        let p = pvhStartInfo(initrd: initrd, rsdp: rsdp, e820: e820)
        try mem.write(p.startInfo, at: Layout.pvhStartInfo)
        try mem.write(p.modlist, at: Layout.pvhModlist)
        try mem.write(p.memmap, at: Layout.pvhMemmap)
    }
}

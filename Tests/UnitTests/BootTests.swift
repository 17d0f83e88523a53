import Testing
@testable import Boot
import GuestMemory

@Suite struct ResetVectorTests {
    /// The reset vector's code is what its comment says, and lies below 1 MiB, in the reserved area.
    @Test func stubIsTheI8042Pulse() {
        #expect(ResetVector.stub == [0xB0, 0xFE, 0xE6, 0x64, 0xF4, 0xEB, 0xFD])
        #expect(Layout.resetVector + UInt64(ResetVector.stub.count) <= Layout.acpiTablesEnd)
        #expect(ResetVector.contains(linear: 0xFFFF4) && !ResetVector.contains(linear: 0xFFFEF))
        #expect(
            E820.map(memorySize: 128 << 20).contains {
                $0.kind == .reserved && $0.address <= Layout.resetVector
                    && $0.address + $0.size >= Layout.resetVector + 16
            })
    }

    /// The largest ACPI tables (254 vCPUs, 16 virtio devices) end below the reset vector.
    @Test func acpiTablesEndBelowTheResetVector() {
        let devices = (0..<16).map { AML.virtioMMIO(index: $0, base: Layout.virtioMMIO + UInt64($0) * 0x1000, gsi: Layout.virtioGSIs[$0]) }
        let tables = ACPITables.build(ACPIConfig(vcpus: 254, devices: devices))
        let end = tables.blobs.map { $0.address + UInt64($0.bytes.count) }.max() ?? 0
        #expect(end > Layout.acpiTables && end <= Layout.resetVector, "tables end at 0x\(String(end, radix: 16))")
    }
}

@Suite struct E820Tests {
    @Test func smallGuestHasLowAndHighRAM() {
        let m = E820.map(memorySize: 128 << 20)
        #expect(m.first == E820Entry(0, 0x9FC00, .ram))
        #expect(m.contains(E820Entry(0x9FC00, 0x400, .reserved)))
        #expect(m.contains(E820Entry(0xE0000, 0x20000, .reserved)))
        #expect(m.last == E820Entry(0x100000, (128 << 20) - 0x100000, .ram))
    }

    @Test func largeGuestSkipsTheMMIOHole() {
        let size: UInt64 = 4 << 30
        let m = E820.map(memorySize: size)
        #expect(m.contains(E820Entry(0x100000, 0xC000_0000 - 0x100000, .ram)))
        #expect(m.last == E820Entry(0x1_0000_0000, size - 0xC000_0000, .ram))
        let ram = m.filter { $0.kind == .ram }.reduce(0) { $0 + $1.size }
        #expect(ram == size - 0x100000 + 0x9FC00)
        #expect(Layout.ramRegions(size: size).map(\.size) == [0xC000_0000, 0x4000_0000])
    }
}

@Suite struct SegmentTests {
    @Test func descriptorsMatchTheKnownEncodings() {
        let s = BootLoader.segments(longMode: true)
        #expect(s.code.descriptor == 0x00AF_9B00_0000_FFFF)  // 64-bit code, present, DPL0, accessed
        #expect(s.data.descriptor == 0x00CF_9300_0000_FFFF)  // flat 4 GiB data
        #expect(BootLoader.segments(longMode: false).code.descriptor == 0x00CF_9B00_0000_FFFF)
        #expect(s.tss.descriptor == 0x0000_8B00_0000_0067)
        #expect(BootLoader.gdt(longMode: true).count == 5)
    }
}

@Suite struct PageTableTests {
    @Test func identityMapCoversLowFourGiBWith2MiBPages() throws {
        let mem = try GuestMemory(layout: [(0, 1 << 20)])
        try BootLoader.writePageTables(mem)
        let mode = PagingMode(cr0: 0x8005_0033, cr3: Layout.pml4, cr4: 0x20, efer: 0x500)
        for va: UInt64 in [0, 0x1234, 0x20_0000, 0x1000_0000, 0xBFFF_F123, 0xFFFF_FFFF] {
            let t = try mem.translate(va, mode: mode)
            #expect(t.gpa == va)
            #expect(t.pageSize == 2 << 20)
            #expect(t.steps.map(\.name) == ["PML4", "PDPT", "PD"])
        }
        #expect(throws: WalkError.self) { try mem.translate(0x1_0000_0000, mode: mode) }
    }
}

@Suite struct KernelImageTests {
    /// A minimal x86_64 ELF with one PT_LOAD and, optionally, the Xen PVH note.
    static func elf(paddr: UInt64 = 0x100_0000, entry: UInt64 = 0x100_0000, code: [UInt8] = [0xF4], pvh: UInt32? = nil) -> [UInt8] {
        var w = ByteWriter(size: 64)
        w.put([0x7F, 0x45, 0x4C, 0x46, 2, 1, 1], at: 0)
        w.put(UInt16(2), at: 16); w.put(UInt16(62), at: 18); w.put(UInt32(1), at: 20)
        w.put(entry, at: 24); w.put(UInt64(64), at: 32)
        w.put(UInt16(64), at: 52); w.put(UInt16(56), at: 54)
        let phnum = pvh == nil ? 1 : 2
        w.put(UInt16(phnum), at: 56)
        let dataOff = 64 + 56 * phnum
        var note: [UInt8] = []
        if let e = pvh {
            var n = ByteWriter()
            n.append(UInt32(4)); n.append(UInt32(4)); n.append(UInt32(18)); n.append(Array("Xen\0".utf8)); n.append(e)
            note = n.bytes
        }
        // PT_LOAD
        var ph = ByteWriter(size: 56)
        ph.put(UInt32(1), at: 0); ph.put(UInt32(5), at: 4)
        ph.put(UInt64(dataOff + note.count), at: 8); ph.put(paddr, at: 16); ph.put(paddr, at: 24)
        ph.put(UInt64(code.count), at: 32); ph.put(UInt64(code.count + 4096), at: 40)
        w.append(ph.bytes)
        if pvh != nil {
            var pn = ByteWriter(size: 56)
            pn.put(UInt32(4), at: 0); pn.put(UInt64(dataOff), at: 8); pn.put(UInt64(note.count), at: 32)
            w.append(pn.bytes)
        }
        w.append(note)
        w.append(code)
        return w.bytes
    }

    @Test func parsesELFAndFindsThePVHNote() throws {
        let k = try KernelImage(bytes: Self.elf(pvh: 0x100_0040))
        #expect(k.format == .elf)
        #expect(k.pvhEntry == 0x100_0040)
        #expect(k.entry64 == 0x100_0000)
        #expect(k.segments.count == 1)
        #expect(k.end == 0x100_0000 + 1 + 4096)
        #expect(try k.resolve(.auto) == .pvh)
        let plain = try KernelImage(bytes: Self.elf())
        #expect(try plain.resolve(.auto) == .linux64)
        #expect(throws: KernelError.self) { try plain.resolve(.pvh) }
    }

    @Test func rejectsWhatIsNotAKernel() {
        #expect(throws: KernelError.self) { try KernelImage(bytes: Array("hello, world".utf8)) }
        #expect(throws: KernelError.self) { try KernelImage(bytes: [0x7F, 0x45, 0x4C, 0x46, 1, 1, 1] + [UInt8](repeating: 0, count: 60)) }
        var truncated = Self.elf()
        truncated.removeLast(1)
        truncated[64 + 32] = 0xFF  // p_filesz past the end
        #expect(throws: KernelError.self) { try KernelImage(bytes: truncated) }
        #expect(throws: KernelError.self) { try KernelImage(bytes: Self.elf(paddr: 0x8000)) }  // loads under 1 MiB
    }

    static func bzImage(version: UInt16 = 0x020F, xload: UInt16 = 1) -> [UInt8] {
        var w = ByteWriter(size: 0x800)
        w.put(UInt8(3), at: 0x1F1)  // setup_sects
        w.put(UInt8(0x66), at: 0x201)  // jump offset: header ends at 0x268
        w.put(UInt32(0x5372_6448), at: 0x202)
        w.put(version, at: 0x206)
        w.put(UInt8(1), at: 0x211)  // LOADED_HIGH
        w.put(UInt32(0x7FFF_FFFF), at: 0x22C)
        w.put(UInt32(2047), at: 0x238)
        w.put(xload, at: 0x236)
        w.put(UInt32(0x40_0000), at: 0x260)  // init_size 4 MiB
        return w.bytes + [UInt8](repeating: 0x90, count: 0x2000)
    }

    @Test func parsesBzImageSetupHeader() throws {
        let k = try KernelImage(bytes: Self.bzImage())
        #expect(k.format == .bzImage)
        #expect(k.entry64 == 0x100200)
        #expect(k.segments[0].fileOffset == 0x800)
        #expect(k.cmdlineLimit == 2048)
        #expect(k.end == 0x100000 + 0x40_0000)
        #expect(k.setupHeader.count == 0x268 - 0x1F1)
        #expect(throws: KernelError.self) { try KernelImage(bytes: Self.bzImage(version: 0x020A)) }
        #expect(throws: KernelError.self) { try KernelImage(bytes: Self.bzImage(xload: 0)) }
    }

    @Test func loadsLinux64BootParams() throws {
        let mem = try GuestMemory(layout: [(0, 64 << 20)])
        let k = try KernelImage(bytes: Self.bzImage())
        let initrd = [UInt8](repeating: 0xAB, count: 10000)
        let r = try BootLoader.load(
            BootSpec(kernel: k, initrd: initrd, cmdline: "console=ttyS0", memorySize: 64 << 20, vcpus: 1),
            into: mem, acpi: ACPIConfig(vcpus: 1))
        #expect(r.protocolUsed == .linux64)
        #expect(r.cpu.rip == 0x100200)
        #expect(r.cpu.rsi == Layout.zeroPage)
        #expect(r.cpu.cr3 == Layout.pml4)
        let zp = Layout.zeroPage
        #expect(try mem.load(UInt16.self, at: zp + 0x1FE) == 0xAA55)
        #expect(try mem.load(UInt32.self, at: zp + 0x228) == UInt32(Layout.cmdline))
        #expect(try mem.read(Layout.cmdline, count: 14) == Array("console=ttyS0\0".utf8))
        let initrdAddr = UInt64(try mem.load(UInt32.self, at: zp + 0x218))
        #expect(initrdAddr == r.initrdAddress)
        #expect(initrdAddr % 4096 == 0 && initrdAddr + 10000 <= 64 << 20)
        #expect(try mem.load(UInt32.self, at: zp + 0x21C) == 10000)
        #expect(try mem.read(initrdAddr, count: 4) == [0xAB, 0xAB, 0xAB, 0xAB])
        #expect(try mem.load(UInt8.self, at: zp + 0x1E8) == UInt8(E820.map(memorySize: 64 << 20).count))
        #expect(try mem.load(UInt64.self, at: zp + 0x70) == r.rsdp)
        // The protected-mode kernel landed at 1 MiB.
        #expect(try mem.read(0x100000, count: 2) == [0x90, 0x90])
    }

    @Test func loadsPVHStartInfo() throws {
        let mem = try GuestMemory(layout: [(0, 64 << 20)])
        let k = try KernelImage(bytes: Self.elf(code: [0xF4, 0x90], pvh: 0x100_0001))
        let r = try BootLoader.load(
            BootSpec(kernel: k, initrd: [1, 2, 3], cmdline: "x", memorySize: 64 << 20, vcpus: 2),
            into: mem, acpi: ACPIConfig(vcpus: 2))
        #expect(r.protocolUsed == .pvh)
        #expect(r.cpu.rip == 0x100_0001 && r.cpu.rbx == Layout.pvhStartInfo)
        #expect(r.cpu.cr0 & 1 == 1 && r.cpu.cr0 & (1 << 31) == 0)
        let si = Layout.pvhStartInfo
        #expect(try mem.load(UInt32.self, at: si) == 0x336E_C578)
        #expect(try mem.load(UInt32.self, at: si + 12) == 1)  // nr_modules
        #expect(try mem.load(UInt64.self, at: si + 24) == Layout.cmdline)
        #expect(try mem.load(UInt64.self, at: si + 32) == r.rsdp)
        #expect(try mem.load(UInt64.self, at: Layout.pvhModlist) == r.initrdAddress)
        #expect(try mem.load(UInt64.self, at: Layout.pvhModlist + 8) == 3)
        #expect(try mem.load(UInt32.self, at: si + 48) == UInt32(E820.map(memorySize: 64 << 20).count))
        // BSS beyond the file is zeroed; code copied.
        #expect(try mem.read(0x100_0000, count: 3) == [0xF4, 0x90, 0x00])
    }

    @Test func refusesWhatDoesNotFit() throws {
        let k = try KernelImage(bytes: Self.elf(paddr: 0x400_0000))
        #expect(throws: BootError.self) {
            try BootLoader.check(BootSpec(kernel: k, initrd: nil, cmdline: "", memorySize: 32 << 20, vcpus: 1))
        }
        let small = try KernelImage(bytes: Self.elf())
        #expect(throws: BootError.self) {
            try BootLoader.check(BootSpec(kernel: small, initrd: nil, cmdline: String(repeating: "a", count: 2048), memorySize: 64 << 20, vcpus: 1))
        }
        #expect(throws: BootError.self) {
            try BootLoader.check(BootSpec(kernel: small, initrd: [UInt8](repeating: 0, count: 60 << 20), cmdline: "", memorySize: 64 << 20, vcpus: 1))
        }
    }
}

@Suite struct CPUIDTests {
    @Test func topologyAndNestedTemplate() {
        let leaves = [
            CPUIDLeaf(function: 1, ebx: 0xFFFF_0800, ecx: 0xFFFF_FFFF & ~(1 << 31), edx: 0),
            CPUIDLeaf(function: 7, index: 0, ebx: 0xFFFF_FFFF, ecx: 0xFFFF_FFFF, edx: 0xFFFF_FFFF),
            CPUIDLeaf(function: 0xB, index: 1, edx: 0),
        ]
        let out = CPUTemplate.apply(leaves, modifiers: CPUTemplate.nested.modifiers, vcpu: 3, of: 4)
        #expect(out[0].ebx >> 24 == 3)
        #expect((out[0].ebx >> 16) & 0xFF == 4)
        #expect(out[0].ebx & 0xFFFF == 0x0800)
        #expect(out[0].ecx & (1 << 31) != 0)  // hypervisor bit
        #expect(out[0].ecx & (1 << 13) == 0)  // CX16 hidden
        #expect(out[0].ecx & (1 << 26) == 0)  // XSAVE hidden
        #expect(out[0].edx & (1 << 28) != 0)  // HTT
        #expect(out[1].ebx & (1 << 20) == 0 && out[1].ebx & (1 << 7) == 0)  // SMAP, SMEP
        #expect(out[2].edx == 3)
        let custom = CPUTemplate.apply(leaves, modifiers: [CPUIDModifier(function: 7, index: 0, register: .edx, clear: 0xFF, set: 0x1)], vcpu: 0, of: 1)
        #expect(custom[1].edx == 0xFFFF_FF01)
        #expect(CPUTemplate.nested.kernelParameters.contains { $0.hasPrefix("clearcpuid=") && $0.contains("xsave") && $0.contains("cx16") })
        #expect(CPUTemplate.none.modifiers.isEmpty)
    }
}

import Testing
import Foundation
@testable import GuestMemory

@Suite struct GuestMemoryTests {
    @Test func boundsAreCheckedIncludingOverflow() throws {
        let mem = try GuestMemory(layout: [(0, 1 << 20), (0x1_0000_0000, 1 << 20)])
        try mem.store(UInt32(0xDEADBEEF), at: 0xFFFFC)
        #expect(try mem.load(UInt32.self, at: 0xFFFFC) == 0xDEADBEEF)
        #expect(throws: MemoryError.self) { try mem.load(UInt32.self, at: 0xFFFFE) }  // straddles the end
        #expect(throws: MemoryError.self) { try mem.store(UInt8(1), at: 0x10_0000) }  // the hole
        #expect(throws: MemoryError.self) { try mem.read(UInt64.max - 2, count: 8) }  // wraps around
        #expect(throws: MemoryError.self) { try mem.read(0, count: -1) }
        #expect(mem.hostPointer(0x1_0000_0000, length: 1 << 20) != nil)
        #expect(mem.hostPointer(0x1_0000_0001, length: 1 << 20) == nil)
        #expect(mem.hostPointer(0, length: UInt64.max) == nil)
        #expect(mem.totalSize == 2 << 20)
        #expect(throws: MemoryError.self) { try GuestMemory(layout: [(0, 0x2000), (0x1000, 0x1000)]) }
    }
}

@Suite struct PageWalkTests {
    /// Builds 4-level tables at fixed GPAs: a 4 KiB page, a 2 MiB page and a 1 GiB page.
    static func fourLevel() throws -> (GuestMemory, PagingMode) {
        let mem = try GuestMemory(layout: [(0, 8 << 20)])
        let pml4: UInt64 = 0x1000, pdpt: UInt64 = 0x2000, pd: UInt64 = 0x3000, pt: UInt64 = 0x4000
        // GVA 0xFFFF_8000_0000_0000 region: PML4 index 256
        try mem.store(pdpt | 0x7, at: pml4 + 256 * 8)
        try mem.store(pd | 0x3, at: pdpt + 0 * 8)  // kernel-only below
        try mem.store(pt | 0x7, at: pd + 1 * 8)  // 4 KiB pages for 0x20_0000…
        try mem.store(0x0012_3000 | 0x3 | (1 << 63), at: pt + 5 * 8)  // NX, read-write
        try mem.store(0x0040_0000 | 0x83, at: pd + 2 * 8)  // 2 MiB page
        try mem.store(0x8000_0000 | 0x81, at: pdpt + 3 * 8)  // 1 GiB page, read-only
        return (mem, PagingMode(cr0: 0x8000_0001, cr3: pml4, cr4: 0x20, efer: 0x500))
    }

    /// Guest RAM asks for transparent huge pages (the VMA's "hg" flag in smaps) unless told not to
    /// (a VM with a balloon).
    @Test func hugePagesAreAskedForUnlessTurnedOff() throws {
        func vmFlags(_ m: GuestMemory) throws -> [Substring] {
            let addr = m.regions[0].hostAddress
            // Read to the end (a /proc file has no size; String(contentsOfFile:) stops at one page).
            let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/smaps"))
            let smaps = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
            let lines = smaps.split(separator: "\n")
            // The mapping holding guest RAM (it may have merged with a neighbour).
            let i = try #require(
                lines.firstIndex { line in
                    let range = line.split(separator: " ", maxSplits: 1)[0].split(separator: "-")
                    guard range.count == 2, let lo = UInt(range[0], radix: 16), let hi = UInt(range[1], radix: 16) else { return false }
                    return lo <= addr && addr < hi
                })
            let flags = try #require(lines[i...].first { $0.hasPrefix("VmFlags:") })
            return flags.split(separator: " ").dropFirst().map { $0 }
        }
        let with = try GuestMemory(layout: [(0, 4 << 20)])
        #expect(try vmFlags(with).contains("hg"))
        let without = try GuestMemory(layout: [(0, 4 << 20)], hugePages: false)
        #expect(try !vmFlags(without).contains("hg"))
    }

    @Test func walksFourKiB2MiBAnd1GiBPages() throws {
        let (mem, mode) = try Self.fourLevel()
        let base: UInt64 = 0xFFFF_8000_0000_0000
        let t4k = try mem.translate(base + 0x20_5ABC, mode: mode)
        #expect(t4k.gpa == 0x12_3ABC)
        #expect(t4k.pageSize == 4096)
        #expect(t4k.steps.map(\.level) == [4, 3, 2, 1])
        #expect(!t4k.executable && t4k.writable && !t4k.user)
        let t2m = try mem.translate(base + 0x40_1234, mode: mode)
        #expect(t2m.gpa == 0x40_1234 && t2m.pageSize == 2 << 20)
        let t1g = try mem.translate(base + 0xC000_0000 + 0x1234_5678, mode: mode)
        #expect(t1g.gpa == 0x8000_0000 + 0x1234_5678 && t1g.pageSize == 1 << 30)
        #expect(!t1g.writable && t1g.executable)
        #expect(t1g.steps.last?.isLeaf == true && t1g.steps.count == 2)
    }

    @Test func reportsFaults() throws {
        let (mem, mode) = try Self.fourLevel()
        #expect(throws: WalkError.notPresent(level: 4, entryAddress: 0x1000)) { try mem.translate(0x1000, mode: mode) }
        #expect(throws: WalkError.nonCanonical(0x0000_8000_0000_0000)) { try mem.translate(0x0000_8000_0000_0000, mode: mode) }
        var bad = mode
        bad.cr3 = 0x10_0000_0000  // page tables outside RAM
        #expect(throws: WalkError.self) { try mem.translate(0, mode: bad) }
        // Reserved bits inside a 2 MiB page frame.
        try mem.store(0x0040_1000 | 0x83 | 0x2000, at: 0x3000 + 3 * 8)
        #expect(throws: WalkError.self) { try mem.translate(0xFFFF_8000_0060_0000, mode: mode) }
    }

    @Test func fiveLevelPAEAnd32Bit() throws {
        let mem = try GuestMemory(layout: [(0, 8 << 20)])
        // 5-level: PML5 at 0x1000 → PML4 0x2000 → PDPT 0x3000 with a 1 GiB page.
        try mem.store(UInt64(0x2000 | 0x3), at: 0x1000 + 1 * 8)
        try mem.store(UInt64(0x3000 | 0x3), at: 0x2000)
        try mem.store(UInt64(0x4000_0000 | 0x83), at: 0x3000)
        let la57 = PagingMode(cr0: 0x8000_0001, cr3: 0x1000, cr4: 0x20 | 0x1000, efer: 0x500)
        let t = try mem.translate(1 << 48 | 0x1234, mode: la57)
        #expect(t.gpa == 0x4000_1234 && t.steps.count == 3 && t.steps[0].name == "PML5")
        // PAE: PDPTEs at 0x5000, PD at 0x6000 with a 2 MiB page.
        try mem.store(UInt64(0x6000 | 0x1), at: 0x5000 + 8)
        try mem.store(UInt64(0x20_0000 | 0x83), at: 0x6000)
        let pae = PagingMode(cr0: 0x8000_0001, cr3: 0x5000, cr4: 0x20, efer: 0)
        #expect(try mem.translate(0x4000_0123, mode: pae).gpa == 0x20_0123)
        // 32-bit with PSE: a 4 MiB page, and a 4 KiB page.
        try mem.store(UInt32(0x0040_0000 | 0x83), at: 0x7000 + 2 * 4)
        try mem.store(UInt32(0x8000 | 0x3), at: 0x7000 + 3 * 4)
        try mem.store(UInt32(0x0030_0000 | 0x3), at: 0x8000 + 1 * 4)
        let legacy = PagingMode(cr0: 0x8000_0001, cr3: 0x7000, cr4: 0x10, efer: 0)
        #expect(try mem.translate(0x0080_0042, mode: legacy).gpa == 0x40_0042)
        #expect(try mem.translate(0x00C0_1042, mode: legacy).gpa == 0x30_0042)
        // Paging off: identity.
        #expect(try mem.translate(0x1234, mode: PagingMode(cr0: 1, cr3: 0, cr4: 0, efer: 0)).gpa == 0x1234)
    }

    @Test func readsAcrossPages() throws {
        let (mem, mode) = try Self.fourLevel()
        try mem.write([1, 2, 3, 4, 5, 6, 7, 8], at: 0x40_0FFC)
        let r = mem.readVirtual(0xFFFF_8000_0040_0FFC, count: 8, mode: mode)
        #expect(r.bytes == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(r.firstGPA == 0x40_0FFC)
        let partial = mem.readVirtual(0xFFFF_8000_0020_5FFE, count: 4, mode: mode)  // next page unmapped
        #expect(partial.bytes.count == 2)
    }
}

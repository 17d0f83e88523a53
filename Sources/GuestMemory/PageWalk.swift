/// The guest's paging state, from its control registers.
public struct PagingMode: Sendable, Equatable {
    public var cr0: UInt64
    public var cr3: UInt64
    public var cr4: UInt64
    public var efer: UInt64

    public init(cr0: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64) {
        self.cr0 = cr0; self.cr3 = cr3; self.cr4 = cr4; self.efer = efer
    }

    public var pagingEnabled: Bool { cr0 & (1 << 31) != 0 }
    public var pae: Bool { cr4 & (1 << 5) != 0 }
    public var longMode: Bool { efer & (1 << 10) != 0 }  // EFER.LMA
    public var la57: Bool { cr4 & (1 << 12) != 0 }
    public var pse: Bool { cr4 & (1 << 4) != 0 }

    public var levels: Int {
        if !pagingEnabled { return 0 }
        if longMode { return la57 ? 5 : 4 }
        return pae ? 3 : 2
    }
}

/// One level of a page walk: which table entry was read and what it held.
public struct WalkStep: Sendable, Equatable {
    public var level: Int  // 5 = PML5 … 1 = PT
    public var name: String
    public var entryAddress: UInt64  // guest-physical address of the entry
    public var entry: UInt64
    public var isLeaf: Bool
    public var pageSize: UInt64  // for a leaf: 4 KiB, 2 MiB, 4 MiB or 1 GiB
}

public struct Translation: Sendable, Equatable {
    public var gpa: UInt64
    public var steps: [WalkStep]
    public var writable: Bool
    public var user: Bool
    public var executable: Bool
    public var pageSize: UInt64
}

public enum WalkError: Error, Equatable, CustomStringConvertible {
    case notPresent(level: Int, entryAddress: UInt64)
    case reservedBits(level: Int, entry: UInt64)
    case nonCanonical(UInt64)
    case tableOutsideRAM(UInt64)

    public var description: String {
        switch self {
        case let .notPresent(level, a): return "page not present (level \(level) entry at GPA 0x\(String(a, radix: 16)))"
        case let .reservedBits(level, e): return "reserved bits set in level \(level) entry 0x\(String(e, radix: 16))"
        case let .nonCanonical(v): return "non-canonical address 0x\(String(v, radix: 16))"
        case let .tableOutsideRAM(a): return "page-table entry at 0x\(String(a, radix: 16)) is outside guest RAM"
        }
    }
}

extension GuestMemory {
    /// Walks the guest page tables for `gva` (GVA → GPA), reading every level from guest memory.
    /// Supports paging off, 32-bit (with PSE 4 MiB pages), PAE, and 4- or 5-level long mode with
    /// 2 MiB and 1 GiB pages; reports each level and the effective permissions.
    public func translate(_ gva: UInt64, mode: PagingMode) throws(WalkError) -> Translation {
        let levels = mode.levels
        if levels == 0 {
            return Translation(gpa: gva & 0xFFFF_FFFF, steps: [], writable: true, user: true, executable: true, pageSize: 4096)
        }
        let addrMask: UInt64 = 0x000F_FFFF_FFFF_F000
        var steps: [WalkStep] = []
        var writable = true, user = true, nx = false
        if levels == 2 {
            let va = gva & 0xFFFF_FFFF
            let pdeAddr = (mode.cr3 & 0xFFFF_F000) + ((va >> 22) & 0x3FF) * 4
            guard let pde = try? load(UInt32.self, at: pdeAddr) else { throw .tableOutsideRAM(pdeAddr) }
            let big = mode.pse && pde & 0x80 != 0
            steps.append(WalkStep(level: 2, name: "PD", entryAddress: pdeAddr, entry: UInt64(pde), isLeaf: big, pageSize: big ? 4 << 20 : 0))
            guard pde & 1 != 0 else { throw .notPresent(level: 2, entryAddress: pdeAddr) }
            writable = pde & 2 != 0; user = pde & 4 != 0
            if big {
                let base = UInt64(pde & 0xFFC0_0000) | (UInt64(pde >> 13) & 0xFF) << 32
                return Translation(gpa: base | (va & 0x3F_FFFF), steps: steps, writable: writable, user: user, executable: true, pageSize: 4 << 20)
            }
            let pteAddr = UInt64(pde & 0xFFFF_F000) + ((va >> 12) & 0x3FF) * 4
            guard let pte = try? load(UInt32.self, at: pteAddr) else { throw .tableOutsideRAM(pteAddr) }
            steps.append(WalkStep(level: 1, name: "PT", entryAddress: pteAddr, entry: UInt64(pte), isLeaf: true, pageSize: 4096))
            guard pte & 1 != 0 else { throw .notPresent(level: 1, entryAddress: pteAddr) }
            writable = writable && pte & 2 != 0; user = user && pte & 4 != 0
            return Translation(gpa: UInt64(pte & 0xFFFF_F000) | (va & 0xFFF), steps: steps, writable: writable, user: user, executable: true, pageSize: 4096)
        }
        if levels >= 4 {
            // Canonical check: bits above the top translated bit must equal it.
            let bits = levels == 5 ? 57 : 48
            let top = Int64(bitPattern: gva << UInt64(64 - bits)) >> Int64(64 - bits)
            if UInt64(bitPattern: top) != gva { throw .nonCanonical(gva) }
        }
        let names = [1: "PT", 2: "PD", 3: "PDPT", 4: "PML4", 5: "PML5"]
        var table: UInt64
        var level: Int
        if levels == 3 {
            // PAE: CR3 points to four PDPTEs (32-byte aligned).
            let va = gva & 0xFFFF_FFFF
            let pdpteAddr = (mode.cr3 & 0xFFFF_FFE0) + ((va >> 30) & 3) * 8
            guard let e = try? load(UInt64.self, at: pdpteAddr) else { throw .tableOutsideRAM(pdpteAddr) }
            steps.append(WalkStep(level: 3, name: "PDPT", entryAddress: pdpteAddr, entry: e, isLeaf: false, pageSize: 0))
            guard e & 1 != 0 else { throw .notPresent(level: 3, entryAddress: pdpteAddr) }
            table = e & addrMask
            level = 2
        } else {
            table = mode.cr3 & addrMask
            level = levels
        }
        while true {
            let shift = UInt64(12 + 9 * (level - 1))
            let index = (gva >> shift) & 0x1FF
            let entryAddr = table + index * 8
            guard let e = try? load(UInt64.self, at: entryAddr) else { throw .tableOutsideRAM(entryAddr) }
            let isLarge = (level == 2 || level == 3) && e & 0x80 != 0
            let leaf = level == 1 || isLarge
            let size: UInt64 = leaf ? (1 << shift) : 0
            steps.append(WalkStep(level: level, name: names[level] ?? "L\(level)", entryAddress: entryAddr, entry: e, isLeaf: leaf, pageSize: size))
            guard e & 1 != 0 else { throw .notPresent(level: level, entryAddress: entryAddr) }
            writable = writable && e & 2 != 0
            user = user && e & 4 != 0
            nx = nx || (e >> 63) & 1 != 0
            if leaf {
                let offsetMask = (UInt64(1) << shift) - 1
                let base = e & addrMask & ~offsetMask
                if isLarge, (e & addrMask & offsetMask) & ~UInt64(0x1000) != 0 {
                    // Bits between 12 and the page size (except PAT at bit 12) must be zero.
                    throw .reservedBits(level: level, entry: e)
                }
                return Translation(
                    gpa: base | (gva & offsetMask), steps: steps, writable: writable, user: user,
                    executable: !nx, pageSize: size)
            }
            table = e & addrMask
            level -= 1
        }
    }

    /// Reads `count` bytes at guest-virtual `gva`, translating page by page.
    public func readVirtual(_ gva: UInt64, count: Int, mode: PagingMode) -> (bytes: [UInt8], firstGPA: UInt64?) {
        var out: [UInt8] = []
        var first: UInt64? = nil
        var va = gva
        while out.count < count {
            guard let t = try? translate(va, mode: mode) else { break }
            if first == nil { first = t.gpa }
            let inPage = Int(4096 - (va & 0xFFF))
            let n = min(inPage, count - out.count)
            guard let chunk = try? read(t.gpa, count: n) else { break }
            out += chunk
            va &+= UInt64(n)
        }
        return (out, first)
    }
}

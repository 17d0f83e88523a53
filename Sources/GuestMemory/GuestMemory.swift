#if canImport(Glibc)
import Glibc
#endif

/// One contiguous range of guest-physical memory backed by an anonymous host mapping.
public struct MemoryRegion: Sendable {
    public let guestPhys: UInt64
    public let size: UInt64
    /// Host virtual address of the first byte (stored as an integer so the struct stays Sendable).
    public let hostAddress: UInt

    public var host: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: hostAddress)! }
    public var end: UInt64 { guestPhys + size }

    @inlinable @inline(__always)
    func contains(_ gpa: UInt64, _ length: UInt64) -> Bool {
        gpa >= guestPhys && length <= size && gpa - guestPhys <= size - length
    }
}

public enum MemoryError: Error, Equatable, CustomStringConvertible {
    case outOfBounds(gpa: UInt64, length: UInt64)
    case mmapFailed(errno: Int32, bytes: UInt64)
    case overlap(UInt64)

    public var description: String {
        switch self {
        case let .outOfBounds(gpa, length):
            return "guest-physical range 0x\(String(gpa, radix: 16))+0x\(String(length, radix: 16)) is not in guest RAM"
        case let .mmapFailed(e, bytes):
            return "cannot map \(bytes >> 20) MiB of guest memory: \(String(cString: strerror(e)))"
        case let .overlap(gpa):
            return "memory regions overlap at 0x\(String(gpa, radix: 16))"
        }
    }
}

/// Guest-physical memory: a set of regions. Every access is bounds-checked, because addresses and
/// lengths usually come from the guest, which is hostile input.
public final class GuestMemory: @unchecked Sendable {
    public let regions: [MemoryRegion]

    /// Maps anonymous memory for each (guest-physical base, size) pair. `hugePages` asks for
    /// transparent huge pages (see below); a VM with a balloon goes without them.
    public init(layout: [(guestPhys: UInt64, size: UInt64)], hugePages: Bool = true) throws(MemoryError) {
        var made: [MemoryRegion] = []
        let sorted = layout.sorted { $0.guestPhys < $1.guestPhys }
        for (i, r) in sorted.enumerated() {
            if i > 0, sorted[i - 1].guestPhys + sorted[i - 1].size > r.guestPhys {
                for m in made { munmap(m.host, Int(m.size)) }
                throw .overlap(r.guestPhys)
            }
            let p = mmap(nil, Int(r.size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            guard let p, p != MAP_FAILED else {
                let e = errno
                for m in made { munmap(m.host, Int(m.size)) }
                throw .mmapFailed(errno: e, bytes: r.size)
            }
            // Transparent huge pages: one fault per 2 MiB instead of 512 (faults are costly when KVM is
            // nested), and a shorter walk for the host's TLB. Advisory: ignored where THP is off.
            // Not with a balloon: the 4 KiB pages it gives back would be filled again by khugepaged,
            // which collapses a 2 MiB range into a huge page when a single page of it is present.
            if hugePages { _ = madvise(p, Int(r.size), MADV_HUGEPAGE) }
            made.append(MemoryRegion(guestPhys: r.guestPhys, size: r.size, hostAddress: UInt(bitPattern: p)))
        }
        regions = made
    }

    deinit {
        for r in regions { munmap(r.host, Int(r.size)) }
    }

    public var totalSize: UInt64 { regions.reduce(0) { $0 + $1.size } }

    /// Marks all guest RAM mergeable by KSM (MADV_MERGEABLE): the host's ksmd may then share identical
    /// pages, within this VM and with other mergeable memory on the host. Returns errno on failure.
    public func markMergeable() -> Int32? {
        for r in regions where madvise(r.host, Int(r.size), MADV_MERGEABLE) != 0 { return errno }
        return nil
    }

    /// Host pointer for `length` bytes at `gpa`, or nil unless the whole range lies in one region.
    @inlinable @inline(__always)
    public func hostPointer(_ gpa: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for r in regions where r.contains(gpa, length) {
            return r.host.advanced(by: Int(gpa - r.guestPhys))
        }
        return nil
    }

    /// The region holding `gpa`, if any.
    public func region(containing gpa: UInt64) -> MemoryRegion? {
        regions.first { $0.contains(gpa, 1) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer, at gpa: UInt64) throws(MemoryError) {
        guard let p = hostPointer(gpa, length: UInt64(bytes.count)) else {
            throw .outOfBounds(gpa: gpa, length: UInt64(bytes.count))
        }
        if let base = bytes.baseAddress { p.copyMemory(from: base, byteCount: bytes.count) }
    }

    public func write(_ bytes: [UInt8], at gpa: UInt64) throws(MemoryError) {
        guard let p = hostPointer(gpa, length: UInt64(bytes.count)) else {
            throw .outOfBounds(gpa: gpa, length: UInt64(bytes.count))
        }
        bytes.withUnsafeBytes { if let b = $0.baseAddress { p.copyMemory(from: b, byteCount: bytes.count) } }
    }

    public func read(_ gpa: UInt64, count: Int) throws(MemoryError) -> [UInt8] {
        guard count >= 0, let p = hostPointer(gpa, length: UInt64(count)) else {
            throw .outOfBounds(gpa: gpa, length: UInt64(max(count, 0)))
        }
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }

    @inlinable @inline(__always)
    public func load<T: FixedWidthInteger>(_ type: T.Type, at gpa: UInt64) throws(MemoryError) -> T {
        guard let p = hostPointer(gpa, length: UInt64(MemoryLayout<T>.size)) else {
            throw .outOfBounds(gpa: gpa, length: UInt64(MemoryLayout<T>.size))
        }
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    @inlinable @inline(__always)
    public func store<T: FixedWidthInteger>(_ value: T, at gpa: UInt64) throws(MemoryError) {
        guard let p = hostPointer(gpa, length: UInt64(MemoryLayout<T>.size)) else {
            throw .outOfBounds(gpa: gpa, length: UInt64(MemoryLayout<T>.size))
        }
        p.storeBytes(of: value.littleEndian, as: T.self)
    }

    public func fill(_ byte: UInt8, at gpa: UInt64, count: Int) throws(MemoryError) {
        guard let p = hostPointer(gpa, length: UInt64(count)) else {
            throw .outOfBounds(gpa: gpa, length: UInt64(count))
        }
        memset(p, Int32(byte), count)
    }

    /// Bytes of guest RAM the host holds in memory (mincore(2) over every region): what the guest has
    /// touched, less what a balloon or free page reporting gave back.
    public func residentBytes() -> UInt64 {
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        var total: UInt64 = 0
        for r in regions {
            let pages = Int((r.size + page - 1) / page)
            var vec = [UInt8](repeating: 0, count: pages)
            guard mincore(r.host, Int(r.size), &vec) == 0 else { continue }
            for v in vec where v & 1 != 0 { total += page }
        }
        return total
    }
}

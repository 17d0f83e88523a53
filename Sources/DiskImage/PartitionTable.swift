/// A disk's partitions from its GPT (behind a protective MBR) or its MBR's four primary entries;
/// 512-byte sectors. A disk with neither is one whole-disk "partition" numbered 0 (a bare filesystem).
public struct Partition: Equatable, Sendable {
    /// 1-based, as Linux names it (/dev/vda1); 0 for a disk without a partition table.
    public let number: Int
    public let offset: UInt64
    public let size: UInt64
    /// GPT: the type GUID in its usual text form (upper case); MBR: "mbr:XX" with the type byte.
    public let type: String
    /// GPT: the partition's own GUID (PARTUUID), upper case; nil for MBR.
    public let uuid: String?
}

public enum PartitionTable {
    public static let sector: UInt64 = 512
    /// More entries than any real table has: a bound on what a damaged header can make us read.
    static let maxEntries = 256

    public static func read(_ disk: DiskBytes) throws(DiskImageError) -> [Partition] {
        guard disk.size >= 2 * sector else { return [Partition(number: 0, offset: 0, size: disk.size, type: "none", uuid: nil)] }
        let mbr = LittleEndian(bytes: try disk.read(0, Int(sector), what: "the MBR"), what: "the MBR")
        guard try mbr.u16(510) == 0xAA55 else { return [Partition(number: 0, offset: 0, size: disk.size, type: "none", uuid: nil)] }
        var primaries: [Partition] = []
        for i in 0..<4 {
            let e = 446 + 16 * i
            let type = try mbr.u8(e + 4)
            let first = UInt64(try mbr.u32(e + 8)), count = UInt64(try mbr.u32(e + 12))
            guard type != 0, count != 0 else { continue }
            if type == 0xEE { return try gpt(disk) }
            guard first * sector <= disk.size, count * sector <= disk.size - first * sector else {
                throw .format("MBR partition \(i + 1) lies past the end of the disk")
            }
            primaries.append(
                Partition(number: i + 1, offset: first * sector, size: count * sector, type: "mbr:" + hex(UInt64(type), digits: 2), uuid: nil))
        }
        // A boot sector's signature with no entries: a filesystem that starts at sector 0 (FAT), not a table.
        return primaries.isEmpty ? [Partition(number: 0, offset: 0, size: disk.size, type: "none", uuid: nil)] : primaries
    }

    static func gpt(_ disk: DiskBytes) throws(DiskImageError) -> [Partition] {
        let h = LittleEndian(bytes: try disk.read(sector, Int(sector), what: "the GPT header"), what: "the GPT header")
        guard try h.slice(0, 8) == Array("EFI PART".utf8) else { throw .format("a protective MBR without a GPT header") }
        let entriesLBA = try h.u64(72), count = Int(try h.u32(80)), entrySize = Int(try h.u32(84))
        guard count >= 1, count <= maxEntries, entrySize >= 128, entrySize <= 1024, entrySize % 8 == 0 else {
            throw .format("GPT header: \(count) entries of \(entrySize) bytes")
        }
        guard entriesLBA >= 2, entriesLBA < disk.size / sector else { throw .format("GPT entries at LBA \(entriesLBA)") }
        let table = LittleEndian(bytes: try disk.read(entriesLBA * sector, count * entrySize, what: "the GPT entries"), what: "the GPT entries")
        var parts: [Partition] = []
        for i in 0..<count {
            let e = i * entrySize
            let type = try table.slice(e, 16)
            guard type.contains(where: { $0 != 0 }) else { continue }
            let first = try table.u64(e + 32), last = try table.u64(e + 40)
            guard first <= last, last < disk.size / sector else { throw .format("GPT partition \(i + 1): sectors \(first)-\(last)") }
            parts.append(
                Partition(number: i + 1, offset: first * sector, size: (last - first + 1) * sector, type: guid(type), uuid: guid(try table.slice(e + 16, 16))))
        }
        return parts
    }

    /// A GUID's mixed-endian bytes as text: the first three groups are little-endian.
    static func guid(_ b: [UInt8]) -> String {
        let order = [3, 2, 1, 0, -1, 5, 4, -1, 7, 6, -1, 8, 9, -1, 10, 11, 12, 13, 14, 15]
        return order.map { $0 < 0 ? "-" : hex(UInt64(b[$0]), digits: 2) }.joined()
    }

    static func hex(_ v: UInt64, digits: Int) -> String {
        let s = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, digits - s.count)) + s
    }
}

import SystemKit
#if canImport(Glibc)
import Glibc
#endif

/// KVM's binary statistics (KVM_GET_STATS_FD, Linux 5.14+): a header, descriptors naming each statistic,
/// and a data block that the kernel keeps current; read with pread at any time, from any thread.
/// Layout: header {u32 flags, name_size, num_desc, id_offset, desc_offset, data_offset}; each descriptor
/// {u32 flags; s16 exponent; u16 size; u32 offset; u32 bucket_size; char name[name_size]}; a statistic is
/// `size` u64 values at data_offset + offset. Only single-value statistics are kept (histograms skipped).
public struct KVMStats: Sendable {
    public struct Entry: Sendable, Equatable {
        public let name: String
        public let offset: Int  // from the start of the data block
    }
    public let entries: [Entry]
    public let dataOffset: Int
    public let dataSize: Int

    /// Parses the header and descriptors (`bytes` from offset 0 of the file); nil when malformed.
    public init?(header bytes: [UInt8]) {
        func u32(_ o: Int) -> Int? {
            o >= 0 && o + 4 <= bytes.count ? Int(bytes[o]) | Int(bytes[o + 1]) << 8 | Int(bytes[o + 2]) << 16 | Int(bytes[o + 3]) << 24 : nil
        }
        func u16(_ o: Int) -> Int? { o >= 0 && o + 2 <= bytes.count ? Int(bytes[o]) | Int(bytes[o + 1]) << 8 : nil }
        guard let nameSize = u32(4), let count = u32(8), let descOffset = u32(16), let dataOffset = u32(20),
            nameSize > 0, nameSize <= 256, count <= 4096
        else { return nil }
        var out: [Entry] = []
        var end = 0
        for i in 0..<count {
            let d = descOffset + i * (16 + nameSize)
            guard let size = u16(d + 6), let off = u32(d + 8), d + 16 + nameSize <= bytes.count else { return nil }
            end = max(end, off + 8 * size)
            guard size == 1 else { continue }
            let raw = bytes[(d + 16)..<(d + 16 + nameSize)]
            let name = String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            out.append(Entry(name: name, offset: off))
        }
        entries = out
        self.dataOffset = dataOffset
        dataSize = end
    }

    /// Reads the descriptors from a stats fd.
    public init?(fd: Int32) {
        var head = [UInt8](repeating: 0, count: 24)
        guard pread(fd, &head, 24, 0) == 24 else { return nil }
        let descOffset = Int(head[16]) | Int(head[17]) << 8 | Int(head[18]) << 16 | Int(head[19]) << 24
        let dataOffset = Int(head[20]) | Int(head[21]) << 8 | Int(head[22]) << 16 | Int(head[23]) << 24
        let length = max(descOffset, dataOffset)
        guard length >= 24, length <= 1 << 20 else { return nil }
        var all = [UInt8](repeating: 0, count: length)
        guard pread(fd, &all, length, 0) == length else { return nil }
        self.init(header: all)
    }

    /// The current values, by name, from the data block.
    public func values(data: [UInt8]) -> [(String, UInt64)] {
        entries.compactMap { e in
            guard e.offset >= 0, e.offset + 8 <= data.count else { return nil }
            var v: UInt64 = 0
            for k in 0..<8 { v |= UInt64(data[e.offset + k]) << (8 * UInt64(k)) }
            return (e.name, v)
        }
    }

    public func read(fd: Int32) -> [(String, UInt64)] {
        var data = [UInt8](repeating: 0, count: dataSize)
        guard dataSize > 0, pread(fd, &data, dataSize, off_t(dataOffset)) == dataSize else { return [] }
        return values(data: data)
    }
}

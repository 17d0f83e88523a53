#if canImport(Glibc)
import Glibc
#endif

/// Reads a disk's bytes: a qcow2 image (through its backing chain) or a raw file. The disk is a user's
/// upload, so every reader built on this checks each offset and length it takes from the disk's content.
public struct DiskBytes: @unchecked Sendable {
    public let size: UInt64
    let readAt: (UInt64, Int) -> [UInt8]?

    public init(size: UInt64, read: @escaping (UInt64, Int) -> [UInt8]?) {
        self.size = size; self.readAt = read
    }

    /// A qcow2 image opened read-only.
    public init(qcow2 image: QCow2Image) {
        self.init(size: image.virtualSize) { offset, count in
            var b = [UInt8](repeating: 0, count: count)
            return b.withUnsafeMutableBytes { image.read(into: $0.baseAddress!, count: count, at: offset) } ? b : nil
        }
    }

    /// A raw file's descriptor (the caller keeps it open while this is used).
    public init(rawFD fd: Int32) throws(DiskImageError) {
        guard let size = rawSize(fd) else { throw .errno("fstat") }
        self.init(size: size) { offset, count in
            var b = [UInt8](repeating: 0, count: count)
            return b.withUnsafeMutableBytes { preadFull(fd, $0.baseAddress!, count, offset) } ? b : nil
        }
    }

    /// `count` bytes at `offset`, which must lie inside the disk.
    public func read(_ offset: UInt64, _ count: Int, what: @autoclosure () -> String) throws(DiskImageError) -> [UInt8] {
        guard count >= 0, offset <= size, UInt64(count) <= size - offset else {
            throw .format("\(what()) lies past the end of the disk (\(count) bytes at \(offset) of \(size))")
        }
        guard let b = readAt(offset, count) else { throw .format("cannot read \(what()) (\(count) bytes at \(offset))") }
        return b
    }
}

/// Little-endian fields of a byte array; an offset past the end reads as a damaged structure.
struct LittleEndian {
    let bytes: [UInt8]
    let what: String

    func u8(_ o: Int) throws(DiskImageError) -> UInt8 {
        guard o >= 0, o < bytes.count else { throw .format("\(what) is too short") }
        return bytes[o]
    }
    func u16(_ o: Int) throws(DiskImageError) -> UInt16 { UInt16(try u8(o)) | UInt16(try u8(o + 1)) << 8 }
    func u32(_ o: Int) throws(DiskImageError) -> UInt32 { UInt32(try u16(o)) | UInt32(try u16(o + 2)) << 16 }
    func u64(_ o: Int) throws(DiskImageError) -> UInt64 { UInt64(try u32(o)) | UInt64(try u32(o + 4)) << 32 }
    func slice(_ o: Int, _ n: Int) throws(DiskImageError) -> [UInt8] {
        guard o >= 0, n >= 0, o <= bytes.count, n <= bytes.count - o else { throw .format("\(what) is too short") }
        return Array(bytes[o..<o + n])
    }
}

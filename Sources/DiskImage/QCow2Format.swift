#if canImport(Glibc)
import Glibc
#endif

/// The parts of the qcow2 format (QEMU's docs/interop/qcow2.txt) that Kumo reads and writes: the header,
/// L1/L2 entries, 16-bit refcounts. All numbers in the file are big-endian.
public enum QCow2 {
    public static let magic: UInt32 = 0x5146_49fb  // "QFI\xfb"
    public static let headerLengthV3 = 104
    public static let backingFormatExtension: UInt32 = 0xe279_2aca
    /// L1/L2 entry bit 63: the cluster's refcount is exactly one (written in place).
    public static let copied: UInt64 = 1 << 63
    /// L2 entry bit 62: a compressed cluster (Kumo reads none: imports are converted).
    public static let compressed: UInt64 = 1 << 62
    /// L2 entry bit 0 (version 3): the cluster reads as zeros.
    public static let zeroFlag: UInt64 = 1
    /// Bits 9-55: a host offset.
    public static let offsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    /// Incompatible feature bits.
    public static let dirty: UInt64 = 1 << 0, corrupt: UInt64 = 1 << 1
    /// The cluster size Kumo creates overlays with (QEMU's default).
    public static let defaultClusterBits = 16
    /// The longest backing chain opened (a loop in a chain ends here too).
    public static let maxChainDepth = 8

    public struct Header: Equatable, Sendable {
        public var version: UInt32 = 3
        public var backingFileOffset: UInt64 = 0
        public var backingFileSize: UInt32 = 0
        public var clusterBits: UInt32 = UInt32(QCow2.defaultClusterBits)
        public var size: UInt64 = 0
        public var cryptMethod: UInt32 = 0
        public var l1Size: UInt32 = 0
        public var l1TableOffset: UInt64 = 0
        public var refcountTableOffset: UInt64 = 0
        public var refcountTableClusters: UInt32 = 0
        public var snapshots: UInt32 = 0
        public var snapshotsOffset: UInt64 = 0
        public var incompatibleFeatures: UInt64 = 0
        public var compatibleFeatures: UInt64 = 0
        public var autoclearFeatures: UInt64 = 0
        public var refcountOrder: UInt32 = 4
        public var headerLength: UInt32 = UInt32(QCow2.headerLengthV3)

        public init() {}

        public var clusterSize: UInt64 { 1 << UInt64(clusterBits) }
        /// Entries in one L2 table.
        public var l2Entries: UInt64 { clusterSize / 8 }

        /// Parses and checks the header's own consistency; `fileSize` bounds its offsets.
        public init(bytes b: [UInt8], fileSize: UInt64) throws(DiskImageError) {
            guard b.count >= 72, be32(b, 0) == QCow2.magic else { throw .format("not a qcow2 image (no QFI\\xfb magic)") }
            version = be32(b, 4)
            guard version == 2 || version == 3 else { throw .format("qcow2 version \(version) (2 and 3 are known)") }
            backingFileOffset = be64(b, 8)
            backingFileSize = be32(b, 16)
            clusterBits = be32(b, 20)
            size = be64(b, 24)
            cryptMethod = be32(b, 32)
            l1Size = be32(b, 36)
            l1TableOffset = be64(b, 40)
            refcountTableOffset = be64(b, 48)
            refcountTableClusters = be32(b, 56)
            snapshots = be32(b, 60)
            snapshotsOffset = be64(b, 64)
            if version == 3 {
                guard b.count >= QCow2.headerLengthV3 else { throw .format("a version 3 header needs 104 bytes") }
                incompatibleFeatures = be64(b, 72)
                compatibleFeatures = be64(b, 80)
                autoclearFeatures = be64(b, 88)
                refcountOrder = be32(b, 96)
                headerLength = be32(b, 100)
                guard headerLength >= 104, headerLength % 8 == 0 else { throw .format("header length \(headerLength) (at least 104, a multiple of 8)") }
            } else {
                headerLength = 72
            }
            guard (9...21).contains(clusterBits) else { throw .format("cluster_bits \(clusterBits) (9 to 21 are supported)") }
            guard cryptMethod == 0 else { throw .unsupported("encrypted qcow2 images") }
            let unknown = incompatibleFeatures & ~(QCow2.dirty | QCow2.corrupt)
            guard unknown == 0 else {
                throw .unsupported("qcow2 incompatible features 0x\(String(unknown, radix: 16)) (external data files, compression types, extended L2 entries)")
            }
            guard refcountOrder == 4 else { throw .unsupported("refcount_order \(refcountOrder) (16-bit refcounts only)") }
            let cs = clusterSize
            guard UInt64(headerLength) <= cs else { throw .format("header longer than a cluster") }
            // L1 must cover the virtual size; both tables must be aligned and inside the file.
            let needed = (size + cs * l2Entries - 1) / (cs * l2Entries)
            guard UInt64(l1Size) >= needed, l1Size <= 1 << 22 else { throw .format("L1 table of \(l1Size) entries for \(size) bytes (needs \(needed))") }
            guard l1TableOffset % cs == 0, l1TableOffset > 0, l1TableOffset + UInt64(l1Size) * 8 <= fileSize || l1Size == 0 else {
                throw .format("L1 table offset \(l1TableOffset) is not a cluster inside the file")
            }
            guard refcountTableOffset % cs == 0, refcountTableOffset > 0, refcountTableClusters > 0, refcountTableClusters <= (8 << 20) / UInt32(cs),
                refcountTableOffset + UInt64(refcountTableClusters) * cs <= fileSize
            else { throw .format("refcount table (offset \(refcountTableOffset), \(refcountTableClusters) clusters) is not inside the file") }
            if backingFileOffset != 0 {
                guard backingFileSize > 0, backingFileSize <= 1023, backingFileOffset + UInt64(backingFileSize) <= cs else {
                    throw .format("backing file name (offset \(backingFileOffset), \(backingFileSize) bytes) is not inside the first cluster")
                }
            }
        }

        /// The header's bytes (version 3 only: what Kumo writes).
        public var bytes: [UInt8] {
            var b = [UInt8](repeating: 0, count: QCow2.headerLengthV3)
            put32(&b, 0, QCow2.magic); put32(&b, 4, 3)
            put64(&b, 8, backingFileOffset); put32(&b, 16, backingFileSize)
            put32(&b, 20, clusterBits); put64(&b, 24, size); put32(&b, 32, cryptMethod)
            put32(&b, 36, l1Size); put64(&b, 40, l1TableOffset)
            put64(&b, 48, refcountTableOffset); put32(&b, 56, refcountTableClusters)
            put32(&b, 60, snapshots); put64(&b, 64, snapshotsOffset)
            put64(&b, 72, incompatibleFeatures); put64(&b, 80, compatibleFeatures); put64(&b, 88, autoclearFeatures)
            put32(&b, 96, refcountOrder); put32(&b, 100, UInt32(QCow2.headerLengthV3))
            return b
        }
    }

    /// Header extensions after the header: (type, data), up to the end marker.
    static func extensions(_ b: [UInt8], from start: Int) throws(DiskImageError) -> [(UInt32, [UInt8])] {
        var out: [(UInt32, [UInt8])] = []
        var at = start
        while at + 8 <= b.count {
            let type = be32(b, at), len = Int(be32(b, at + 4))
            if type == 0 { return out }
            guard len <= b.count - at - 8 else { throw .format("header extension 0x\(String(type, radix: 16)) runs past the first cluster") }
            out.append((type, Array(b[(at + 8)..<(at + 8 + len)])))
            at += 8 + (len + 7) / 8 * 8
        }
        throw .format("header extensions have no end marker in the first cluster")
    }
}

/// Why an image cannot be opened or created; the text names the file.
public enum DiskImageError: Error, CustomStringConvertible, Equatable {
    case system(String, String)  // the call and its strerror
    case format(String)
    case unsupported(String)

    public var description: String {
        switch self {
        case .system(let call, let e): "\(call): \(e)"
        case .format(let s): "damaged or not qcow2: \(s)"
        case .unsupported(let s): "not supported: \(s)"
        }
    }

    static func errno(_ call: String) -> DiskImageError { .system(call, String(cString: strerror(Glibc.errno))) }
}

@inline(__always) func be32(_ b: [UInt8], _ at: Int) -> UInt32 {
    var v: UInt32 = 0
    for i in 0..<4 { v = v << 8 | UInt32(b[at + i]) }
    return v
}
@inline(__always) func be64(_ b: [UInt8], _ at: Int) -> UInt64 {
    var v: UInt64 = 0
    for i in 0..<8 { v = v << 8 | UInt64(b[at + i]) }
    return v
}
@inline(__always) func put32(_ b: inout [UInt8], _ at: Int, _ v: UInt32) {
    for i in 0..<4 { b[at + i] = UInt8(truncatingIfNeeded: v >> (24 - 8 * UInt32(i))) }
}
@inline(__always) func put64(_ b: inout [UInt8], _ at: Int, _ v: UInt64) {
    for i in 0..<8 { b[at + i] = UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64(i))) }
}

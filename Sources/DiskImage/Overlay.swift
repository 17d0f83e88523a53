#if canImport(Glibc)
import Glibc
#endif

public enum DiskFormat: String, Sendable, CaseIterable {
    case raw, qcow2
}

extension QCow2 {
    /// The virtual size of the image at `path` read as `format` (a raw file's length; a qcow2 header's size).
    public static func virtualSize(of path: String, format: DiskFormat) throws(DiskImageError) -> UInt64 {
        switch format {
        case .qcow2: return try QCow2Image(path: path, readOnly: true).virtualSize
        case .raw:
            var st = stat()
            guard stat(path, &st) == 0 else { throw .errno("stat \(path)") }
            guard (st.st_mode & S_IFMT) == S_IFREG || (st.st_mode & S_IFMT) == S_IFBLK else {
                throw .unsupported("\(path): not a regular file or block device")
            }
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw .errno("open \(path)") }
            defer { close(fd) }
            guard let size = rawSize(fd) else { throw .errno("fstat \(path)") }
            return size
        }
    }

    /// Creates a qcow2 (version 3) overlay at `path` over `backing` (an absolute path, opened read-only
    /// by whoever opens the overlay), `size` bytes (default: the backing file's). The file is new (O_EXCL),
    /// 0600, and holds only its metadata: header with the backing file's name and format, refcount table,
    /// one refcount block, the L1 table; four clusters, mostly holes (the L1 table is all zeros).
    public static func createOverlay(at path: String, backing: String, format: DiskFormat, size: UInt64? = nil) throws(DiskImageError) {
        guard backing.hasPrefix("/") else { throw .unsupported("a backing file's path must be absolute (\(backing))") }
        guard backing.utf8.count <= 1023 else { throw .unsupported("a backing file's path of more than 1023 bytes") }
        let backingSize = try virtualSize(of: backing, format: format)
        let vsize = size ?? backingSize
        guard vsize >= 512 else { throw .unsupported("a disk of \(vsize) bytes (at least one 512-byte sector)") }
        let bits = QCow2.defaultClusterBits
        let cs = UInt64(1) << UInt64(bits)
        let l1Size = (vsize + cs * (cs / 8) - 1) / (cs * (cs / 8))
        let l1Clusters = max(1, (l1Size * 8 + cs - 1) / cs)
        // Layout: cluster 0 header, 1 refcount table, 2 refcount block, 3… the L1 table.
        var h = Header()
        h.clusterBits = UInt32(bits)
        h.size = vsize
        h.l1Size = UInt32(l1Size)
        h.l1TableOffset = 3 * cs
        h.refcountTableOffset = cs
        h.refcountTableClusters = 1
        var first = h.bytes
        let fmt = Array(format.rawValue.utf8)
        var ext = [UInt8](repeating: 0, count: 8 + (fmt.count + 7) / 8 * 8)
        put32(&ext, 0, QCow2.backingFormatExtension)
        put32(&ext, 4, UInt32(fmt.count))
        ext.replaceSubrange(8..<(8 + fmt.count), with: fmt)
        first += ext + [UInt8](repeating: 0, count: 8)  // the end-of-extensions marker
        let name = Array(backing.utf8)
        put64(&first, 8, UInt64(first.count))
        put32(&first, 16, UInt32(name.count))
        first += name
        var table = [UInt8](repeating: 0, count: 8)
        put64(&table, 0, 2 * cs)
        let used = 3 + Int(l1Clusters)
        var block = [UInt8](repeating: 0, count: used * 2)
        for i in 0..<used { block[2 * i + 1] = 1 }

        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .errno("create \(path)") }
        var ok = false
        defer {
            close(fd)
            if !ok { unlink(path) }
        }
        guard pwriteFull(fd, first, first.count, 0), pwriteFull(fd, table, table.count, cs), pwriteFull(fd, block, block.count, 2 * cs),
            ftruncate(fd, off_t(UInt64(used) * cs)) == 0
        else { throw .errno("write \(path)") }
        ok = true
    }
}

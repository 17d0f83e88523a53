#if canImport(Glibc)
import Glibc
#endif

/// An open qcow2 image: reads through its backing chain, writes copy-on-write into itself.
///
/// Metadata is written as it changes, in the order that keeps the file consistent when the process dies
/// at any point: a new cluster's contents first, then its refcount, then the L2 (or L1) entry that refers to
/// it. A death between two of those writes leaves at most an unreferenced cluster (qemu-img check: a leak,
/// never an error). Clusters are only ever added at the end of the file, so nothing is read back to
/// allocate. Not thread-safe: one device worker thread serves a disk.
public final class QCow2Image: @unchecked Sendable {
    public enum Backing {
        case raw(fd: Int32, size: UInt64, path: String)
        case qcow2(QCow2Image)

        var size: UInt64 {
            switch self {
            case .raw(_, let s, _): s
            case .qcow2(let q): q.virtualSize
            }
        }
    }

    public let path: String
    public let header: QCow2.Header
    public let readOnly: Bool
    public let fd: Int32
    public var virtualSize: UInt64 { header.size }
    public let backing: Backing?
    /// Clusters this process added to the file (data and L2 tables).
    public private(set) var allocatedClusters = 0

    let clusterBits: UInt64
    let cs: UInt64
    let l2Bits: UInt64
    let hasZeroFlag: Bool
    var l1: [UInt64]
    var refcountTable: [UInt64]
    var fileEnd: UInt64
    /// A cluster of scratch space for partial-cluster copy-on-write.
    let scratch: UnsafeMutableRawPointer

    // L2 tables in memory (host byte order), least recently used evicted: slots never move.
    static let cacheSlots = 16
    var slotOffset: [UInt64]
    var slotTable: [[UInt64]]
    var slotUsed: [UInt64]
    var tick: UInt64 = 0

    /// Opens `path` as qcow2; `depth` counts the backing files above it.
    public init(path: String, readOnly: Bool, depth: Int = 0) throws(DiskImageError) {
        guard depth < QCow2.maxChainDepth else { throw .unsupported("a backing chain deeper than \(QCow2.maxChainDepth) images (or a loop)") }
        let fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        guard fd >= 0 else { throw .errno("open \(path)") }
        var ok = false
        defer { if !ok { close(fd) } }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .errno("fstat \(path)") }
        let fileSize = UInt64(st.st_size)
        var first = [UInt8](repeating: 0, count: 4096)
        guard preadFull(fd, &first, first.count, 0) else { throw .errno("read \(path)") }
        var h = try QCow2.Header(bytes: first, fileSize: fileSize)
        let cs = h.clusterSize
        if cs > 4096 {
            first = [UInt8](repeating: 0, count: Int(cs))
            guard preadFull(fd, &first, first.count, 0) else { throw .errno("read \(path)") }
        }
        if !readOnly {
            guard h.incompatibleFeatures & QCow2.corrupt == 0 else { throw .format("\(path) is marked corrupt; repair it with qemu-img check -r all") }
            guard h.incompatibleFeatures & QCow2.dirty == 0 else {
                throw .format("\(path) is marked dirty (lazy refcounts left unflushed); repair it with qemu-img check -r all")
            }
            guard h.snapshots == 0 else { throw .unsupported("writing to an image with internal snapshots (\(path) has \(h.snapshots))") }
        }
        // Backing file: its name and format from the header; the format must be named (never guessed
        // from the content: a raw image a guest wrote a qcow2 header into must not become one).
        var backing: Backing? = nil
        if h.backingFileOffset != 0 {
            let name = String(decoding: first[Int(h.backingFileOffset)..<Int(h.backingFileOffset + UInt64(h.backingFileSize))], as: UTF8.self)
            var format: String? = nil
            if h.version == 3 {
                for (type, data) in try QCow2.extensions(first, from: Int(h.headerLength)) where type == QCow2.backingFormatExtension {
                    format = String(decoding: data, as: UTF8.self)
                }
            }
            let full = name.hasPrefix("/") ? name : (path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) + "/" + name : name)
            switch format {
            case "raw":
                let bfd = open(full, O_RDONLY | O_CLOEXEC)
                guard bfd >= 0 else { throw .errno("open backing file \(full)") }
                guard let size = rawSize(bfd) else { close(bfd); throw .errno("fstat \(full)") }
                backing = .raw(fd: bfd, size: size, path: full)
            case "qcow2":
                backing = .qcow2(try QCow2Image(path: full, readOnly: true, depth: depth + 1))
            case nil:
                throw .unsupported("\(path): backing file \(full) without its format named (create overlays with qemu-img create -F raw|qcow2)")
            case let f?:
                throw .unsupported("\(path): backing file format \"\(f)\" (raw and qcow2 are known)")
            }
        }
        // Tables.
        var l1 = [UInt64](repeating: 0, count: Int(h.l1Size))
        guard l1.isEmpty || l1.withUnsafeMutableBytes({ preadFull(fd, $0.baseAddress!, $0.count, h.l1TableOffset) }) else { throw .errno("read L1 of \(path)") }
        for i in l1.indices { l1[i] = UInt64(bigEndian: l1[i]) }
        var rt = [UInt64](repeating: 0, count: Int(UInt64(h.refcountTableClusters) * cs / 8))
        guard rt.withUnsafeMutableBytes({ preadFull(fd, $0.baseAddress!, $0.count, h.refcountTableOffset) }) else {
            throw .errno("read refcount table of \(path)")
        }
        for i in rt.indices { rt[i] = UInt64(bigEndian: rt[i]) }
        if !readOnly && h.autoclearFeatures != 0 {
            // Unknown auto-clear features (bitmaps) must be cleared before writing: their data goes stale.
            var zero: UInt64 = 0
            guard pwriteFull(fd, &zero, 8, 88) else { throw .errno("write header of \(path)") }
            h.autoclearFeatures = 0
        }
        self.path = path
        self.header = h
        self.readOnly = readOnly
        self.fd = fd
        self.backing = backing
        self.clusterBits = UInt64(h.clusterBits)
        self.cs = cs
        self.l2Bits = UInt64(h.clusterBits) - 3
        self.hasZeroFlag = h.version >= 3
        self.l1 = l1
        self.refcountTable = rt
        self.fileEnd = (fileSize + cs - 1) / cs * cs
        self.scratch = UnsafeMutableRawPointer.allocate(byteCount: Int(cs), alignment: 4096)
        slotOffset = [UInt64](repeating: 0, count: Self.cacheSlots)
        slotTable = [[UInt64]](repeating: [], count: Self.cacheSlots)
        slotUsed = [UInt64](repeating: 0, count: Self.cacheSlots)
        ok = true
    }

    deinit {
        close(fd)
        if case .raw(let bfd, _, _) = backing { close(bfd) }
        scratch.deallocate()
    }

    enum Mapping { case unallocated, zero, data(UInt64), failed }

    /// Reads `count` bytes of the virtual disk at `offset` into `p`; false on an I/O error or damaged metadata.
    public func read(into p: UnsafeMutableRawPointer, count: Int, at offset: UInt64) -> Bool {
        guard offset <= virtualSize, UInt64(count) <= virtualSize - offset else { return false }
        var done = 0
        while done < count {
            let pos = offset + UInt64(done)
            let within = pos & (cs - 1)
            let n = Int(min(UInt64(count - done), cs - within))
            let dst = p + done
            switch lookup(pos) {
            case .failed: return false
            case .zero: memset(dst, 0, n)
            case .unallocated: guard readBacking(dst, n, pos) else { return false }
            case .data(let host): guard preadFull(fd, dst, n, host + within) else { return false }
            }
            done += n
        }
        return true
    }

    /// Writes `count` bytes at `offset`, allocating clusters (copy-on-write from the backing file) as needed.
    public func write(from p: UnsafeRawPointer, count: Int, at offset: UInt64) -> Bool {
        guard !readOnly, offset <= virtualSize, UInt64(count) <= virtualSize - offset else { return false }
        var done = 0
        while done < count {
            let pos = offset + UInt64(done)
            let within = pos & (cs - 1)
            let n = Int(min(UInt64(count - done), cs - within))
            guard writePiece(p + done, n, pos, within) else { return false }
            done += n
        }
        return true
    }

    /// Makes every write so far durable (metadata is written as it changes: one fdatasync covers all).
    public func flush() -> Bool { readOnly || fdatasync(fd) == 0 }

    // MARK: - mapping

    func lookup(_ pos: UInt64) -> Mapping {
        let l1e = l1[Int(pos >> (clusterBits + l2Bits))]
        let l2 = l1e & QCow2.offsetMask
        if l2 == 0 { return .unallocated }
        guard let slot = table(at: l2) else { return .failed }
        let e = slotTable[slot][Int((pos >> clusterBits) & ((1 << l2Bits) - 1))]
        if e & QCow2.compressed != 0 { return .failed }  // imports are converted; nothing here writes them
        if hasZeroFlag && e & QCow2.zeroFlag != 0 { return .zero }
        let host = e & QCow2.offsetMask
        if host == 0 { return .unallocated }
        return host % cs == 0 ? .data(host) : .failed
    }

    /// The cache slot holding the L2 table at `offset`, read in if needed.
    func table(at offset: UInt64) -> Int? {
        tick &+= 1
        var victim = 0
        for i in 0..<Self.cacheSlots {
            if slotOffset[i] == offset { slotUsed[i] = tick; return i }
            if slotUsed[i] < slotUsed[victim] { victim = i }
        }
        guard offset % cs == 0, offset + cs <= fileEnd else { return nil }
        if slotTable[victim].isEmpty { slotTable[victim] = [UInt64](repeating: 0, count: Int(cs / 8)) }
        slotOffset[victim] = 0
        let ok = slotTable[victim].withUnsafeMutableBytes { preadFull(fd, $0.baseAddress!, $0.count, offset) }
        guard ok else { return nil }
        for i in 0..<Int(cs / 8) { slotTable[victim][i] = UInt64(bigEndian: slotTable[victim][i]) }
        slotOffset[victim] = offset
        slotUsed[victim] = tick
        return victim
    }

    func readBacking(_ dst: UnsafeMutableRawPointer, _ n: Int, _ pos: UInt64) -> Bool {
        guard let b = backing, pos < b.size else { memset(dst, 0, n); return true }
        let m = Int(min(UInt64(n), b.size - pos))
        let ok: Bool
        switch b {
        case .raw(let bfd, _, _): ok = preadFull(bfd, dst, m, pos)
        case .qcow2(let q): ok = q.read(into: dst, count: m, at: pos)
        }
        if m < n { memset(dst + m, 0, n - m) }
        return ok
    }

    // MARK: - allocation

    func writePiece(_ src: UnsafeRawPointer, _ n: Int, _ pos: UInt64, _ within: UInt64) -> Bool {
        let l1i = Int(pos >> (clusterBits + l2Bits))
        let l2i = Int((pos >> clusterBits) & ((1 << l2Bits) - 1))
        guard let (slot, l2) = tableForWrite(l1i) else { return false }
        let e = slotTable[slot][l2i]
        if e & QCow2.compressed != 0 { return false }
        let host = e & QCow2.offsetMask
        let zero = hasZeroFlag && e & QCow2.zeroFlag != 0
        if host != 0 {
            guard host % cs == 0, e & QCow2.copied != 0 else { return false }
            if !zero { return pwriteFull(fd, src, n, host + within) }
            // A preallocated zero cluster: written whole, then no longer read as zeros.
            memset(scratch, 0, Int(cs))
            memcpy(scratch + Int(within), src, n)
            guard pwriteFull(fd, scratch, Int(cs), host) else { return false }
            return setEntry(slot, l2i, host | QCow2.copied, at: l2)
        }
        let c = fileEnd
        fileEnd += cs
        if UInt64(n) == cs {
            guard pwriteFull(fd, src, n, c) else { return false }
        } else {
            // Copy on write: the cluster's old contents (the backing file's, or zeros) around the new bytes.
            if zero { memset(scratch, 0, Int(cs)) } else { guard readBacking(scratch, Int(cs), pos - within) else { return false } }
            memcpy(scratch + Int(within), src, n)
            guard pwriteFull(fd, scratch, Int(cs), c) else { return false }
        }
        guard setRefcount(c) else { return false }
        allocatedClusters += 1
        return setEntry(slot, l2i, c | QCow2.copied, at: l2)
    }

    func setEntry(_ slot: Int, _ i: Int, _ v: UInt64, at table: UInt64) -> Bool {
        var be = v.bigEndian
        guard pwriteFull(fd, &be, 8, table + UInt64(i) * 8) else { return false }
        slotTable[slot][i] = v
        return true
    }

    /// The L2 table for L1 entry `l1i`, allocated (zeroed, counted, then linked) if there is none.
    func tableForWrite(_ l1i: Int) -> (Int, UInt64)? {
        let e = l1[l1i]
        let off = e & QCow2.offsetMask
        if off != 0 {
            guard e & QCow2.copied != 0, let slot = table(at: off) else { return nil }
            return (slot, off)
        }
        let c = fileEnd
        fileEnd += cs
        guard ftruncate(fd, off_t(fileEnd)) == 0, setRefcount(c) else { return nil }  // a new cluster past the end: zeros
        var be = (c | QCow2.copied).bigEndian
        guard pwriteFull(fd, &be, 8, header.l1TableOffset + UInt64(l1i) * 8) else { return nil }
        l1[l1i] = c | QCow2.copied
        allocatedClusters += 1
        return table(at: c).map { ($0, c) }
    }

    /// Sets the refcount of the cluster at `offset` (newly taken: its count was 0) to 1.
    func setRefcount(_ offset: UInt64) -> Bool {
        let perBlock = cs / 2
        let index = offset >> clusterBits
        let ti = Int(index / perBlock)
        guard ti < refcountTable.count else { return false }  // the table is never grown: 16 TiB at 64 KiB clusters
        var block = refcountTable[ti] & ~UInt64(0x1ff)
        if block == 0 {
            guard let b = newRefcountBlock(ti) else { return false }
            block = b
        }
        var one = UInt16(1).bigEndian
        return pwriteFull(fd, &one, 2, block + (index % perBlock) * 2)
    }

    /// A zeroed refcount block for table entry `ti`; the block's own refcount is set before it is linked.
    func newRefcountBlock(_ ti: Int) -> UInt64? {
        let b = fileEnd
        fileEnd += cs
        guard ftruncate(fd, off_t(fileEnd)) == 0 else { return nil }
        let perBlock = cs / 2
        let bIndex = b >> clusterBits
        if Int(bIndex / perBlock) == ti {
            var one = UInt16(1).bigEndian
            guard pwriteFull(fd, &one, 2, b + (bIndex % perBlock) * 2) else { return nil }
        } else {
            guard setRefcount(b) else { return nil }  // the block lies in the next block's range
        }
        var be = b.bigEndian
        guard pwriteFull(fd, &be, 8, header.refcountTableOffset + UInt64(ti) * 8) else { return nil }
        refcountTable[ti] = b
        return b
    }
}

/// A raw image's size: a regular file's length, a block device's by seeking to its end; nil if fstat fails.
public func rawSize(_ fd: Int32) -> UInt64? {
    var st = stat()
    guard fstat(fd, &st) == 0 else { return nil }
    if (st.st_mode & S_IFMT) == S_IFBLK { return UInt64(max(0, lseek(fd, 0, SEEK_END))) }
    return UInt64(st.st_size)
}

/// pread until `count` bytes are in, zero-filling past the end of the file.
public func preadFull(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ count: Int, _ offset: UInt64) -> Bool {
    var done = 0
    while done < count {
        let n = pread(fd, p + done, count - done, off_t(offset) + off_t(done))
        if n < 0 { if errno == EINTR { continue }; return false }
        if n == 0 { memset(p + done, 0, count - done); return true }
        done += n
    }
    return true
}

/// pwrite until all `count` bytes are out.
public func pwriteFull(_ fd: Int32, _ p: UnsafeRawPointer, _ count: Int, _ offset: UInt64) -> Bool {
    var done = 0
    while done < count {
        let n = pwrite(fd, p + done, count - done, off_t(offset) + off_t(done))
        if n < 0 { if errno == EINTR { continue }; return false }
        if n == 0 { return false }
        done += n
    }
    return true
}

#if canImport(Glibc)
import Glibc
#endif
import DiskImage
import GuestMemory

/// virtio-blk over a raw or qcow2 image file (virtio 1.x §5.2): read, write, flush, get-id; read-only disks.
/// Raw requests are served with preadv/pwritev straight between the file and guest memory on the device's
/// worker thread; qcow2 ones through `QCow2Image` (copy-on-write over its backing chain), per segment.
public final class VirtioBlock: VirtioDevice, @unchecked Sendable {
    public enum Feature {
        public static let sizeMax: UInt64 = 1 << 1
        public static let segMax: UInt64 = 1 << 2
        public static let readOnly: UInt64 = 1 << 5
        public static let blockSize: UInt64 = 1 << 6
        public static let flush: UInt64 = 1 << 9
    }
    public enum RequestType: UInt32 {
        case read = 0, write = 1, flush = 4, getID = 8
    }
    public enum Status: UInt8 { case ok = 0, ioError = 1, unsupported = 2 }

    public static let queueSize: UInt16 = 256
    public static let sectorSize: UInt64 = 512
    /// Segments per request we announce (queue size minus header and status), and accept.
    public static let segMax: UInt32 = UInt32(queueSize) - 2

    public let path: String
    public let readOnly: Bool
    public let fd: Int32
    /// The qcow2 image when the disk is one (its own fd is `fd`).
    public let qcow2: QCow2Image?
    /// The open image (it owns the descriptors).
    public let file: DiskFile
    /// Capacity in 512-byte sectors (the file size rounded down).
    public let sectors: UInt64
    /// The 20-byte serial GET_ID returns.
    public let serial: [UInt8]
    public var limiter: RateLimiter?
    /// Requests completed, by kind (for stats and tests).
    public private(set) var completed = (reads: 0, writes: 0, flushes: 0, errors: 0)
    /// Bytes moved by completed reads and writes.
    public private(set) var transferred: (read: UInt64, written: UInt64) = (0, 0)

    public typealias OpenError = DiskFile.OpenError

    public convenience init(path: String, readOnly: Bool, serial: String? = nil, format: DiskFormat = .raw) throws(OpenError) {
        self.init(try DiskFile(path: path, readOnly: readOnly, format: format), serial: serial)
    }

    /// A device on an image opened before (`DiskFile`): a guest reset's new device reuses its VM's.
    public init(_ file: DiskFile, serial: String? = nil) {
        self.file = file
        path = file.path
        readOnly = file.readOnly
        fd = file.fd
        qcow2 = file.qcow2
        sectors = file.size / VirtioBlock.sectorSize
        let id = Array((serial ?? file.defaultSerial).utf8.prefix(20))
        self.serial = id + Array(repeating: 0, count: 20 - id.count)
        var f = Feature.segMax | Feature.flush | Feature.blockSize
        if readOnly { f |= Feature.readOnly }
        super.init(type: .block, queueMaxSizes: [VirtioBlock.queueSize], features: f)
    }

    public override var counterValues: [(String, UInt64)] {
        var c: [(String, UInt64)] = [
            ("reads", UInt64(completed.reads)), ("writes", UInt64(completed.writes)), ("flushes", UInt64(completed.flushes)),
            ("errors", UInt64(completed.errors)), ("read_bytes", transferred.read), ("written_bytes", transferred.written),
        ]
        if let l = limiter { c.append(("throttled", UInt64(l.throttled))) }
        return c
    }

    /// The disk's serial as the guest reads it (kumod names its disks so: "kumo-root", "cidata").
    public override var backendName: String? {
        let s = serial.prefix { $0 != 0 }
        return s.isEmpty ? nil : String(decoding: s, as: UTF8.self)
    }

    public override func readConfig(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        // struct virtio_blk_config: capacity (le64), size_max, seg_max, geometry, blk_size, …
        var cfg = [UInt8](repeating: 0, count: 64)
        func put(_ v: UInt64, _ at: Int, _ n: Int) { for i in 0..<n { cfg[at + i] = UInt8((v >> (8 * UInt64(i))) & 0xFF) } }
        put(sectors, 0, 8)
        put(UInt64(VirtioBlock.segMax), 12, 4)
        put(VirtioBlock.sectorSize, 20, 4)
        VirtioDevice.readWindow(cfg, offset: offset, into: data)
    }

    public override func retryAfterNanos() -> UInt64? { VirtioDevice.retryAfter(limiter) }

    public override func process(queue index: Int, _ ctx: VirtioContext) {
        guard let q = ctx.queues[index] else { return }
        serve(q, ctx, name: "queue \(index)", limiter: limiter) { handle($0) }
    }

    /// Serves one request; returns the bytes written into the chain (data read plus the status byte).
    func handle(_ chain: DescriptorChain) -> UInt32 {
        // Layout: 16-byte header (type, reserved, sector), data, one status byte (device-writable, last).
        guard let last = chain.segments.last, last.writable, chain.readableBytes >= 16 else {
            completed.errors += 1
            return 0  // no place for a status: nothing can be reported
        }
        // The header, read once (it may straddle descriptors).
        var hdr: (UInt64, UInt64) = (0, 0)
        _ = withUnsafeMutableBytes(of: &hdr) { chain.read(into: $0) }
        let type = UInt32(truncatingIfNeeded: UInt64(littleEndian: hdr.0))
        let sector = UInt64(littleEndian: hdr.1)
        let statusAddr = last.host.advanced(by: Int(last.length) - 1)
        // Data segments: readable ones after the header (writes), writable ones before the status byte (reads).
        var status = Status.ok
        var dataWritten: UInt64 = 0
        switch RequestType(rawValue: type) {
        case .read:
            let data = DataRange(chain, writable: true)
            if let err = checkRange(sector: sector, bytes: data.total, segments: data.count) {
                status = err
            } else {
                limiter?.consume(ops: 1, bytes: data.total)
                if transfer(data, chain, offset: sector * VirtioBlock.sectorSize, write: false) {
                    dataWritten = data.total; completed.reads += 1; transferred.read &+= data.total
                } else {
                    status = .ioError
                }
            }
        case .write:
            let data = DataRange(chain, writable: false)
            if readOnly {
                status = .ioError
            } else if let err = checkRange(sector: sector, bytes: data.total, segments: data.count) {
                status = err
            } else {
                limiter?.consume(ops: 1, bytes: data.total)
                if transfer(data, chain, offset: sector * VirtioBlock.sectorSize, write: true) {
                    completed.writes += 1
                    transferred.written &+= data.total
                } else {
                    status = .ioError
                }
            }
        case .flush:
            limiter?.consume(ops: 1, bytes: 0)
            if readOnly || (qcow2?.flush() ?? (fdatasync(fd) == 0)) { completed.flushes += 1 } else { status = .ioError }
        case .getID:
            let data = DataRange(chain, writable: true)
            if data.total < 20 {
                status = .ioError
            } else {
                var off = 0
                for i in data.first..<data.end where off < 20 {
                    let (p, len) = data.segment(i, chain)
                    let n = min(len, 20 - off)
                    serial.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!.advanced(by: off), byteCount: n) }
                    off += n
                }
                dataWritten = 20
            }
        case nil:
            status = .unsupported
        }
        if status != .ok { completed.errors += 1 }
        statusAddr.storeBytes(of: status.rawValue, as: UInt8.self)
        return UInt32(min(dataWritten + 1, UInt64(UInt32.max)))
    }

    /// The data part of a request as positions in its chain, so that serving it builds no array:
    /// segments `first..<end`, the first entered `skip` bytes in, the last shortened by `trim` bytes.
    /// Readable data follows the 16-byte header (writes); writable data precedes the status byte (reads).
    struct DataRange {
        var first = 0, end = 0
        var skip: UInt32 = 0, trim: UInt32 = 0
        var total: UInt64 = 0
        var count: Int { end - first }

        init(_ chain: DescriptorChain, writable: Bool) {
            let segs = chain.segments
            let r = chain.readableCount
            if writable {
                // The caller checked that the last segment is writable (it holds the status byte).
                first = r
                end = segs.count
                if segs[end - 1].length == 1 { end -= 1 } else { trim = 1 }
                total = chain.writableBytes - 1
            } else {
                var left: UInt32 = 16
                first = r
                for i in 0..<r {
                    if left >= segs[i].length { left -= segs[i].length; continue }
                    first = i
                    skip = left
                    break
                }
                end = r
                total = chain.readableBytes - 16
            }
        }

        /// Host address and length of segment `i` of the range.
        @inline(__always) func segment(_ i: Int, _ chain: DescriptorChain) -> (UnsafeMutableRawPointer, Int) {
            let s = chain.segments[i]
            let head = i == first ? skip : 0
            let tail = i == end - 1 ? trim : 0
            return (s.host.advanced(by: Int(head)), Int(s.length - head - tail))
        }
    }

    func checkRange(sector: UInt64, bytes: UInt64, segments: Int) -> Status? {
        guard bytes % VirtioBlock.sectorSize == 0, segments <= Int(VirtioBlock.segMax) else { return .ioError }
        let count = bytes / VirtioBlock.sectorSize
        guard sector <= sectors, count <= sectors - sector else { return .ioError }
        return nil
    }

    /// pread/pwrite (one buffer) or preadv/pwritev over the range, resuming after short transfers.
    func transfer(_ data: DataRange, _ chain: DescriptorChain, offset: UInt64, write: Bool) -> Bool {
        if data.count == 0 { return true }
        if let q = qcow2 {
            // Bounds were checked against the virtual size (checkRange); the image checks them again.
            var off = offset
            for i in data.first..<data.end {
                let (p, len) = data.segment(i, chain)
                guard write ? q.write(from: p, count: len, at: off) : q.read(into: p, count: len, at: off) else { return false }
                off += UInt64(len)
            }
            return true
        }
        if data.count == 1 {
            // One buffer (the common case): no iovec array.
            let (base, length) = data.segment(data.first, chain)
            var done = 0
            while done < length {
                let p = base.advanced(by: done)
                let n =
                    write
                    ? pwrite(fd, p, length - done, off_t(offset) + off_t(done))
                    : pread(fd, p, length - done, off_t(offset) + off_t(done))
                if n < 0 { if errno == EINTR { continue }; return false }
                if n == 0 {
                    if write { return false }
                    memset(p, 0, length - done)
                    return true
                }
                done += n
            }
            return true
        }
        // At most segMax entries (checkRange): on the stack.
        return withUnsafeTemporaryAllocation(of: iovec.self, capacity: data.count) { iov in
            for k in 0..<data.count {
                let (p, len) = data.segment(data.first + k, chain)
                iov[k] = iovec(iov_base: p, iov_len: len)
            }
            var first = 0
            var off = off_t(offset)
            while first < iov.count {
                let n =
                    write
                    ? pwritev(fd, iov.baseAddress! + first, Int32(iov.count - first), off)
                    : preadv(fd, iov.baseAddress! + first, Int32(iov.count - first), off)
                if n < 0 { if errno == EINTR { continue }; return false }
                if n == 0 {
                    // Reading past the end of a file that shrank under us: zero the rest.
                    if write { return false }
                    for i in first..<iov.count { memset(iov[i].iov_base, 0, iov[i].iov_len) }
                    return true
                }
                off += off_t(n)
                var left = n
                while first < iov.count, left >= iov[first].iov_len { left -= iov[first].iov_len; first += 1 }
                if left > 0 {
                    iov[first].iov_base = iov[first].iov_base! + left
                    iov[first].iov_len -= left
                }
            }
            return true
        }
    }
}

/// A disk image opened for a VM's life: raw (a regular file or a block device) or qcow2 with its backing
/// chain. kumo-vmm opens its disks once, before it enters its jail (docs/SANDBOX.md), where the images,
/// their backing files and the permissions to open them are out of reach; each boot's device uses this.
public final class DiskFile: @unchecked Sendable {
    public struct OpenError: Error, CustomStringConvertible { public let description: String }

    public let path: String
    public let readOnly: Bool
    public let fd: Int32
    /// The qcow2 image when the disk is one (it owns `fd`).
    public let qcow2: QCow2Image?
    /// Bytes the guest sees.
    public let size: UInt64
    /// "kumo-DEV-INODE": the serial GET_ID returns when the config names none.
    public let defaultSerial: String

    public init(path: String, readOnly: Bool, format: DiskFormat = .raw) throws(OpenError) {
        self.path = path
        self.readOnly = readOnly
        var st = stat()
        if format == .qcow2 {
            let image: QCow2Image
            do { image = try QCow2Image(path: path, readOnly: readOnly) } catch { throw OpenError(description: "\(path): \(error)") }
            guard image.virtualSize >= VirtioBlock.sectorSize else {
                throw OpenError(description: "\(path): a disk image needs at least one 512-byte sector (its virtual size is \(image.virtualSize) bytes)")
            }
            _ = fstat(image.fd, &st)
            fd = image.fd
            qcow2 = image
            size = image.virtualSize
        } else {
            let fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
            guard fd >= 0 else { throw OpenError(description: "\(path): \(String(cString: strerror(errno)))") }
            guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG || (st.st_mode & S_IFMT) == S_IFBLK else {
                close(fd)
                throw OpenError(description: "\(path): not a regular file or block device")
            }
            var size = UInt64(st.st_size)
            if (st.st_mode & S_IFMT) == S_IFBLK {
                let end = lseek(fd, 0, SEEK_END)
                size = end > 0 ? UInt64(end) : 0
            }
            guard size >= VirtioBlock.sectorSize else {
                close(fd)
                throw OpenError(description: "\(path): a disk image needs at least one 512-byte sector (it has \(size) bytes)")
            }
            self.fd = fd
            qcow2 = nil
            self.size = size
        }
        defaultSerial = "kumo-\(st.st_dev)-\(st.st_ino)"
    }

    deinit { if qcow2 == nil { close(fd) } }  // a qcow2 image closes its own
}

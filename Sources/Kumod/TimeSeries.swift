// kumod's embedded time-series store (no server to run): one file per instance (and one for the host),
// laid out as RRD archives. Each archive is a ring of fixed-size rows at one step: 10 s for 6 hours,
// 60 s for 31 days, 1 h for a year. A row is a bucket of time with, per series, the average, the maximum
// and how many samples made them; every sample updates the current row of each archive in place. The
// file is created at its full size (sparse), so its size is fixed by its series and never grows.
//
// Crash safety: a row is written whole with one pwrite and carries a checksum. A kumod killed in the
// middle of a write (a write can be cut at a page boundary) leaves at worst one row whose checksum does not
// match: it reads as empty, so a torn write loses the points of that bucket and nothing else.
import Foundation
import KumoAPI

public final class TimeSeriesFile: @unchecked Sendable {
    public struct Archive: Sendable, Equatable, Codable {
        public var step: Int
        public var rows: Int
        public init(step: Int, rows: Int) { self.step = step; self.rows = rows }
    }
    /// 10 s × 6 h, 60 s × 31 d, 1 h × 366 d.
    public static let standard = [Archive(step: 10, rows: 2160), Archive(step: 60, rows: 44640), Archive(step: 3600, rows: 8784)]

    struct Header: Codable, Equatable {
        var version: Int
        var series: [String]
        var archives: [Archive]
    }
    static let magic = Array("KUMOTSDB".utf8)
    static let headerSize = 65536

    public let path: String
    public let series: [String]
    public let archives: [Archive]
    let fd: Int32
    let rowSize: Int
    let archiveOffsets: [Int]
    /// The row each archive is filling, as written (one writer at a time: `lock`).
    var current: [Row?]
    let lock = NSLock()

    struct Row {
        var time: Int
        var count: UInt32
        var avg: [Float]
        var max: [Float]
        var n: [UInt32]
    }

    /// The size of a file with `series` series: fixed, whatever is recorded.
    public static func size(series: Int, archives: [Archive] = standard) -> Int {
        headerSize + archives.reduce(0) { $0 + $1.rows } * rowSize(series)
    }
    static func rowSize(_ series: Int) -> Int { 16 + 12 * series }

    /// Opens the file at `path` for `series`, creating it (0600) when it is absent or was made for other
    /// series or archives (its history is then started afresh).
    public init(path: String, series: [String], archives: [Archive] = standard) throws {
        precondition(!series.isEmpty && archives.allSatisfy { $0.step > 0 && $0.rows > 0 })
        self.path = path
        self.series = series
        self.archives = archives
        rowSize = Self.rowSize(series.count)
        var offsets: [Int] = []
        var at = Self.headerSize
        for a in archives {
            offsets.append(at)
            at += a.rows * rowSize
        }
        archiveOffsets = offsets
        current = Array(repeating: nil, count: archives.count)
        let wanted = Header(version: 1, series: series, archives: archives)
        var fd = open(path, O_RDWR | O_CLOEXEC)
        if fd >= 0, Self.readHeader(fd) != wanted {
            close(fd)
            fd = -1
            unlink(path)
        }
        if fd < 0 {
            fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw TimeSeriesError("cannot create \(path): \(String(cString: strerror(errno)))") }
            var head = Self.magic
            let json = try JSONEncoder().encode(wanted)
            guard json.count + 12 <= Self.headerSize else {
                close(fd)
                unlink(path)
                throw TimeSeriesError("too many series for one file (\(series.count))")
            }
            head += withUnsafeBytes(of: UInt32(json.count).littleEndian, Array.init)
            head += [0, 0, 0, 0]
            head += Array(json)
            guard ftruncate(fd, off_t(at)) == 0, pwrite(fd, head, head.count, 0) == head.count, fsync(fd) == 0 else {
                let e = String(cString: strerror(errno))
                close(fd)
                unlink(path)
                throw TimeSeriesError("cannot write \(path): \(e)")
            }
        }
        self.fd = fd
    }

    deinit { close(fd) }

    static func readHeader(_ fd: Int32) -> Header? {
        var head = [UInt8](repeating: 0, count: headerSize)
        guard pread(fd, &head, headerSize, 0) == headerSize, Array(head[0..<8]) == magic else { return nil }
        let n = Int(UInt32(head[8]) | UInt32(head[9]) << 8 | UInt32(head[10]) << 16 | UInt32(head[11]) << 24)
        guard n > 0, n + 16 <= headerSize else { return nil }
        return try? JSONDecoder().decode(Header.self, from: Data(head[16..<(16 + n)]))
    }

    func rowOffset(_ a: Int, bucket: Int) -> Int {
        let slot = (bucket / archives[a].step) % archives[a].rows
        return archiveOffsets[a] + slot * rowSize
    }

    /// Records one sample taken at `time` (Unix seconds): a value per series, nil where there is none.
    public func record(time: Int, _ values: [Double?]) {
        precondition(values.count == series.count)
        lock.lock()
        defer { lock.unlock() }
        for a in archives.indices {
            let bucket = time - time % archives[a].step
            var row: Row
            if let c = current[a], c.time == bucket {
                row = c
            } else if let onDisk = readRow(a, bucket: bucket) {
                row = onDisk  // kumod restarted within this bucket: carry on with it
            } else {
                row = Row(
                    time: bucket, count: 0, avg: Array(repeating: 0, count: series.count), max: Array(repeating: 0, count: series.count),
                    n: Array(repeating: 0, count: series.count))
            }
            row.count &+= 1
            for (i, v) in values.enumerated() {
                guard let v, v.isFinite else { continue }
                let f = Float(v)
                if row.n[i] == 0 {
                    row.avg[i] = f
                    row.max[i] = f
                } else {
                    row.avg[i] += (f - row.avg[i]) / Float(row.n[i] + 1)
                    row.max[i] = Swift.max(row.max[i], f)
                }
                row.n[i] += 1
            }
            current[a] = row
            writeRow(a, row)
        }
    }

    func encode(_ row: Row) -> [UInt8] {
        var b = [UInt8]()
        b.reserveCapacity(rowSize)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        put(Int64(row.time))
        put(row.count)
        put(UInt32(0))  // checksum, filled below
        for i in series.indices {
            put(row.avg[i].bitPattern)
            put(row.max[i].bitPattern)
            put(row.n[i])
        }
        let sum = Self.checksum(b)
        withUnsafeBytes(of: sum.littleEndian) { for k in 0..<4 { b[12 + k] = $0[k] } }
        return b
    }

    func writeRow(_ a: Int, _ row: Row) {
        let bytes = encode(row)
        _ = pwrite(fd, bytes, bytes.count, off_t(rowOffset(a, bucket: row.time)))
    }

    /// The row of `bucket` in archive `a` when the file holds it (whole and for that very bucket).
    func readRow(_ a: Int, bucket: Int) -> Row? {
        var b = [UInt8](repeating: 0, count: rowSize)
        guard pread(fd, &b, rowSize, off_t(rowOffset(a, bucket: bucket))) == rowSize else { return nil }
        return decode(b, bucket: bucket)
    }

    func decode(_ b: [UInt8], bucket: Int) -> Row? {
        func get<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T {
            var v: T = 0
            withUnsafeMutableBytes(of: &v) { for k in 0..<MemoryLayout<T>.size { $0[k] = b[at + k] } }
            return T(littleEndian: v)
        }
        guard Int(get(0, Int64.self)) == bucket, bucket != 0 else { return nil }
        var unsummed = b
        for k in 12..<16 { unsummed[k] = 0 }
        guard Self.checksum(unsummed) == get(12, UInt32.self) else { return nil }
        var row = Row(time: bucket, count: get(8, UInt32.self), avg: [], max: [], n: [])
        for i in series.indices {
            let at = 16 + 12 * i
            row.avg.append(Float(bitPattern: get(at, UInt32.self)))
            row.max.append(Float(bitPattern: get(at + 4, UInt32.self)))
            row.n.append(get(at + 8, UInt32.self))
        }
        return row
    }

    /// FNV-1a, 32 bits: enough to tell a whole row from one cut short or mixed with the bucket before.
    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var h: UInt32 = 0x811C_9DC5
        for b in bytes {
            h ^= UInt32(b)
            h = h &* 0x0100_0193
        }
        return h
    }

    /// The points of `series` at `step` whose buckets start in [from, to], oldest first; buckets with no
    /// sample of it (or older than the archive keeps) are left out.
    public func points(series name: String, step: Int, from: Int, to: Int) throws -> [MetricPoint] {
        guard let i = series.firstIndex(of: name) else { throw TimeSeriesError("no series \(name)") }
        guard let a = archives.firstIndex(where: { $0.step == step }) else { throw TimeSeriesError("no archive of step \(step) s") }
        let first = max(from + (step - from % step) % step, to - (archives[a].rows - 1) * step - to % step)
        guard first <= to else { return [] }
        var out: [MetricPoint] = []
        var bucket = first
        while bucket <= to {
            if let row = readRow(a, bucket: bucket), row.n[i] > 0 {
                out.append(MetricPoint(time: bucket, avg: Double(row.avg[i]), max: Double(row.max[i])))
            }
            bucket += step
        }
        return out
    }
}

public struct TimeSeriesError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}

#if canImport(Glibc)
import Glibc
#endif

public struct FileError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// Reads a whole file without Foundation.
public func readFile(_ path: String, limit: Int = 1 << 31) throws(FileError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw FileError(description: String(cString: strerror(errno))) }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw FileError(description: String(cString: strerror(errno))) }
    if (st.st_mode & S_IFMT) == S_IFDIR { throw FileError(description: "is a directory") }
    let size = Int(st.st_size)
    guard size <= limit else { throw FileError(description: "larger than \(limit >> 20) MiB") }
    // procfs and sysfs report size 0: read those in chunks until EOF.
    var out = [UInt8](repeating: 0, count: size > 0 ? size : 4096)
    var done = 0
    while true {
        if done == out.count {
            if size > 0 || out.count >= limit { break }
            out += [UInt8](repeating: 0, count: out.count)
        }
        let n = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
        if n < 0 { if errno == EINTR { continue }; throw FileError(description: String(cString: strerror(errno))) }
        if n == 0 { break }
        done += n
    }
    out.removeLast(out.count - done)
    return out
}

/// MemTotal from /proc/meminfo, in bytes.
public func hostMemoryBytes() -> UInt64 {
    guard let b = try? readFile("/proc/meminfo", limit: 1 << 20) else { return 0 }
    let text = String(decoding: b, as: UTF8.self)
    for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") {
        let n = line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) } ?? 0
        return n << 10
    }
    return 0
}

#if canImport(Glibc)
import Glibc
#endif

/// Unix stream sockets: the one implementation behind kumo-vmm's control and console sockets, kumod's
/// client of them and the CLI's way to kumod.
public enum UnixSocket {
    /// The longest path a sockaddr_un holds, less its terminating NUL.
    public static let maxPathBytes = 107

    /// The address of `path`, and its length: "@name" is the abstract socket `name` (a network
    /// namespace's, no file), whose length ends with the name.
    static func address(_ path: String) throws(SysError) -> (sockaddr_un, socklen_t) {
        var bytes = Array(path.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        guard bytes.count > (abstract ? 1 : 0), bytes.count <= maxPathBytes else {
            throw SysError("socket path \(path) (1 to \(maxPathBytes) bytes)", errno: ENAMETOOLONG)
        }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        let length = abstract ? MemoryLayout<sa_family_t>.size + bytes.count : MemoryLayout<sockaddr_un>.size
        return (addr, socklen_t(length))
    }

    static func stream() throws(SysError) -> OwnedFD {
        OwnedFD(try sysCall("socket(AF_UNIX)") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
    }

    /// Listens at `path`, mode `mode`. A stale socket there (an earlier run's) is replaced; any other
    /// kind of file is refused, never removed. An abstract "@name" has no file and so no mode (anyone in
    /// the network namespace may connect): refused unless `abstract` asks for one (the tests' stand-in
    /// for a host service's).
    public static func listen(_ path: String, backlog: Int32 = 8, mode: mode_t = 0o600, abstract: Bool = false) throws(SysError) -> OwnedFD {
        guard path.hasPrefix("@") == abstract else {
            let why = abstract ? "not an abstract socket (@name)" : "an abstract socket has no file mode to keep others out"
            throw SysError("listen \(path): " + why, errno: EINVAL)
        }
        var (addr, length) = try address(path)
        var st = stat()
        if !abstract, lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw SysError("listen \(path): exists and is not a socket", errno: EEXIST) }
            unlink(path)
        }
        let fd = try stream()
        _ = try sysCall("bind \(path)") {
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.raw, $0, length) }
            }
        }
        if !abstract { _ = try sysCall("chmod \(path)") { chmod(path, mode) } }
        _ = try sysCall("listen \(path)") { Glibc.listen(fd.raw, backlog) }
        return fd
    }

    /// Connects to `path`. With `timeoutSeconds` > 0 every later send and receive on it gives up after
    /// that long (a wedged peer cannot hold the caller).
    public static func connect(_ path: String, timeoutSeconds: Int = 0) throws(SysError) -> OwnedFD {
        var (addr, length) = try address(path)
        let fd = try stream()
        if timeoutSeconds > 0 { fd.setTimeouts(seconds: timeoutSeconds) }
        _ = try sysCall("connect \(path)") {
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd.raw, $0, length) }
            }
        }
        return fd
    }

    /// Connects to `path` without ever waiting (a listener whose backlog is full refuses with EAGAIN);
    /// the socket is non-blocking.
    public static func connectNow(_ path: String) throws(SysError) -> OwnedFD {
        var (addr, length) = try address(path)
        let fd = OwnedFD(
            try sysCall("socket(AF_UNIX)") {
                socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            })
        _ = try sysCall("connect \(path)") {
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd.raw, $0, length) }
            }
        }
        return fd
    }

    /// Accepts one waiting connection on a non-blocking listener, itself non-blocking; nil when none waits.
    public static func acceptNow(_ listener: OwnedFD) -> OwnedFD? {
        while true {
            let c = Glibc.accept(listener.raw, nil, nil)
            if c >= 0 {
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                _ = fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK)
                return OwnedFD(c)
            }
            if errno == EINTR || errno == ECONNABORTED { continue }
            return nil
        }
    }

    /// Accepts one connection (close-on-exec); nil when the listening socket was shut down.
    public static func accept(_ listener: OwnedFD) -> OwnedFD? {
        while true {
            let c = Glibc.accept(listener.raw, nil, nil)
            if c >= 0 { _ = fcntl(c, F_SETFD, FD_CLOEXEC); return OwnedFD(c) }
            if errno == EINTR || errno == ECONNABORTED { continue }
            return nil
        }
    }
}

extension OwnedFD {
    /// Bounds each send and receive on this socket to `seconds`.
    public func setTimeouts(seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(raw, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(raw, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sends all of `bytes` (MSG_NOSIGNAL: a peer that is gone is an error, not SIGPIPE).
    public func sendAll(_ bytes: [UInt8]) throws(SysError) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(raw, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SysError("send")
            }
            off += n
        }
    }
}

/// Lines from a stream socket (the control protocol is one JSON object per line).
public struct LineReader {
    let fd: OwnedFD
    var buffer: [UInt8] = []
    /// A line longer than this is not the protocol: an error.
    public let limit: Int

    public init(_ fd: OwnedFD, limit: Int = 1 << 20) { self.fd = fd; self.limit = limit }

    /// The next line without its newline; nil at end of file (or a timeout: `SysError` with EAGAIN).
    public mutating func next() throws(SysError) -> [UInt8]? {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                return line
            }
            guard buffer.count <= limit else { throw SysError("read: a line longer than \(limit) bytes", errno: EMSGSIZE) }
            let n = chunk.withUnsafeMutableBytes { read(fd.raw, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SysError("read")
            }
            if n == 0 { return nil }
            buffer += chunk[0..<n]
        }
    }

    /// Exactly `count` bytes after the last line (a length-prefixed frame); nil if the stream ends first.
    public mutating func bytes(_ count: Int) throws(SysError) -> [UInt8]? {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while buffer.count < count {
            let n = chunk.withUnsafeMutableBytes { read(fd.raw, $0.baseAddress, min($0.count, count - buffer.count)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SysError("read")
            }
            if n == 0 { return nil }
            buffer += chunk[0..<n]
        }
        let out = Array(buffer[..<count])
        buffer.removeSubrange(..<count)
        return out
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// IPv4 TCP: the one implementation behind the CLI's local VNC listener, kumod's health checks and the
/// tests' HTTP, WebSocket and VNC clients. Listening is on loopback only.
public enum TCPSocket {
    static func address(_ host: String, _ port: Int) throws(SysError) -> sockaddr_in {
        guard (0...65535).contains(port) else { throw SysError("port \(port) (0 to 65535)", errno: EINVAL) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = UInt16(port).bigEndian
        guard inet_pton(AF_INET, host, &a.sin_addr) == 1 else { throw SysError("\(host): not an IPv4 address", errno: EINVAL) }
        return a
    }

    static func stream() throws(SysError) -> OwnedFD {
        OwnedFD(try sysCall("socket(AF_INET)") { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
    }

    /// Listens on 127.0.0.1:`port` (0: any free port; `port(of:)` says which).
    public static func listenLoopback(port: Int, backlog: Int32 = 8) throws(SysError) -> OwnedFD {
        var a = try address("127.0.0.1", port)
        let fd = try stream()
        var one: Int32 = 1
        setsockopt(fd.raw, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = try sysCall("bind 127.0.0.1:\(port)") {
            withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.raw, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        _ = try sysCall("listen 127.0.0.1:\(port)") { Glibc.listen(fd.raw, backlog) }
        return fd
    }

    /// The local port `fd` is bound to.
    public static func port(of fd: OwnedFD) -> Int {
        var a = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let r = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd.raw, $0, &len) } }
        return r == 0 ? Int(UInt16(bigEndian: a.sin_port)) : 0
    }

    /// Connects to `host`:`port`. With `timeoutMillis` > 0 the connect gives up after that long (ETIMEDOUT;
    /// a peer that drops SYNs cannot hold the caller), and so does every later send and receive.
    public static func connect(_ host: String = "127.0.0.1", port: Int, timeoutMillis: Int = 0) throws(SysError) -> OwnedFD {
        var a = try address(host, port)
        let fd = try stream()
        let what = "connect \(host):\(port)"
        guard timeoutMillis > 0 else {
            _ = try sysCall(what) {
                withUnsafePointer(to: &a) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd.raw, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
            }
            return fd
        }
        let flags = fcntl(fd.raw, F_GETFL)
        _ = fcntl(fd.raw, F_SETFL, flags | O_NONBLOCK)
        let r = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd.raw, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r != 0 {
            guard errno == EINPROGRESS else { throw SysError(what) }
            var p = pollfd(fd: fd.raw, events: Int16(POLLOUT), revents: 0)
            let n = poll(&p, 1, Int32(timeoutMillis))
            guard n == 1 else { throw SysError(what, errno: n == 0 ? ETIMEDOUT : errno) }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd.raw, SOL_SOCKET, SO_ERROR, &err, &len)
            guard err == 0 else { throw SysError(what, errno: err) }
        }
        _ = fcntl(fd.raw, F_SETFL, flags)
        var tv = timeval(tv_sec: timeoutMillis / 1000, tv_usec: (timeoutMillis % 1000) * 1000)
        setsockopt(fd.raw, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd.raw, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// TCP on 127.0.0.1: the one implementation behind the CLI's local VNC listener and the tests' HTTP,
/// WebSocket and VNC clients (nothing here binds anything but loopback).
public enum LoopbackTCP {
    static func address(_ port: Int) throws(SysError) -> sockaddr_in {
        guard (0...65535).contains(port) else { throw SysError("port \(port) (0 to 65535)", errno: EINVAL) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = UInt16(port).bigEndian
        a.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return a
    }

    static func stream() throws(SysError) -> OwnedFD {
        OwnedFD(try sysCall("socket(AF_INET)") { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
    }

    /// Listens on 127.0.0.1:`port` (0: any free port; `port(of:)` says which).
    public static func listen(port: Int, backlog: Int32 = 8) throws(SysError) -> OwnedFD {
        var a = try address(port)
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

    /// Connects to 127.0.0.1:`port`. With `timeoutSeconds` > 0 every later send and receive gives up
    /// after that long.
    public static func connect(port: Int, timeoutSeconds: Int = 0) throws(SysError) -> OwnedFD {
        var a = try address(port)
        let fd = try stream()
        if timeoutSeconds > 0 { fd.setTimeouts(seconds: timeoutSeconds) }
        _ = try sysCall("connect 127.0.0.1:\(port)") {
            withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd.raw, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        return fd
    }
}

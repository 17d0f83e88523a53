import Foundation
import Synchronization
import SystemKit

/// TCP between network namespaces from the test process: a socket is made on a short-lived thread that
/// entered the namespace (a socket stays in the namespace it was made in), then used from anywhere.
enum NamespaceSockets {
    struct Failure: Error, CustomStringConvertible { let description: String }

    static func socket(in netns: String, type: Int32 = Int32(SOCK_STREAM.rawValue)) throws -> Int32 {
        let made = Mutex<Result<Int32, Failure>>(.failure(Failure(description: "no socket")))
        let done = DispatchSemaphore(value: 0)
        Thread {
            defer { done.signal() }  // the thread, in the namespace, ends here
            do { try Namespaces.enterNetwork("/var/run/netns/\(netns)") } catch {
                made.withLock { $0 = .failure(Failure(description: "\(error)")) }
                return
            }
            let s = Glibc.socket(AF_INET, type | Int32(SOCK_CLOEXEC.rawValue), 0)
            made.withLock { $0 = s >= 0 ? .success(s) : .failure(Failure(description: "socket: errno \(errno)")) }
        }.start()
        done.wait()
        return try made.withLock { $0 }.get()
    }

    static func address(_ a: String, _ port: UInt16) -> sockaddr_in {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        sin.sin_addr.s_addr = inet_addr(a)
        return sin
    }

    /// A connection from `netns` to address:port, or nil when none came within `timeout` seconds (a
    /// dropped SYN: filtered); reads and writes on it time out after `timeout` too.
    static func connect(from netns: String, to a: String, _ port: UInt16, timeout: Int32 = 3) throws -> Int32? {
        let s = try socket(in: netns)
        let flags = fcntl(s, F_GETFL)
        _ = fcntl(s, F_SETFL, flags | O_NONBLOCK)
        var sin = address(a, port)
        let r = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r != 0 {
            guard errno == EINPROGRESS else { close(s); return nil }
            var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            guard poll(&p, 1, timeout * 1000) == 1, getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len) == 0, err == 0 else { close(s); return nil }
        }
        _ = fcntl(s, F_SETFL, flags)
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return s
    }

    /// A listening TCP socket in `netns` on address:port.
    static func listener(in netns: String, address a: String, port: UInt16, backlog: Int32 = 16) throws -> Int32 {
        let s = try socket(in: netns)
        var one: Int32 = 1
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sin = address(a, port)
        let ok = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard ok == 0, listen(s, backlog) == 0 else {
            close(s)
            throw Failure(description: "bind/listen \(a):\(port) in \(netns): errno \(errno)")
        }
        return s
    }

    /// Writes `line` and reads the echo: whether it came back whole.
    static func echoes(_ s: Int32, _ line: String) -> Bool {
        let out = Array((line + "\n").utf8)
        guard write(s, out, out.count) == out.count else { return false }
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 256)
        while !got.contains(0x0A) {
            let n = read(s, &buf, buf.count)
            guard n > 0 else { return false }
            got += buf[0..<n]
        }
        return got == out
    }

    /// One round trip on a fresh connection: whether `netns` reaches an echo server at address:port.
    static func reaches(from netns: String, _ a: String, _ port: UInt16) throws -> Bool {
        guard let s = try connect(from: netns, to: a, port) else { return false }
        defer { close(s) }
        return echoes(s, "hello from \(netns)")
    }

    /// A UDP responder in a namespace: every datagram to address:port is answered with `name`, until `stop`.
    /// Its thread closes the socket when it ends.
    final class UDPResponder: @unchecked Sendable {
        let s: Int32
        /// `shutdown` does not stop a datagram socket's recvfrom from returning (0, at once, forever):
        /// without this flag a stopped responder's thread spun for the rest of the suite (three of them
        /// held a third of the host's CPU under every later guest boot in CI).
        let stopped = Atomic<Bool>(false)
        init(in netns: String, address a: String, port: UInt16, name: String) throws {
            s = try NamespaceSockets.socket(in: netns, type: Int32(SOCK_DGRAM.rawValue))
            var sin = NamespaceSockets.address(a, port)
            let ok = withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard ok == 0 else {
                close(s)
                throw Failure(description: "bind udp \(a):\(port) in \(netns): errno \(errno)")
            }
            let fd = s
            Thread { [self] in
                defer { close(fd) }
                var buf = [UInt8](repeating: 0, count: 512)
                while true {
                    var peer = sockaddr_in()
                    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
                    let n = withUnsafeMutablePointer(to: &peer) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buf, buf.count, 0, $0, &len) }
                    }
                    guard n > 0, !stopped.load(ordering: .acquiring) else { return }  // shut down by `stop`
                    _ = name.withCString { p in
                        withUnsafePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, p, strlen(p), 0, $0, len) } }
                    }
                }
            }.start()
        }
        func stop() {
            stopped.store(true, ordering: .releasing)
            shutdown(s, Int32(SHUT_RDWR))
        }
    }

    /// One datagram from `netns` (from `source`) to address:port: the answer, or nil within 2 s.
    static func udpAsk(from netns: String, source: String, to a: String, _ port: UInt16) throws -> String? {
        let s = try socket(in: netns, type: Int32(SOCK_DGRAM.rawValue))
        defer { close(s) }
        var from = address(source, 0)
        _ = withUnsafePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var to = address(a, port)
        let sent = withUnsafePointer(to: &to) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(s, "?", 1, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard sent == 1 else { return nil }
        var buf = [UInt8](repeating: 0, count: 64)
        let n = recv(s, &buf, buf.count, 0)
        return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : nil
    }

    /// An echo server in a namespace: every connection gets `greeting` first (if any), then its lines
    /// back, until `stop`. A connection's descriptor is closed when it ends.
    final class EchoServer: @unchecked Sendable {
        let listener: Int32
        let connections = Mutex<Set<Int32>>([])

        init(in netns: String, address a: String, port: UInt16, greeting: String? = nil, backlog: Int32 = 16) throws {
            let s = try NamespaceSockets.listener(in: netns, address: a, port: port, backlog: backlog)
            listener = s
            Thread { [self] in
                while true {
                    let c = accept(s, nil, nil)
                    guard c >= 0 else { return }  // shut down by `stop`
                    connections.withLock { _ = $0.insert(c) }
                    Thread { [self] in
                        if let g = greeting { _ = g.withCString { write(c, $0, strlen($0)) } }
                        var buf = [UInt8](repeating: 0, count: 256)
                        while true {
                            let n = read(c, &buf, buf.count)
                            guard n > 0, write(c, buf, n) == n else { break }
                        }
                        // Removed and closed under the lock: `stop` never shuts down a reused descriptor.
                        connections.withLock {
                            $0.remove(c)
                            close(c)
                        }
                    }.start()
                }
            }.start()
        }

        func stop() {
            shutdown(listener, Int32(SHUT_RDWR))
            connections.withLock { for c in $0 { shutdown(c, Int32(SHUT_RDWR)) } }
        }
        deinit {
            stop()
            close(listener)
        }
    }
}

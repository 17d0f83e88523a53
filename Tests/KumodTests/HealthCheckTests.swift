import Foundation
import Synchronization
import SystemKit
import Testing

@testable import Kumod

/// Load balancer health checks (issue 19, point 3): rise and fall, and real probes against loopback
/// servers that answer, refuse, answer the wrong code, or never answer.
struct HealthCheckTests {
    @Test func riseAndFall() {
        var h = BackendHealth()
        #expect(h.healthy == nil)
        #expect(!h.record("refused", rise: 3, fall: 3) && h.healthy == false, "a first failure: known down, still out")
        #expect(!h.record(nil, rise: 3, fall: 3) && !h.record(nil, rise: 3, fall: 3), "two passes are not yet three")
        #expect(h.record(nil, rise: 3, fall: 3) && h.healthy == true, "the third: back in rotation")
        #expect(!h.record("timeout", rise: 3, fall: 3) && !h.record(nil, rise: 3, fall: 3), "a pass between failures resets the count")
        #expect(!h.record("a", rise: 3, fall: 3) && !h.record("b", rise: 3, fall: 3) && h.healthy == true)
        #expect(h.record("c", rise: 3, fall: 3) && h.healthy == false && h.lastReason == "c", "the third failure in a row: out")
        var fresh = BackendHealth()
        #expect(fresh.record(nil, rise: 3, fall: 3) && fresh.healthy == true, "a first pass: in rotation at once")
    }

    /// A loopback server answering each connection with `reply` (nil: accepts and says nothing).
    final class Server: @unchecked Sendable {
        let fd: OwnedFD
        let port: Int
        final class Held: Sendable { let fds = Mutex<[OwnedFD]>([]) }
        let held = Held()
        init(reply: String?) throws {
            fd = try TCPSocket.listenLoopback(port: 0)
            port = TCPSocket.port(of: fd)
            let raw = fd.raw
            Thread.detachNewThread { [held] in
                while true {
                    let c = accept(raw, nil, nil)
                    if c < 0 { return }
                    guard let reply else {  // held open, never answered (closed with the server)
                        held.fds.withLock { $0.append(OwnedFD(c)) }
                        continue
                    }
                    var buf = [UInt8](repeating: 0, count: 1024)
                    _ = read(c, &buf, buf.count)
                    _ = reply.withCString { write(c, $0, strlen($0)) }
                    close(c)
                }
            }
        }
        deinit { fd.shutdownBoth() }
    }

    @Test func probes() throws {
        let up = try Server(reply: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        let sick = try Server(reply: "HTTP/1.0 503 Service Unavailable\r\n\r\n")
        let silent = try Server(reply: nil)
        // A port that was free a moment ago: nothing listens there (the listener is closed at once).
        let closedPort = try { TCPSocket.port(of: try TCPSocket.listenLoopback(port: 0)) }()
        let tcp = HealthCheck(kind: .tcp, timeoutMillis: 500)
        let http = HealthCheck(kind: .http(path: "/health", codes: 200...299), timeoutMillis: 500)
        #expect(tcp.probe("127.0.0.1", up.port) == nil)
        #expect(tcp.probe("127.0.0.1", closedPort)?.contains("refused") == true, "\(String(describing: tcp.probe("127.0.0.1", closedPort)))")
        #expect(http.probe("127.0.0.1", up.port) == nil)
        #expect(http.probe("127.0.0.1", sick.port) == "HTTP 503, expected 200-299")
        let t0 = Date()
        let quiet = http.probe("127.0.0.1", silent.port)
        let took = Date().timeIntervalSince(t0)
        #expect(quiet == "no answer within 500 ms" && took >= 0.45 && took < 2, "\(String(describing: quiet)) after \(took) s")
        #expect(tcp.probe("127.0.0.1", silent.port) == nil, "a TCP check only connects")
        #expect(tcp.probe("not an address", 80)?.contains("not an IPv4 address") == true)
    }
}

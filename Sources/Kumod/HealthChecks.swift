// Health checks of a load balancer's backends (issue 19, point 3), as SLB's: a TCP connect, or an HTTP
// GET whose status must be among the expected codes, every `interval`, each given `timeout`; a backend in
// rotation leaves it after `fall` failures in a row and comes back after `rise` successes in a row. A
// backend starts unknown (out of rotation) and its first probe decides. Probes block: kumod runs them on
// a thread of its own, never on Swift concurrency's pool.
import SystemKit

#if canImport(Glibc)
import Glibc
#endif

public struct HealthCheck: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case tcp
        /// GET `path`; healthy when the status is in `codes`.
        case http(path: String, codes: ClosedRange<Int>)
    }
    public var kind: Kind
    public var intervalMillis: Int
    public var timeoutMillis: Int
    public var rise: Int
    public var fall: Int
    public init(kind: Kind = .tcp, intervalMillis: Int = 2000, timeoutMillis: Int = 1000, rise: Int = 3, fall: Int = 3) {
        self.kind = kind; self.intervalMillis = intervalMillis; self.timeoutMillis = timeoutMillis; self.rise = rise; self.fall = fall
    }

    /// One probe of `address`:`port`: nil when it passed, else why not.
    public func probe(_ address: String, _ port: Int) -> String? {
        let fd: OwnedFD
        do { fd = try TCPSocket.connect(address, port: port, timeoutMillis: timeoutMillis) } catch { return "\(error)" }
        guard case let .http(path, codes) = kind else { return nil }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(address)\r\nUser-Agent: kumo-health-check\r\nConnection: close\r\n\r\n".utf8)
        guard (try? fd.sendAll(request)) != nil else { return "the request could not be sent" }
        // The status line is all that matters: read until its end, at most 1 KiB.
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 512)
        while got.count < 1024, !got.contains(0x0A) {
            let n = read(fd.raw, &buf, buf.count)
            if n <= 0 { return n == 0 ? "the connection closed before a status line" : "no answer within \(timeoutMillis) ms" }
            got += buf[0..<n]
        }
        let line = String(decoding: got.prefix { $0 != 0x0D && $0 != 0x0A }, as: UTF8.self)
        let parts = line.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]) else { return "not an HTTP status line: \(line.prefix(80))" }
        return codes.contains(code) ? nil : "HTTP \(code), expected \(codes.lowerBound)-\(codes.upperBound)"
    }
}

/// One backend's health as its probes have found it.
public struct BackendHealth: Sendable, Equatable {
    /// nil: not probed yet, and out of rotation until its first probe passes.
    public private(set) var healthy: Bool? = nil
    /// Results in a row that disagree with `healthy`.
    var streak = 0
    public private(set) var lastReason: String? = nil

    public init() {}
    /// As a previous kumod left it (the store keeps it), so a restart writes the same rules at once.
    public init(healthy: Bool?) { self.healthy = healthy }

    /// Records a probe (nil: passed, else why not); true when the backend went in or out of rotation.
    public mutating func record(_ failure: String?, rise: Int, fall: Int) -> Bool {
        let ok = failure == nil
        lastReason = failure
        guard let h = healthy else {
            healthy = ok
            return ok
        }
        if ok == h {
            streak = 0
            return false
        }
        streak += 1
        guard streak >= (h ? fall : rise) else { return false }
        healthy = ok
        streak = 0
        return true
    }
}

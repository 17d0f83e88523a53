import DiskImage
import SystemKit
#if canImport(Glibc)
import Glibc
#endif

/// A token bucket as configured: `size` tokens refilled every `refillMillis`, plus a one-time burst.
public struct BucketConfig: Sendable, Equatable {
    public var size: UInt64
    public var refillMillis: UInt64 = 1000
    public var oneTimeBurst: UInt64 = 0
    public init(size: UInt64, refillMillis: UInt64 = 1000, oneTimeBurst: UInt64 = 0) {
        self.size = size; self.refillMillis = refillMillis; self.oneTimeBurst = oneTimeBurst
    }
}

/// Firecracker-style rate limiter: a bandwidth bucket (bytes) and an operations bucket.
public struct RateLimitConfig: Sendable, Equatable {
    public var bandwidth: BucketConfig?
    public var ops: BucketConfig?
    public init(bandwidth: BucketConfig? = nil, ops: BucketConfig? = nil) { self.bandwidth = bandwidth; self.ops = ops }
}

public struct DiskConfig: Sendable, Equatable {
    public var path: String
    public var readOnly = false
    public var serial: String? = nil
    public var rateLimit: RateLimitConfig? = nil
    /// Raw unless said: never guessed from the content (a guest can write a qcow2 header into a raw disk).
    public var format: DiskFormat = .raw
    public init(path: String, readOnly: Bool = false, serial: String? = nil, rateLimit: RateLimitConfig? = nil, format: DiskFormat = .raw) {
        self.path = path; self.readOnly = readOnly; self.serial = serial; self.rateLimit = rateLimit; self.format = format
    }
}

public struct RngConfig: Sendable, Equatable {
    public var rateLimit: RateLimitConfig? = nil
    public init(rateLimit: RateLimitConfig? = nil) { self.rateLimit = rateLimit }
}

/// virtio-vsock with Firecracker's hybrid host side: the host connects to `path` (`CONNECT PORT`),
/// the guest to the host's PORT reaches `path_PORT`.
public struct VsockConfig: Sendable, Equatable {
    public var cid: UInt64
    public var path: String
    public init(cid: UInt64 = 3, path: String) { self.cid = cid; self.path = path }

    /// `--vsock [cid=N,]path=PATH` (cid 3 by default).
    static func parse(flag s: String) throws(ConfigError) -> VsockConfig {
        var v = VsockConfig(path: "")
        for p in s.split(separator: ",").map(String.init) {
            let kv = p.split(separator: "=", maxSplits: 1).map(String.init)
            switch (kv[0], kv.count) {
            case ("path", 2): v.path = kv[1]
            case ("cid", 2):
                guard let n = UInt64(kv[1]) else { throw .invalid("--vsock", "cid must be a whole number, got \"\(kv[1])\"") }
                v.cid = n
            default: throw .invalid("--vsock", "unknown option \"\(p)\" (path=PATH, cid=N)")
            }
        }
        return v
    }

    static func parse(json value: JSONValue, key: String) throws(ConfigError) -> VsockConfig {
        guard case let .object(m) = value else { throw .invalid(key, "must be an object with \"path\" (and \"cid\")") }
        var v = VsockConfig(path: "")
        for (k, x) in m {
            switch k {
            case "path": v.path = try str("\(key).path", x)
            case "cid":
                let n = try int("\(key).cid", x)
                guard n >= 0 else { throw .invalid("\(key).cid", "must not be negative") }
                v.cid = UInt64(n)
            default: throw .invalid("\(key).\(k)", "unknown key (known: path, cid)")
            }
        }
        return v
    }

    var json: JSONValue { .object([("cid", .integer(Int64(cid))), ("path", .string(path))]) }

    func validate() throws(ConfigError) {
        // 0-2 are the hypervisor's, the reserved and the host's; the guest's must fit the 32 bits Linux keeps.
        guard cid >= 3, cid < 0xFFFF_FFFF else { throw .invalid("vsock.cid", "must be 3 to 4294967294, got \(cid)") }
        // The guest's connections to the host's PORT go to PATH_PORT: those whose name is too long are refused.
        guard !path.isEmpty, path.utf8.count <= 107 else { throw .invalid("vsock.path", "a socket path must be 1 to 107 bytes") }
    }
}

extension DiskConfig {
    /// `--disk PATH[,readonly][,format=raw|qcow2][,serial=ID][,bandwidth=BYTES_PER_S][,iops=N]`
    static func parse(flag s: String) throws(ConfigError) -> DiskConfig {
        let parts = s.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let first = parts.first, !first.isEmpty else {
            throw .invalid("--disk", "needs a path: --disk PATH[,readonly][,format=raw|qcow2][,serial=ID][,bandwidth=BYTES_PER_S][,iops=N]")
        }
        var d = DiskConfig(path: first.hasPrefix("path=") ? String(first.dropFirst(5)) : first)
        var rl = RateLimitConfig()
        for p in parts.dropFirst() {
            let kv = p.split(separator: "=", maxSplits: 1).map(String.init)
            switch (kv[0], kv.count) {
            case ("readonly", 1), ("ro", 1): d.readOnly = true
            case ("serial", 2): d.serial = kv[1]
            case ("format", 2): d.format = try format("--disk", kv[1])
            case ("bandwidth", 2), ("iops", 2):
                guard let n = parseInt(kv[1]), n > 0 else { throw .invalid("--disk", "\(kv[0]) must be a positive whole number, got \"\(kv[1])\"") }
                if kv[0] == "bandwidth" { rl.bandwidth = BucketConfig(size: UInt64(n)) } else { rl.ops = BucketConfig(size: UInt64(n)) }
            default: throw .invalid("--disk", "unknown option \"\(p)\" (readonly, format=raw|qcow2, serial=ID, bandwidth=BYTES_PER_S, iops=N)")
            }
        }
        if rl.bandwidth != nil || rl.ops != nil { d.rateLimit = rl }
        return d
    }

    static func parse(json v: JSONValue, key: String) throws(ConfigError) -> DiskConfig {
        guard case let .object(m) = v else { throw .invalid(key, "must be an object with \"path\"") }
        var d = DiskConfig(path: "")
        for (k, value) in m {
            switch k {
            case "path": d.path = try str("\(key).path", value)
            case "read_only":
                guard case let .bool(b) = value else { throw .invalid("\(key).read_only", "must be true or false") }
                d.readOnly = b
            case "serial": d.serial = try str("\(key).serial", value)
            case "format": d.format = try format("\(key).format", try str("\(key).format", value))
            case "rate_limit": d.rateLimit = try RateLimitConfig.parse(json: value, key: "\(key).rate_limit")
            default: throw .invalid("\(key).\(k)", "unknown key (known: path, read_only, format, serial, rate_limit)")
            }
        }
        guard !d.path.isEmpty else { throw .invalid(key, "needs a \"path\"") }
        return d
    }

    static func format(_ key: String, _ s: String) throws(ConfigError) -> DiskFormat {
        guard let f = DiskFormat(rawValue: s) else { throw .invalid(key, "format \"\(s)\" (raw or qcow2)") }
        return f
    }

    /// Checks the image before any VM exists: it exists, is a file or block device of at least one
    /// sector, and we may open it as asked; a qcow2 image's header and backing chain open.
    func validate(_ key: String) throws(ConfigError) {
        var st = stat()
        guard stat(path, &st) == 0 else { throw .file(path, "disk image: \(String(cString: strerror(errno)))") }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else { throw .file(path, "disk image: not a regular file or block device") }
        if kind == S_IFREG && st.st_size < 512 {
            throw .file(path, "disk image: \(st.st_size) bytes; a disk needs at least one 512-byte sector")
        }
        guard access(path, readOnly ? R_OK : (R_OK | W_OK)) == 0 else {
            throw .file(path, "disk image: cannot open it \(readOnly ? "for reading" : "read-write (add readonly?)"): \(String(cString: strerror(errno)))")
        }
        if let s = serial, s.utf8.count > 20 { throw .invalid("\(key).serial", "at most 20 bytes, got \(s.utf8.count)") }
        if format == .qcow2 {
            do { _ = try QCow2Image(path: path, readOnly: readOnly) } catch { throw .file(path, "disk image: \(error)") }
        }
    }
}

extension RateLimitConfig {
    /// {"bandwidth": {"size": BYTES, "refill_ms": MS, "one_time_burst": BYTES}, "ops": {...}}
    static func parse(json v: JSONValue, key: String) throws(ConfigError) -> RateLimitConfig {
        guard case let .object(m) = v else { throw .invalid(key, "must be an object with \"bandwidth\" and/or \"ops\"") }
        var r = RateLimitConfig()
        for (k, value) in m {
            guard k == "bandwidth" || k == "ops" else { throw .invalid("\(key).\(k)", "unknown key (known: bandwidth, ops)") }
            guard case let .object(b) = value else { throw .invalid("\(key).\(k)", "must be an object with size, refill_ms, one_time_burst") }
            var cfg = BucketConfig(size: 0)
            for (bk, bv) in b {
                let n = try int("\(key).\(k).\(bk)", bv)
                guard n >= 0 else { throw .invalid("\(key).\(k).\(bk)", "must not be negative") }
                switch bk {
                case "size": cfg.size = UInt64(n)
                case "refill_ms": cfg.refillMillis = UInt64(n)
                case "one_time_burst": cfg.oneTimeBurst = UInt64(n)
                default: throw .invalid("\(key).\(k).\(bk)", "unknown key (known: size, refill_ms, one_time_burst)")
                }
            }
            guard cfg.size > 0, cfg.refillMillis > 0 else { throw .invalid("\(key).\(k)", "size and refill_ms must be positive") }
            if k == "bandwidth" { r.bandwidth = cfg } else { r.ops = cfg }
        }
        return r
    }
}

public struct NetConfig: Sendable, Equatable {
    public var tap: String
    public var mac: [UInt8]? = nil
    public var rxRateLimit: RateLimitConfig? = nil
    public var txRateLimit: RateLimitConfig? = nil
    public init(tap: String, mac: [UInt8]? = nil) { self.tap = tap; self.mac = mac }

    /// `--net tap=NAME[,mac=52:54:00:12:34:56][,rx-bandwidth=BYTES_PER_S][,tx-bandwidth=…][,rx-pps=N][,tx-pps=N]`
    static func parse(flag s: String) throws(ConfigError) -> NetConfig {
        var n = NetConfig(tap: "")
        var rx = RateLimitConfig(), tx = RateLimitConfig()
        for p in s.split(separator: ",").map(String.init) {
            let kv = p.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw .invalid("--net", "expected KEY=VALUE, got \"\(p)\"") }
            switch kv[0] {
            case "tap": n.tap = kv[1]
            case "mac":
                guard let m = MAC.parse(kv[1]) else { throw .invalid("--net", "mac must be six hex bytes like 52:54:00:12:34:56 (unicast), got \"\(kv[1])\"") }
                n.mac = m
            case "rx-bandwidth", "tx-bandwidth", "rx-pps", "tx-pps":
                guard let v = parseInt(kv[1]), v > 0 else { throw .invalid("--net", "\(kv[0]) must be a positive whole number, got \"\(kv[1])\"") }
                let b = BucketConfig(size: UInt64(v))
                switch kv[0] {
                case "rx-bandwidth": rx.bandwidth = b
                case "tx-bandwidth": tx.bandwidth = b
                case "rx-pps": rx.ops = b
                default: tx.ops = b
                }
            default: throw .invalid("--net", "unknown option \"\(kv[0])\" (tap, mac, rx-bandwidth, tx-bandwidth, rx-pps, tx-pps)")
            }
        }
        guard !n.tap.isEmpty else { throw .invalid("--net", "needs tap=NAME") }
        if rx != RateLimitConfig() { n.rxRateLimit = rx }
        if tx != RateLimitConfig() { n.txRateLimit = tx }
        return n
    }

    static func parse(json v: JSONValue, key: String) throws(ConfigError) -> NetConfig {
        guard case let .object(m) = v else { throw .invalid(key, "must be an object with \"tap\"") }
        var n = NetConfig(tap: "")
        for (k, value) in m {
            switch k {
            case "tap": n.tap = try str("\(key).tap", value)
            case "mac":
                let s = try str("\(key).mac", value)
                guard let mac = MAC.parse(s) else { throw .invalid("\(key).mac", "must be six hex bytes like 52:54:00:12:34:56 (unicast), got \"\(s)\"") }
                n.mac = mac
            case "rx_rate_limit": n.rxRateLimit = try RateLimitConfig.parse(json: value, key: "\(key).rx_rate_limit")
            case "tx_rate_limit": n.txRateLimit = try RateLimitConfig.parse(json: value, key: "\(key).tx_rate_limit")
            default: throw .invalid("\(key).\(k)", "unknown key (known: tap, mac, rx_rate_limit, tx_rate_limit)")
            }
        }
        guard !n.tap.isEmpty else { throw .invalid(key, "needs a \"tap\"") }
        return n
    }

    func validate(_ key: String) throws(ConfigError) {
        guard n(tap) else { throw .invalid("\(key).tap", "\"\(tap)\" is not a valid interface name (1 to 15 characters, no '/' or spaces)") }
    }
    private func n(_ s: String) -> Bool { !s.isEmpty && s.utf8.count < 16 && !s.contains("/") && !s.contains(" ") }
}

public struct BalloonConfig: Sendable, Equatable {
    public var deflateOnOOM = true
    /// Initial target (MiB given back to the host); changed at run time through the control socket.
    public var targetMiB = 0
    /// Offer free page reporting: the guest hands free 2 MiB+ blocks back to the host on its own.
    public var freePageReporting = true
    public init(deflateOnOOM: Bool = true, targetMiB: Int = 0, freePageReporting: Bool = true) {
        self.deflateOnOOM = deflateOnOOM; self.targetMiB = targetMiB; self.freePageReporting = freePageReporting
    }

    static func parse(json v: JSONValue, key: String) throws(ConfigError) -> BalloonConfig? {
        switch v {
        case .bool(false), .null: return nil
        case .bool(true): return BalloonConfig()
        case let .object(m):
            var b = BalloonConfig()
            for (k, value) in m {
                switch k {
                case "deflate_on_oom":
                    guard case let .bool(x) = value else { throw .invalid("\(key).\(k)", "must be true or false") }
                    b.deflateOnOOM = x
                case "target_mib": b.targetMiB = try int("\(key).\(k)", value)
                case "free_page_reporting":
                    guard case let .bool(x) = value else { throw .invalid("\(key).\(k)", "must be true or false") }
                    b.freePageReporting = x
                default: throw .invalid("\(key).\(k)", "unknown key (known: deflate_on_oom, free_page_reporting, target_mib)")
                }
            }
            return b
        default: throw .invalid(key, "must be true, false or {deflate_on_oom, free_page_reporting, target_mib}, not \(v.typeName)")
        }
    }
}

/// Ethernet addresses as the configuration writes them.
public enum MAC {
    /// Parses "52:54:00:12:34:56".
    public static func parse(_ s: String) -> [UInt8]? {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            out.append(b)
        }
        // Unicast only: a multicast source address is not a valid NIC address.
        guard out[0] & 1 == 0 else { return nil }
        return out
    }

    /// A locally administered unicast MAC, random.
    public static func random() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 6)
        _ = b.withUnsafeMutableBytes { systemRandom($0) }
        b[0] = (b[0] & 0xFE) | 0x02
        return b
    }

    /// "52:54:00:12:34:56".
    public static func format(_ m: [UInt8]) -> String {
        m.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }
}

/// A display: a framebuffer of `width`×`height` (32 bpp) and a PS/2 keyboard, its screen and keys served
/// over VNC at `vncSocket` (a Unix socket of mode 0600). The kernel learns of the framebuffer through
/// boot_params' screen_info: the VM boots through the 64-bit protocol.
public struct DisplayConfig: Sendable, Equatable {
    public var width: Int
    public var height: Int
    public var vncSocket: String?
    public init(width: Int, height: Int, vncSocket: String? = nil) { self.width = width; self.height = height; self.vncSocket = vncSocket }

    /// The sizes a guest can have (2560×1600×4 stays within the 32 MiB the layout leaves).
    public static let widths = 320...2560
    public static let heights = 200...1600

    /// `--display WIDTHxHEIGHT`.
    static func parse(flag s: String) throws(ConfigError) -> DisplayConfig {
        let p = s.split(separator: "x").map(String.init)
        guard p.count == 2, let w = Int(p[0]), let h = Int(p[1]) else { throw .invalid("--display", "wants WIDTHxHEIGHT, e.g. 1024x768, not \"\(s)\"") }
        return DisplayConfig(width: w, height: h)
    }

    static func parse(json value: JSONValue, key: String) throws(ConfigError) -> DisplayConfig {
        guard case let .object(m) = value else { throw .invalid(key, "must be an object with \"width\" and \"height\" (and \"vnc_socket\")") }
        var d = DisplayConfig(width: 0, height: 0)
        for (k, x) in m {
            switch k {
            case "width": d.width = try int("\(key).width", x)
            case "height": d.height = try int("\(key).height", x)
            case "vnc_socket": d.vncSocket = x == .null ? nil : try str("\(key).vnc_socket", x)
            default: throw .invalid("\(key).\(k)", "unknown key (known: width, height, vnc_socket)")
            }
        }
        return d
    }

    var json: JSONValue {
        .object([("width", .integer(Int64(width))), ("height", .integer(Int64(height)))] + (vncSocket.map { [("vnc_socket", .string($0))] } ?? []))
    }

    func validate() throws(ConfigError) {
        guard Self.widths.contains(width), Self.heights.contains(height) else {
            throw .invalid("display", "\(width)x\(height): from 320x200 to 2560x1600")
        }
        if let p = vncSocket, p.isEmpty || p.utf8.count > UnixSocket.maxPathBytes {
            throw .invalid("display.vnc_socket", "a socket path must be 1 to \(UnixSocket.maxPathBytes) bytes")
        }
    }
}

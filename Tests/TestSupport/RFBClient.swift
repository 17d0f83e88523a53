import Foundation
import SystemKit

/// A VNC viewer for tests, written from RFC 6143 (independent of kumo-vmm's encoder): the 3.8 handshake
/// with security None, noVNC's pixel format (32 bpp, red in the low byte), Raw and Hextile decoded into a
/// picture of XRGB pixels, keys sent as keysyms.
public final class RFBClient {
    public let fd: Int32
    public private(set) var width = 0, height = 0
    public private(set) var name = ""
    /// The screen as the server has described it (0x00RRGGBB per pixel).
    public private(set) var pixels: [UInt32] = []
    /// Bytes received in updates (after the handshake).
    public private(set) var updateBytes = 0

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    /// Connects to the Unix socket at `path` and completes the handshake and ServerInit.
    public convenience init(path: String, timeoutSeconds: Int = 10) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &a.sun_path) { b in for (i, c) in path.utf8.enumerated() where i < b.count - 1 { b[i] = c } }
        let ok = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0 else {
            close(fd)
            throw Failure("connect \(path): errno \(errno)")
        }
        try self.init(connected: fd, timeoutSeconds: timeoutSeconds)
    }

    /// Connects to 127.0.0.1:`port` (a VNC proxy such as `kumo instance vnc --listen`), retrying for a moment.
    public convenience init(port: Int, timeoutSeconds: Int = 10) throws {
        var last: Error?
        for _ in 0..<100 {
            do {
                let fd = try TCPSocket.connect(port: port)
                try self.init(connected: fd.release(), timeoutSeconds: timeoutSeconds)
                return
            } catch let e as SysError {
                last = e
                usleep(50_000)
            }
        }
        throw Failure("\(last.map { "\($0)" } ?? "connect 127.0.0.1:\(port)")")
    }

    init(connected: Int32, timeoutSeconds: Int) throws {
        fd = connected
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let version = try read(12)
        guard version == Array("RFB 003.008\n".utf8) else { throw Failure("server version \(version)") }
        try write(Array("RFB 003.008\n".utf8))
        let types = try read(Int(try read(1)[0]))
        guard types.contains(1) else { throw Failure("security types \(types): no None") }
        try write([1])
        guard try read(4) == [0, 0, 0, 0] else { throw Failure("security failed") }
        try write([1])  // shared
        let head = try read(24)
        width = Int(head[0]) << 8 | Int(head[1])
        height = Int(head[2]) << 8 | Int(head[3])
        name = String(decoding: try read(Int(Self.u32(head, 20))), as: UTF8.self)
        pixels = Array(repeating: 0, count: width * height)
        // noVNC's pixel format, then the encodings: Hextile first, CopyRect, Raw.
        try write([0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0])
        try setEncodings([5, 1, 0])
    }

    deinit { close(fd) }

    /// SetEncodings: the encodings this viewer takes, the preferred first.
    public func setEncodings(_ list: [Int32]) throws {
        var m: [UInt8] = [2, 0, 0, UInt8(list.count)]
        for e in list { m += [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: UInt32(bitPattern: e) >> $0) } }
        try write(m)
    }

    static func u32(_ b: [UInt8], _ i: Int) -> UInt32 { UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3]) }

    public func write(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure("send: errno \(errno)") }
            off += n
        }
    }

    public func read(_ n: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var off = 0
        while off < n {
            let r = out[off...].withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            guard r > 0 else { throw Failure(r == 0 ? "the server closed the connection" : "read: errno \(errno) (timed out?)") }
            off += r
        }
        return out
    }

    /// Asks for an update of the whole screen (incremental: only what changed).
    public func request(incremental: Bool) throws {
        try write([3, incremental ? 1 : 0, 0, 0, 0, 0, UInt8(width >> 8), UInt8(width & 0xFF), UInt8(height >> 8), UInt8(height & 0xFF)])
    }

    public func key(_ keysym: UInt32, down: Bool) throws {
        try write([4, down ? 1 : 0, 0, 0, UInt8(keysym >> 24), UInt8((keysym >> 16) & 0xFF), UInt8((keysym >> 8) & 0xFF), UInt8(keysym & 0xFF)])
    }

    /// A PointerEvent: the pointer at (`x`, `y`) with `buttons` held (1 left, 2 middle, 4 right).
    public func pointer(buttons: UInt8, x: Int, y: Int) throws {
        try write([5, buttons, UInt8(x >> 8), UInt8(x & 0xFF), UInt8(y >> 8), UInt8(y & 0xFF)])
    }

    /// Presses and releases the key of each character of `text` (a US keyboard; Shift for capitals).
    public func type(_ text: String) throws {
        for c in text.unicodeScalars {
            let sym: UInt32 = c == "\n" ? 0xFF0D : c.value
            let shift = c.properties.isUppercase || "!@#$%^&*()_+{}|:\"<>?~".unicodeScalars.contains(c)
            if shift { try key(0xFFE1, down: true) }
            try key(sym, down: true)
            try key(sym, down: false)
            if shift { try key(0xFFE1, down: false) }
        }
    }

    /// Waits for one FramebufferUpdate and applies it; returns its rectangles. Other server messages are
    /// an error (this server sends none).
    @discardableResult
    public func readUpdate() throws -> [(x: Int, y: Int, w: Int, h: Int, encoding: Int32)] {
        let head = try read(4)
        guard head[0] == 0 else { throw Failure("server message type \(head[0])") }
        let n = Int(head[2]) << 8 | Int(head[3])
        var rects: [(Int, Int, Int, Int, Int32)] = []
        updateBytes += 4
        for _ in 0..<n {
            let r = try read(12)
            updateBytes += 12
            let x = Int(r[0]) << 8 | Int(r[1]), y = Int(r[2]) << 8 | Int(r[3]), w = Int(r[4]) << 8 | Int(r[5]), h = Int(r[6]) << 8 | Int(r[7])
            let enc = Int32(bitPattern: Self.u32(r, 8))
            guard x + w <= width, y + h <= height else { throw Failure("rectangle \(x),\(y) \(w)x\(h) outside \(width)x\(height)") }
            switch enc {
            case 0:
                let b = try read(w * h * 4)
                updateBytes += b.count
                for j in 0..<h { for i in 0..<w { pixels[(y + j) * width + x + i] = Self.pixel(b, (j * w + i) * 4) } }
            case 1:
                let s = try read(4)
                updateBytes += 4
                let sx = Int(s[0]) << 8 | Int(s[1]), sy = Int(s[2]) << 8 | Int(s[3])
                guard sx + w <= width, sy + h <= height else { throw Failure("a CopyRect from outside the screen") }
                let from = pixels
                for j in 0..<h { for i in 0..<w { pixels[(y + j) * width + x + i] = from[(sy + j) * width + sx + i] } }
            case 5: try hextile(x, y, w, h)
            default: throw Failure("encoding \(enc)")
            }
            rects.append((x, y, w, h, enc))
        }
        return rects
    }

    /// noVNC's format back to XRGB: red in the low byte.
    static func pixel(_ b: [UInt8], _ i: Int) -> UInt32 { UInt32(b[i]) << 16 | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) }

    func hextile(_ rx: Int, _ ry: Int, _ rw: Int, _ rh: Int) throws {
        var bg: UInt32? = nil, fg: UInt32 = 0
        for ty in stride(from: ry, to: ry + rh, by: 16) {
            for tx in stride(from: rx, to: rx + rw, by: 16) {
                let w = min(16, rx + rw - tx), h = min(16, ry + rh - ty)
                let sub = try read(1)[0]
                updateBytes += 1
                if sub & 1 != 0 {
                    let b = try read(w * h * 4)
                    updateBytes += b.count
                    for j in 0..<h { for i in 0..<w { pixels[(ty + j) * width + tx + i] = Self.pixel(b, (j * w + i) * 4) } }
                    bg = nil
                    continue
                }
                if sub & 2 != 0 { bg = Self.pixel(try read(4), 0); updateBytes += 4 }
                guard let background = bg else { throw Failure("a tile with no background") }
                for j in 0..<h { for i in 0..<w { pixels[(ty + j) * width + tx + i] = background } }
                if sub & 4 != 0 { fg = Self.pixel(try read(4), 0); updateBytes += 4 }
                if sub & 8 != 0 {
                    let count = Int(try read(1)[0])
                    updateBytes += 1
                    for _ in 0..<count {
                        var colour = fg
                        if sub & 16 != 0 { colour = Self.pixel(try read(4), 0); updateBytes += 4 }
                        let s = try read(2)
                        updateBytes += 2
                        let sx = Int(s[0] >> 4), sy = Int(s[0] & 15), sw = Int(s[1] >> 4) + 1, sh = Int(s[1] & 15) + 1
                        guard sx + sw <= w, sy + sh <= h else { throw Failure("a subrectangle outside its tile") }
                        for j in sy..<(sy + sh) { for i in sx..<(sx + sw) { pixels[(ty + j) * width + tx + i] = colour } }
                    }
                }
            }
        }
    }

    /// Whether nothing arrives within `seconds` (an idle screen sends nothing).
    public func quiet(for seconds: Double) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, Int32(seconds * 1000)) == 0
    }

    /// The screen as a PPM picture (for artifacts).
    public var ppm: Data {
        var d = Data("P6\n\(width) \(height)\n255\n".utf8)
        d.reserveCapacity(d.count + pixels.count * 3)
        for p in pixels { d.append(contentsOf: [UInt8(p >> 16 & 0xFF), UInt8(p >> 8 & 0xFF), UInt8(p & 0xFF)]) }
        return d
    }
}

// `kumo console INSTANCE`: the instance's serial console, interactive, over kumod's WebSocket
// (GET /v1/instances/{id}/console). A small RFC 6455 client on the CLI's own connection (TCP or
// kumod's Unix socket): the terminal goes raw, keys go to the guest, Ctrl-] detaches.
import ArgumentParser
import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct ConsoleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console",
        abstract: "Attach to an instance's serial console (Ctrl-] detaches)",
        discussion:
            "Shows the tail of what the guest printed so far, then the live console. Keys typed go to the guest's serial port. One client at a time: "
            + "attaching takes the console over from an earlier client."
    )
    @OptionGroup var global: Global
    @Argument(help: "instance id") var id: String

    mutating func run() throws {
        try perform {
            let e = try global.resolvedEndpoint()
            let ws = try WebSocketClient.open(e, path: "/v1/instances/\(try pathComponent(id))/console", token: global.resolvedToken())
            FileHandle.standardError.write(Data("kumo: attached to \(id)'s console; Ctrl-] detaches\r\n".utf8))
            let reason = ws.attachTerminal()
            FileHandle.standardError.write(Data("\r\nkumo: \(reason)\n".utf8))
        }
    }
}

/// A WebSocket client on a connected socket: frames in and out (client frames masked, RFC 6455 §5.3).
final class WebSocketClient: @unchecked Sendable {
    let fd: Int32
    var pending: [UInt8]
    let writeLock = NSLock()

    init(fd: Int32, pending: [UInt8]) { self.fd = fd; self.pending = pending }

    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    static func open(_ e: Endpoint, path: String, token: String?) throws -> WebSocketClient {
        let fd: Int32
        do { fd = try HTTPClient.connect(e) } catch { throw Failure.unreachable("\(error); is kumod running? (--endpoint, $KUMO_ENDPOINT)") }
        var nonce = [UInt8](repeating: 0, count: 16)
        for i in nonce.indices { nonce[i] = UInt8.random(in: 0...255) }
        let key = Data(nonce).base64EncodedString()
        var head =
            "GET \(path) HTTP/1.1\r\nHost: kumod\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\nUser-Agent: kumo-cli\r\n"
        if let token { head += "Authorization: Bearer \(token)\r\n" }
        head += "\r\n"
        guard writeAll(fd, Array(head.utf8)) else { close(fd); throw Failure.unreachable("sending to kumod: \(String(cString: strerror(errno)))") }
        // The answer's head; a refusal carries a JSON body to the end of the connection.
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        let separator: [UInt8] = [13, 10, 13, 10]
        var headEnd: Int? = nil
        while headEnd == nil {
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { close(fd); throw Failure.unreachable("kumod closed the connection during the WebSocket handshake") }
            data += buf[0..<n]
            if data.count >= 4 { headEnd = (0...(data.count - 4)).first { Array(data[$0..<$0 + 4]) == separator } }
            if data.count > 1 << 20 { close(fd); throw Failure.refused("kumod sent an oversized answer") }
        }
        let status = Int(String(decoding: data.prefix(12), as: UTF8.self).split(separator: " ").dropFirst().first ?? "") ?? 0
        if status != 101 {
            // Read the rest of a refusal (kumod closes or sends Content-Length worth of body).
            var all = data
            let want = Self.contentLength(Array(data[..<headEnd!])).map { headEnd! + 4 + $0 }
            while want.map({ all.count < $0 }) ?? true {
                let n = read(fd, &buf, buf.count)
                if n <= 0 { break }
                all += buf[0..<n]
            }
            close(fd)
            if let r = try? HTTPClient.parse(Data(all)), !r.body.isEmpty { throw Global.failure(r) }
            // A refused upgrade comes back as a bare 400; the same path as a plain request says why.
            if let r = try? HTTPClient.request(e, method: "GET", path: path, token: token), !(200..<300).contains(r.status) {
                throw Global.failure(r)
            }
            throw Failure.refused("kumod refused the console (HTTP \(status))")
        }
        let headText = String(decoding: data[..<headEnd!], as: UTF8.self).lowercased()
        let expected = Data(Insecure.SHA1.hash(data: Data((key + guid).utf8))).base64EncodedString().lowercased()
        guard headText.contains("sec-websocket-accept: \(expected)") else {
            close(fd)
            throw Failure.refused("kumod's WebSocket handshake did not answer our key")
        }
        return WebSocketClient(fd: fd, pending: Array(data[(headEnd! + 4)...]))
    }

    static func contentLength(_ head: [UInt8]) -> Int? {
        for line in String(decoding: head, as: UTF8.self).components(separatedBy: "\r\n") where line.lowercased().hasPrefix("content-length:") {
            return Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    /// One masked frame (FIN set).
    func send(opcode: UInt8, _ payload: [UInt8]) -> Bool {
        var f: [UInt8] = [0x80 | opcode]
        let n = payload.count
        if n < 126 {
            f.append(0x80 | UInt8(n))
        } else if n < 65536 {
            f += [0x80 | 126, UInt8(n >> 8), UInt8(n & 0xFF)]
        } else {
            f.append(0x80 | 127); for i in (0..<8).reversed() { f.append(UInt8((UInt64(n) >> (8 * UInt64(i))) & 0xFF)) }
        }
        let mask = (0..<4).map { _ in UInt8.random(in: 0...255) }
        f += mask
        for (i, b) in payload.enumerated() { f.append(b ^ mask[i & 3]) }
        writeLock.lock(); defer { writeLock.unlock() }
        return Self.writeAll(fd, f)
    }

    enum Frame { case data([UInt8]), close(UInt16?, String), ping([UInt8]), other }

    func fill(_ count: Int) -> Bool {
        var buf = [UInt8](repeating: 0, count: 65536)
        while pending.count < count {
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            pending += buf[0..<n]
        }
        return true
    }

    func take(_ n: Int) -> [UInt8] { let b = Array(pending[0..<n]); pending.removeFirst(n); return b }

    /// The next frame from kumod; nil when the connection ends.
    func nextFrame() -> Frame? {
        guard fill(2) else { return nil }
        let h = take(2)
        let opcode = h[0] & 0x0F
        var len = UInt64(h[1] & 0x7F)
        if len == 126 {
            guard fill(2) else { return nil }; let b = take(2); len = UInt64(b[0]) << 8 | UInt64(b[1])
        } else if len == 127 {
            guard fill(8) else { return nil }; len = take(8).reduce(0) { $0 << 8 | UInt64($1) }
        }
        guard len <= 1 << 24 else { return nil }
        var mask: [UInt8]? = nil
        if h[1] & 0x80 != 0 { guard fill(4) else { return nil }; mask = take(4) }
        guard fill(Int(len)) else { return nil }
        var payload = take(Int(len))
        if let m = mask { for i in payload.indices { payload[i] ^= m[i & 3] } }
        switch opcode {
        case 0, 1, 2: return .data(payload)
        case 8:
            let code = payload.count >= 2 ? UInt16(payload[0]) << 8 | UInt16(payload[1]) : nil
            return .close(code, payload.count > 2 ? String(decoding: payload[2...], as: UTF8.self) : "")
        case 9: return .ping(payload)
        default: return .other
        }
    }

    /// Runs the console: stdin to the guest (raw when it is a terminal), the guest to stdout, until
    /// Ctrl-] or kumod closes. Returns what ended it.
    func attachTerminal() -> String {
        var saved = termios()
        let tty = isatty(0) == 1 && tcgetattr(0, &saved) == 0
        if tty {
            var raw = saved
            cfmakeraw(&raw)
            tcsetattr(0, TCSANOW, &raw)
        }
        defer { if tty { tcsetattr(0, TCSANOW, &saved) } }
        let detached = SharedFlag(false)
        Thread.detachNewThread { [self] in
            var buf = [UInt8](repeating: 0, count: 1024)
            while true {
                let n = read(0, &buf, buf.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }  // stdin ended: keep showing the console until kumod closes or Ctrl-C
                var chunk = Array(buf[0..<n])
                if let i = chunk.firstIndex(of: 0x1D) {  // Ctrl-]
                    chunk = Array(chunk[..<i])
                    if !chunk.isEmpty { _ = send(opcode: 2, chunk) }
                    detached.set(true)
                    _ = send(opcode: 8, [0x03, 0xE8] + Array("detached".utf8))
                    shutdown(fd, Int32(SHUT_RD))
                    return
                }
                if !send(opcode: 2, chunk) { return }
            }
        }
        while let frame = nextFrame() {
            switch frame {
            case let .data(bytes):
                _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
            case let .close(_, reason):
                _ = send(opcode: 8, [0x03, 0xE8])
                close(fd)
                return detached.get() ? "detached" : "console closed" + (reason.isEmpty ? "" : ": \(reason)")
            case let .ping(p):
                _ = send(opcode: 10, p)
            case .other:
                break
            }
        }
        close(fd)
        return detached.get() ? "detached" : "connection to kumod ended"
    }
}

/// A flag shared between the stdin thread and the frame loop.
final class SharedFlag: @unchecked Sendable {
    private var value: Bool
    private let lock = NSLock()
    init(_ v: Bool) { value = v }
    func get() -> Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ v: Bool) { lock.lock(); value = v; lock.unlock() }
}

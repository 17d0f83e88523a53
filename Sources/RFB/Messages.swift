// The RFB conversation as a state machine over bytes: the 3.8 handshake with security "None" (the VNC
// socket's file mode is the boundary: docs/DISPLAY.md), ServerInit, then client messages parsed as they
// arrive (a message cut across reads waits for its end). A client is untrusted: every length is bounded,
// and anything malformed ends the session with the reason.

public enum Encoding {
    public static let raw: Int32 = 0
    public static let copyRect: Int32 = 1
    public static let hextile: Int32 = 5
    /// Pseudo-encoding: the client takes a new framebuffer size (a guest that changes its mode).
    public static let desktopSize: Int32 = -223
}

public enum ClientMessage: Sendable, Equatable {
    case setPixelFormat(PixelFormat)
    case setEncodings([Int32])
    case updateRequest(incremental: Bool, x: Int, y: Int, width: Int, height: Int)
    case key(down: Bool, keysym: UInt32)
    case pointer(buttons: UInt8, x: Int, y: Int)
    /// Clipboard text (Latin-1 by the protocol): its length only, the text is not kept.
    case cutText(length: Int)
}

public struct ProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// One client's session: feed it bytes, take what to send and the messages it parsed.
public struct RFBSession: Sendable {
    public enum Phase: Sendable, Equatable { case version, security, clientInit, normal }
    public private(set) var phase = Phase.version
    var input: [UInt8] = []
    /// Longest clipboard text accepted (skipped unread past the header: the guest has no clipboard).
    public static let maxCutText = 1 << 20
    public static let maxEncodings = 256
    public let width: Int, height: Int, name: String
    public private(set) var format = PixelFormat.xrgb
    public private(set) var encodings: [Int32] = [Encoding.raw]
    var skipping = 0

    public init(width: Int, height: Int, name: String) {
        self.width = width; self.height = height; self.name = name
    }

    /// What the server says first.
    public static let greeting = Array("RFB 003.008\n".utf8)

    /// Takes bytes from the client; returns what to send back and the messages it completed.
    public mutating func feed(_ bytes: ArraySlice<UInt8>) throws(ProtocolError) -> (reply: [UInt8], messages: [ClientMessage]) {
        input += bytes
        var reply: [UInt8] = [], messages: [ClientMessage] = []
        while true {
            if skipping > 0 {
                let n = min(skipping, input.count)
                input.removeFirst(n)
                skipping -= n
                if skipping > 0 { break }
            }
            switch phase {
            case .version:
                guard input.count >= 12 else { return (reply, messages) }
                let v = String(decoding: input[0..<12], as: UTF8.self)
                guard v.hasPrefix("RFB 003.") && v.hasSuffix("\n") else { throw ProtocolError("not an RFB client (\(v.debugDescription))") }
                // 3.7 and 3.8 negotiate security the same way; 3.3 is not offered.
                guard v == "RFB 003.008\n" || v == "RFB 003.007\n" else { throw ProtocolError("RFB version \(v.dropLast()) (3.7 or 3.8 wanted)") }
                input.removeFirst(12)
                reply += [1, 1]  // one security type: None
                phase = .security
            case .security:
                guard let t = input.first else { return (reply, messages) }
                input.removeFirst()
                guard t == 1 else { throw ProtocolError("security type \(t): only None (1)") }
                reply += [0, 0, 0, 0]  // SecurityResult OK
                phase = .clientInit
            case .clientInit:
                guard !input.isEmpty else { return (reply, messages) }
                input.removeFirst()  // shared flag: every viewer shares the screen
                reply += serverInit()
                phase = .normal
            case .normal:
                guard let m = try nextMessage() else { return (reply, messages) }
                switch m {
                case let .setPixelFormat(f):
                    guard f.isSupported else { throw ProtocolError("pixel format \(f): true colour at 8, 16 or 32 bpp only") }
                    format = f
                case let .setEncodings(e): encodings = e
                default: break
                }
                messages.append(m)
            }
        }
        return (reply, messages)
    }

    func serverInit() -> [UInt8] {
        var b: [UInt8] = []
        b.be16(UInt16(width)); b.be16(UInt16(height))
        b += PixelFormat.xrgb.encoded
        let n = Array(name.utf8.prefix(255))
        b.be32(UInt32(n.count)); b += n
        return b
    }

    /// The next whole client message, removed from the input; nil while it is incomplete.
    mutating func nextMessage() throws(ProtocolError) -> ClientMessage? {
        guard let type = input.first else { return nil }
        func u16(_ i: Int) -> Int { Int(input[i]) << 8 | Int(input[i + 1]) }
        func u32(_ i: Int) -> UInt32 { UInt32(input[i]) << 24 | UInt32(input[i + 1]) << 16 | UInt32(input[i + 2]) << 8 | UInt32(input[i + 3]) }
        switch type {
        case 0:
            guard input.count >= 20 else { return nil }
            let f = PixelFormat.decode(input[4..<20])!
            input.removeFirst(20)
            return .setPixelFormat(f)
        case 2:
            guard input.count >= 4 else { return nil }
            let n = u16(2)
            guard n <= Self.maxEncodings else { throw ProtocolError("\(n) encodings (at most \(Self.maxEncodings))") }
            guard input.count >= 4 + 4 * n else { return nil }
            let e = (0..<n).map { Int32(bitPattern: u32(4 + 4 * $0)) }
            input.removeFirst(4 + 4 * n)
            return .setEncodings(e)
        case 3:
            guard input.count >= 10 else { return nil }
            let m = ClientMessage.updateRequest(incremental: input[1] != 0, x: u16(2), y: u16(4), width: u16(6), height: u16(8))
            input.removeFirst(10)
            return m
        case 4:
            guard input.count >= 8 else { return nil }
            let m = ClientMessage.key(down: input[1] != 0, keysym: u32(4))
            input.removeFirst(8)
            return m
        case 5:
            guard input.count >= 6 else { return nil }
            let m = ClientMessage.pointer(buttons: input[1], x: u16(2), y: u16(4))
            input.removeFirst(6)
            return m
        case 6:
            guard input.count >= 8 else { return nil }
            let n = Int(u32(4))
            guard n <= Self.maxCutText else { throw ProtocolError("clipboard text of \(n) bytes (at most \(Self.maxCutText))") }
            input.removeFirst(8)
            skipping = n
            return .cutText(length: n)
        default:
            throw ProtocolError("unknown client message type \(type)")
        }
    }
}

extension Array where Element == UInt8 {
    @inline(__always) mutating func be16(_ v: UInt16) { append(UInt8(v >> 8)); append(UInt8(v & 0xFF)) }
    @inline(__always) mutating func be32(_ v: UInt32) {
        append(UInt8(v >> 24)); append(UInt8((v >> 16) & 0xFF)); append(UInt8((v >> 8) & 0xFF)); append(UInt8(v & 0xFF))
    }
}

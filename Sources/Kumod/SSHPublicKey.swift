// One OpenSSH public key, parsed and checked before kumod stores it or writes it into a guest's
// meta-data: the key blob (RFC 4253 §6.6, RFC 5656, PROTOCOL.u2f) is read field by field, so what is
// stored is a key OpenSSH accepts, not any base64.
import Crypto
import Foundation
import KumoAPI

public struct SSHPublicKey: Sendable, Equatable {
    public let type: String
    /// The decoded key blob.
    public let blob: Data

    /// The types kumod takes (ssh-dss is gone from OpenSSH; RSA below 2048 bits is refused).
    public static let types = [
        "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    ]
    static let maxLineBytes = 16 << 10

    /// "TYPE BASE64 [COMMENT]" (one line; the comment is dropped: kumod writes the key pair's name there).
    public init(line: String) throws(APIError) {
        func bad(_ why: String) -> APIError { APIError(code: "invalid_argument", message: "public_key: \(why)") }
        guard line.utf8.count <= Self.maxLineBytes else { throw bad("\(line.utf8.count) bytes; at most \(Self.maxLineBytes)") }
        let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.contains(where: { $0.isNewline }) else { throw bad("one key on one line") }
        let parts = trimmed.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
        guard parts.count >= 2 else { throw bad("expected \"TYPE BASE64 [COMMENT]\" (the contents of a .pub file)") }
        let type = String(parts[0])
        guard Self.types.contains(type) else {
            let shown = type.unicodeScalars.contains(where: Validate.isUnsafe) ? "" : " \(type.prefix(40))"
            throw bad("key type\(shown) is not taken (\(Self.types.joined(separator: ", ")))")
        }
        guard let blob = Data(base64Encoded: String(parts[1])) else { throw bad("the key is not base64") }
        var r = Reader(blob)
        guard let inner = r.string(), String(decoding: inner, as: UTF8.self) == type else {
            throw bad("the key's blob says it is not a \(type) key")
        }
        switch type {
        case "ssh-ed25519", "sk-ssh-ed25519@openssh.com":
            guard r.string()?.count == 32 else { throw bad("an Ed25519 key is 32 bytes") }
        case "ssh-rsa":
            guard let e = r.string(), let n = r.string(), !e.isEmpty, !n.isEmpty else { throw bad("an RSA key has an exponent and a modulus") }
            let bits = Self.bits(n)
            guard (2048...16384).contains(bits) else { throw bad("an RSA key of \(bits) bits; 2048 to 16384 are taken") }
        default:
            let curve = type.contains("nistp256") ? "nistp256" : type.contains("nistp384") ? "nistp384" : "nistp521"
            let point = ["nistp256": 65, "nistp384": 97, "nistp521": 133][curve]!
            guard let c = r.string(), String(decoding: c, as: UTF8.self) == curve, let q = r.string(), q.count == point, q.first == 0x04 else {
                throw bad("an ECDSA \(curve) key is its curve's name and an uncompressed point")
            }
        }
        if type.hasPrefix("sk-") {
            guard let app = r.string(), !app.isEmpty, app.count <= 255 else { throw bad("a security key names its application") }
        }
        guard r.atEnd else { throw bad("bytes after the key") }
        self.type = type
        self.blob = blob
    }

    /// "SHA256:…" (base64 of the blob's SHA-256, unpadded), as `ssh-keygen -l` prints it.
    public var fingerprint: String {
        "SHA256:" + Data(SHA256.hash(data: blob)).base64EncodedString().replacingOccurrences(of: "=", with: "")
    }

    /// An authorized_keys line with `comment` (a key pair name: no spaces, quotes or control characters).
    public func line(comment: String) -> String { "\(type) \(blob.base64EncodedString()) \(comment)" }

    /// The bit length of an SSH mpint (big-endian, a leading zero byte when the top bit is set).
    static func bits(_ n: [UInt8]) -> Int {
        guard let i = n.firstIndex(where: { $0 != 0 }) else { return 0 }
        return (n.endIndex - i - 1) * 8 + (8 - n[i].leadingZeroBitCount)
    }

    /// RFC 4251 §5 strings: a 32-bit big-endian length, then that many bytes.
    struct Reader {
        let data: [UInt8]
        var at = 0
        init(_ d: Data) { data = [UInt8](d) }
        var atEnd: Bool { at == data.count }
        mutating func string() -> [UInt8]? {
            guard data.count - at >= 4 else { return nil }
            let n = data[at..<at + 4].reduce(0) { $0 << 8 | Int($1) }
            guard n <= data.count - at - 4 else { return nil }
            defer { at += 4 + n }
            return Array(data[at + 4..<at + 4 + n])
        }
    }
}

// What kumod accepts as names, free text and identifiers. Limits count UTF-8 bytes (what the store
// and a terminal receive), never grapheme clusters, which can hide any number of bytes.

public enum Validate {
    /// A scalar that must never reach a store, a log or an admin's terminal: control characters (C0, DEL,
    /// C1, NUL among them), format characters (the bidi overrides and isolates, zero-width ones), line and
    /// paragraph separators, and scalars no Unicode version assigns.
    public static func isUnsafe(_ u: Unicode.Scalar) -> Bool {
        switch u.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator, .unassigned, .surrogate: return true
        default: return false
        }
    }

    /// Text a person reads (an instance name, a description): 1 to `maxBytes` bytes of UTF-8, on one line,
    /// nothing `isUnsafe`.
    public static func text(_ s: String, field: String, maxBytes: Int) throws(APIError) {
        let bytes = s.utf8.count
        guard bytes > 0 else { throw APIError(code: "invalid_argument", message: "\(field): must not be empty") }
        guard bytes <= maxBytes else {
            throw APIError(code: "invalid_argument", message: "\(field): \(bytes) bytes of UTF-8; at most \(maxBytes)")
        }
        if let bad = s.unicodeScalars.first(where: isUnsafe) {
            throw APIError(
                code: "invalid_argument",
                message: "\(field): contains U+\(hex(bad.value)) (control, format and bidirectional-override characters are refused)")
        }
    }

    /// An identifier (a type or image name): 1 to `maxBytes` ASCII letters, digits and `punctuation`, starting
    /// with a letter or digit; `lowercase` refuses capitals.
    public static func identifier(_ s: String, field: String, maxBytes: Int = 63, punctuation: String, lowercase: Bool = false) throws(APIError) {
        let allowed = Set(punctuation.unicodeScalars)
        func ok(_ u: Unicode.Scalar, first: Bool) -> Bool {
            switch u.value {
            case 0x30...0x39, 0x61...0x7A: return true
            case 0x41...0x5A: return !lowercase
            default: return !first && allowed.contains(u)
            }
        }
        let scalars = Array(s.unicodeScalars)
        guard !scalars.isEmpty, scalars.count <= maxBytes, ok(scalars[0], first: true), scalars.dropFirst().allSatisfy({ ok($0, first: false) }) else {
            let letters = lowercase ? "a-z" : "A-Z, a-z"
            let shown = s.unicodeScalars.contains(where: isUnsafe) ? "" : " \"\(s)\""
            throw APIError(
                code: "invalid_argument",
                message: "\(field)\(shown): 1–\(maxBytes) of \(letters), 0-9, \(punctuation.map { "'\($0)'" }.joined(separator: ", ")), "
                    + "starting with a letter or digit")
        }
    }

    /// A token a client chooses (idempotency): 1 to `maxBytes` printable ASCII characters.
    public static func token(_ s: String, field: String, maxBytes: Int = 64) throws(APIError) {
        guard !s.isEmpty, s.utf8.count <= maxBytes, s.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            throw APIError(code: "invalid_argument", message: "\(field): 1–\(maxBytes) printable ASCII characters, no spaces")
        }
    }

    /// A boolean query parameter: true/1 or false/0; anything else is an error, never a quiet false.
    public static func flag(_ value: String?, name: String) throws(APIError) -> Bool? {
        switch value {
        case nil: return nil
        case "true", "1": return true
        case "false", "0": return false
        case let v?:
            throw APIError(code: "invalid_argument", message: "query parameter \(name)=\"\(escaped(v))\": true, false, 1 or 0")
        }
    }

    /// `s` with every unsafe scalar shown as \u{…}: for terminals and messages.
    public static func escaped(_ s: String) -> String {
        var out = ""
        for u in s.unicodeScalars {
            if isUnsafe(u) { out += "\\u{\(hex(u.value))}" } else { out.unicodeScalars.append(u) }
        }
        return out
    }

    static func hex(_ v: UInt32) -> String {
        let h = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 4 - h.count)) + h
    }
}

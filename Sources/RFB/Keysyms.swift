// X11 keysyms (what RFB's KeyEvent carries) to PC keyboard scan codes, set 1 (what an i8042 that translates,
// as Linux leaves it, delivers): a US layout. Shifted characters map to their unshifted key; whether Shift
// must be down for them is `shifted` (KeyboardState adds it when the viewer did not). Keys outside the
// table are dropped.

public struct ScanCode: Sendable, Equatable {
    /// The make code; `extended` keys are preceded by 0xE0.
    public var code: UInt8
    public var extended: Bool
    public init(_ code: UInt8, extended: Bool = false) { self.code = code; self.extended = extended }

    /// The bytes of a press (make) or release (break: the make code with bit 7 set).
    public func bytes(down: Bool) -> [UInt8] {
        (extended ? [0xE0] : []) + [down ? code : code | 0x80]
    }
}

public enum Keysyms {
    static let shiftedCharacters = Set("!@#$%^&*()_+QWERTYUIOP{}ASDFGHJKL:\"~|ZXCVBNM<>?".unicodeScalars.map(\.value))

    /// Whether the character needs Shift on a US keyboard.
    public static func shifted(_ keysym: UInt32) -> Bool { shiftedCharacters.contains(keysym) }

    static let printable: [Character: UInt8] = {
        var m: [Character: UInt8] = [:]
        let rows: [(String, String, UInt8)] = [
            ("1234567890-=", "!@#$%^&*()_+", 0x02), ("qwertyuiop[]", "QWERTYUIOP{}", 0x10), ("asdfghjkl;'`", "ASDFGHJKL:\"~", 0x1E),
            ("\\zxcvbnm,./", "|ZXCVBNM<>?", 0x2B),
        ]
        for (plain, shifted, first) in rows {
            for (i, (a, b)) in zip(plain, shifted).enumerated() {
                m[a] = first + UInt8(i)
                m[b] = first + UInt8(i)
            }
        }
        m[" "] = 0x39
        return m
    }()

    static let special: [UInt32: ScanCode] = [
        0xFF08: ScanCode(0x0E), 0xFF09: ScanCode(0x0F), 0xFF0D: ScanCode(0x1C), 0xFF1B: ScanCode(0x01), 0xFFFF: ScanCode(0x53, extended: true),
        0xFF50: ScanCode(0x47, extended: true), 0xFF51: ScanCode(0x4B, extended: true), 0xFF52: ScanCode(0x48, extended: true),
        0xFF53: ScanCode(0x4D, extended: true), 0xFF54: ScanCode(0x50, extended: true), 0xFF55: ScanCode(0x49, extended: true),
        0xFF56: ScanCode(0x51, extended: true), 0xFF57: ScanCode(0x4F, extended: true), 0xFF63: ScanCode(0x52, extended: true),
        0xFFE1: ScanCode(0x2A), 0xFFE2: ScanCode(0x36), 0xFFE3: ScanCode(0x1D), 0xFFE4: ScanCode(0x1D, extended: true), 0xFFE5: ScanCode(0x3A),
        0xFFE9: ScanCode(0x38), 0xFFEA: ScanCode(0x38, extended: true), 0xFFEB: ScanCode(0x5B, extended: true),
        0xFFEC: ScanCode(0x5C, extended: true), 0xFF8D: ScanCode(0x1C, extended: true), 0xFF7F: ScanCode(0x45), 0xFF14: ScanCode(0x46),
    ]

    public static func scanCode(_ keysym: UInt32) -> ScanCode? {
        if let s = special[keysym] { return s }
        if (0xFFBE...0xFFC7).contains(keysym) { return ScanCode(0x3B + UInt8(keysym - 0xFFBE)) }  // F1–F10
        if keysym == 0xFFC8 { return ScanCode(0x57) }  // F11
        if keysym == 0xFFC9 { return ScanCode(0x58) }  // F12
        guard keysym >= 0x20, keysym < 0x7F, let c = printable[Character(Unicode.Scalar(UInt8(keysym)))] else { return nil }
        return ScanCode(c)
    }
}

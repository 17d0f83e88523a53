// One viewer's keys: RFB KeyEvents (keysyms) to the scan code bytes a PC keyboard would send. A keysym is
// the character, not the key, so a shifted character ('>', 'A') that arrives without the viewer holding
// Shift (a browser's synthesized keys, a paste) gets a Shift of ours around it, or the guest would read
// the key's plain character. Keys still down when the viewer goes are released, so none stays stuck.

public struct KeyboardState: Sendable {
    /// Keys down now, by keysym, and which of them we pressed Shift for.
    var held: [UInt32: ScanCode] = [:]
    var ourShift: Set<UInt32> = []
    var shiftsDown = 0
    static let leftShift = ScanCode(0x2A)

    public init() {}

    /// The bytes for the guest's keyboard; none for keys outside the layout.
    public mutating func event(down: Bool, keysym: UInt32) -> [UInt8] {
        guard let code = Keysyms.scanCode(keysym) else { return [] }
        if keysym == 0xFFE1 || keysym == 0xFFE2 { shiftsDown = max(0, shiftsDown + (down ? 1 : -1)) }
        if down {
            let repeated = held[keysym] != nil
            held[keysym] = code
            if !repeated && shiftsDown == 0 && Keysyms.shifted(keysym) {
                ourShift.insert(keysym)
                return Self.leftShift.bytes(down: true) + code.bytes(down: true)
            }
            return code.bytes(down: true)
        }
        guard held.removeValue(forKey: keysym) != nil else { return [] }  // a release of nothing pressed
        return code.bytes(down: false) + (ourShift.remove(keysym) != nil ? Self.leftShift.bytes(down: false) : [])
    }

    /// Releases every key still down (the viewer went away).
    public mutating func releaseAll() -> [UInt8] {
        var out: [UInt8] = []
        for k in held.keys.sorted() { out += event(down: false, keysym: k) }
        return out
    }
}

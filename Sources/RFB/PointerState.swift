// One viewer's pointer: RFB PointerEvents (absolute positions, buttons 1 left, 2 middle, 4 right) to the
// relative moves a PS/2 mouse reports (counts right and up; buttons 1 left, 2 right, 4 middle). The first
// event only sets where the pointer is. The wheel (buttons 8 and 16) has no place on a 3-button mouse.

public struct PointerState: Sendable {
    var last: (x: Int, y: Int)? = nil
    var buttons: UInt8 = 0

    public init() {}

    /// The move since the last event and the buttons now held, in PS/2 terms; nil when nothing changed.
    public mutating func event(buttons mask: UInt8, x: Int, y: Int) -> (dx: Int, dy: Int, buttons: UInt8)? {
        let b = (mask & 1) | (mask & 4) >> 1 | (mask & 2) << 1
        let move = last.map { (x - $0.x, $0.y - y) } ?? (0, 0)
        last = (x, y)
        guard move.0 != 0 || move.1 != 0 || b != buttons else { return nil }
        buttons = b
        return (move.0, move.1, b)
    }
}

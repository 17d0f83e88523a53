// Scrolls found in what changed: a text console that scrolls one line rewrites every line of the screen,
// which costs a viewer the whole screen again; as a CopyRect (RFC 6143 §7.7.2) it costs 16 bytes and the
// new line. Found by comparing rows, never assumed: a row moved only if its bytes are all equal.
#if canImport(Glibc)
import Glibc
#endif

/// Rows `rows` of the screen now show what rows `rows` shifted by `by` showed before (by > 0: the picture
/// moved up, as when a console scrolls).
public struct Scroll: Sendable, Equatable {
    public let rows: Range<Int>
    public let by: Int
    public init(rows: Range<Int>, by: Int) { self.rows = rows; self.by = by }
    public var source: Range<Int> { (rows.lowerBound + by)..<(rows.upperBound + by) }
}

extension Encoder {
    /// The shortest run of moved rows worth a CopyRect (a line of an 8x16 font).
    public static let minScrollRows = 16

    /// A vertical move of whole rows within `rows` (the rows written) from `shadow` (the screen as the
    /// viewers were sent it) to `s`, if one covers at least half of them; nil otherwise. Each changed row
    /// votes for the distances to where the old picture had it (unless it had it everywhere, as a blank
    /// row: that tells nothing and would cost rows × rows); the distance most voted for is checked row by
    /// row. A block of identical rows moved by d gives d the most votes: every row of it has one d away.
    public static func scroll(_ s: Screen, shadow: UnsafeRawPointer, rows: Range<Int>) -> Scroll? {
        let rows = max(0, rows.lowerBound)..<min(s.height, rows.upperBound)
        guard rows.count >= 2 * minScrollRows else { return nil }
        let bytes = s.width * 4
        func same(_ now: Int, _ before: Int) -> Bool { memcmp(s.base + now * s.stride, shadow + before * s.stride, bytes) == 0 }
        func hash(_ p: UnsafeRawPointer, _ y: Int) -> UInt64 {
            var h: UInt64 = 0xCBF2_9CE4_8422_2325
            let row = p + y * s.stride
            var i = 0
            while i + 8 <= bytes {
                h = (h ^ row.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0x0000_0100_0000_01B3
                i += 8
            }
            if i < bytes { h = (h ^ UInt64(row.loadUnaligned(fromByteOffset: i, as: UInt32.self))) &* 0x0000_0100_0000_01B3 }
            return h
        }
        var before: [UInt64: [Int]] = [:]
        for y in rows { before[hash(shadow, y), default: []].append(y) }
        var votes: [Int: Int] = [:]
        for y in rows {
            let h = hash(s.base, y)
            guard let was = before[h], was.count <= 64, !was.contains(y) else { continue }
            for w in was { votes[w - y, default: 0] += 1 }
        }
        guard let by = votes.max(by: { $0.value < $1.value || ($0.value == $1.value && abs($0.key) > abs($1.key)) })?.key else { return nil }
        // The longest run of rows that really did move by `by`.
        var best = 0..<0
        var start: Int? = nil
        for y in rows.lowerBound...rows.upperBound {
            let moved = y < rows.upperBound && rows.contains(y + by) && same(y, y + by)
            if moved, start == nil { start = y }
            if !moved, let s0 = start {
                if y - s0 > best.count { best = s0..<y }
                start = nil
            }
        }
        guard best.count >= minScrollRows, best.count * 2 >= rows.count else { return nil }
        return Scroll(rows: best, by: by)
    }

    /// Moves `shadow`'s rows as `scroll` says (the viewers' pictures after the CopyRect).
    public static func apply(_ scroll: Scroll, to shadow: UnsafeMutableRawPointer, stride: Int) {
        memmove(shadow + scroll.rows.lowerBound * stride, shadow + scroll.source.lowerBound * stride, scroll.rows.count * stride)
    }
}

// FramebufferUpdate rectangles: Raw, CopyRect and Hextile (RFC 6143 §7.7), and finding what changed. A
// text console is two colours per 16×16 tile, which Hextile sends as a background, a foreground and a few
// runs: a line of text costs some hundreds of bytes instead of the 64 KiB of its raw pixels.
#if canImport(Glibc)
import Glibc
#endif

public struct Rect: Sendable, Equatable {
    public var x: Int, y: Int, width: Int, height: Int
    public init(x: Int, y: Int, width: Int, height: Int) { self.x = x; self.y = y; self.width = width; self.height = height }
    public var isEmpty: Bool { width <= 0 || height <= 0 }
    public func clipped(width w: Int, height h: Int) -> Rect {
        let x0 = max(0, x), y0 = max(0, y), x1 = min(w, x + width), y1 = min(h, y + height)
        return Rect(x: x0, y: y0, width: max(0, x1 - x0), height: max(0, y1 - y0))
    }
}

/// A 32 bpp XRGB picture in memory (the guest's framebuffer, or the server's copy of it).
public struct Screen {
    public let base: UnsafeRawPointer
    public let width: Int, height: Int
    /// Bytes per line.
    public let stride: Int
    public init(base: UnsafeRawPointer, width: Int, height: Int, stride: Int) {
        self.base = base; self.width = width; self.height = height; self.stride = stride
    }
    @inline(__always) public func pixel(_ x: Int, _ y: Int) -> UInt32 {
        base.loadUnaligned(fromByteOffset: y * stride + x * 4, as: UInt32.self) & 0x00FF_FFFF
    }
}

public enum Encoder {
    public static func updateHeader(rectangles: Int) -> [UInt8] {
        var b: [UInt8] = [0, 0]
        b.be16(UInt16(rectangles))
        return b
    }

    static func rectHeader(_ r: Rect, _ encoding: Int32, into b: inout [UInt8]) {
        b.be16(UInt16(r.x)); b.be16(UInt16(r.y)); b.be16(UInt16(r.width)); b.be16(UInt16(r.height))
        b.be32(UInt32(bitPattern: encoding))
    }

    public static func raw(_ s: Screen, _ r: Rect, _ f: PixelFormat, into b: inout [UInt8]) {
        rectHeader(r, Encoding.raw, into: &b)
        b.reserveCapacity(b.count + r.width * r.height * f.bytesPerPixel)
        for y in r.y..<(r.y + r.height) { for x in r.x..<(r.x + r.width) { f.append(s.pixel(x, y), to: &b) } }
    }

    /// The pixels of `r` are those at (`fromX`, `fromY`) in what the client already shows.
    public static func copyRect(_ r: Rect, fromX: Int, fromY: Int, into b: inout [UInt8]) {
        rectHeader(r, Encoding.copyRect, into: &b)
        b.be16(UInt16(fromX)); b.be16(UInt16(fromY))
    }

    enum Sub {
        static let raw: UInt8 = 1, background: UInt8 = 2, foreground: UInt8 = 4, anySubrects: UInt8 = 8
    }

    public static func hextile(_ s: Screen, _ r: Rect, _ f: PixelFormat, into b: inout [UInt8]) {
        rectHeader(r, Encoding.hextile, into: &b)
        var lastBackground: UInt32? = nil  // what the client holds (none after a raw tile)
        var runs: [(x: Int, y: Int, w: Int)] = []
        runs.reserveCapacity(256)
        for ty in stride(from: r.y, to: r.y + r.height, by: 16) {
            for tx in stride(from: r.x, to: r.x + r.width, by: 16) {
                let w = min(16, r.x + r.width - tx), h = min(16, r.y + r.height - ty)
                // The tile's colours: one, two, or more.
                let first = s.pixel(tx, ty)
                var second: UInt32? = nil, countFirst = 0, many = false
                for y in ty..<(ty + h) where !many {
                    for x in tx..<(tx + w) {
                        let p = s.pixel(x, y)
                        if p == first { countFirst += 1 } else if second == nil { second = p } else if p != second! { many = true; break }
                    }
                }
                if !many, second == nil {
                    if lastBackground == first { b.append(0) } else { b.append(Sub.background); f.append(first, to: &b) }
                    lastBackground = first
                    continue
                }
                if !many, let other = second {
                    // The commoner colour is the background; runs of the other, a row each, merged down
                    // where a run repeats exactly in the next row.
                    let bg = countFirst * 2 >= w * h ? first : other, fg = bg == first ? other : first
                    runs.removeAll(keepingCapacity: true)
                    var fits = true
                    for y in 0..<h where fits {
                        var x = 0
                        while x < w {
                            guard s.pixel(tx + x, ty + y) == fg else { x += 1; continue }
                            var e = x
                            while e < w && s.pixel(tx + e, ty + y) == fg { e += 1 }
                            runs.append((x, y, e - x))
                            if runs.count > 255 { fits = false; break }
                            x = e
                        }
                    }
                    let size = 2 + 2 * f.bytesPerPixel + 2 * runs.count
                    if fits && size < 1 + w * h * f.bytesPerPixel {
                        let merged = mergeRuns(runs)
                        var sub = Sub.foreground | Sub.anySubrects
                        if lastBackground != bg { sub |= Sub.background }
                        b.append(sub)
                        if sub & Sub.background != 0 { f.append(bg, to: &b) }
                        f.append(fg, to: &b)
                        b.append(UInt8(merged.count))
                        for m in merged {
                            b.append(UInt8(m.x << 4 | m.y))
                            b.append(UInt8((m.w - 1) << 4 | (m.h - 1)))
                        }
                        lastBackground = bg
                        continue
                    }
                }
                b.append(Sub.raw)
                for y in ty..<(ty + h) { for x in tx..<(tx + w) { f.append(s.pixel(x, y), to: &b) } }
                lastBackground = nil
            }
        }
    }

    /// Runs of one row stacked with identical runs in the rows below into rectangles.
    static func mergeRuns(_ runs: [(x: Int, y: Int, w: Int)]) -> [(x: Int, y: Int, w: Int, h: Int)] {
        var out: [(x: Int, y: Int, w: Int, h: Int)] = []
        var open: [Int: Int] = [:]  // (x << 8 | w) → index in out of the rectangle ending on the row before
        var row = -1
        var next: [Int: Int] = [:]
        for r in runs {
            if r.y != row {
                if r.y != row + 1 { next.removeAll() }
                open = next
                next = [:]
                row = r.y
            }
            let key = r.x << 8 | r.w
            if let i = open[key], out[i].y + out[i].h == r.y {
                out[i].h += 1
                next[key] = i
            } else {
                out.append((r.x, r.y, r.w, 1))
                next[key] = out.count - 1
            }
        }
        return out
    }

    /// The 16×16 tiles of `s` inside `rows` that differ from `shadow`, copied into it, as rectangles
    /// (neighbouring changed tiles of a tile row joined).
    public static func changes(_ s: Screen, shadow: UnsafeMutableRawPointer, rows: Range<Int>) -> [Rect] {
        var out: [Rect] = []
        let first = rows.lowerBound / 16 * 16
        for ty in stride(from: first, to: min(rows.upperBound, s.height), by: 16) {
            let h = min(16, s.height - ty)
            var start: Int? = nil
            for tx in stride(from: 0, to: s.width, by: 16) {
                let w = min(16, s.width - tx)
                var changed = false
                for y in ty..<(ty + h) {
                    let o = y * s.stride + tx * 4
                    if memcmp(s.base + o, shadow + o, w * 4) != 0 {
                        changed = true
                        memcpy(shadow + o, s.base + o, w * 4)
                    }
                }
                if changed {
                    if start == nil { start = tx }
                } else if let x0 = start {
                    out.append(Rect(x: x0, y: ty, width: tx - x0, height: h))
                    start = nil
                }
            }
            if let x0 = start { out.append(Rect(x: x0, y: ty, width: s.width - x0, height: h)) }
        }
        return out
    }
}

import Foundation

/// Where scripts/guest.sh keeps the guest artifacts (${KUMO_CACHE:-~/.cache/kumo}/guest).
public enum GuestCache {
    public static let dir =
        (ProcessInfo.processInfo.environment["KUMO_CACHE"].map { URL(fileURLWithPath: $0) }
        ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/kumo")).appendingPathComponent("guest")
}

/// Reads the text off a screen that Linux's framebuffer console drew with its 8x16 VGA font: each 8x16
/// cell's foreground pixels are looked up among the font's printable glyphs, taken from the kernel's own
/// lib/fonts/font_8x16.c (in the source tree scripts/guest.sh unpacks). What a person would read on the
/// screen, from the pixels a VNC viewer got; nothing from the guest's text buffers.
public struct ConsoleFont: Sendable {
    let glyphs: [[UInt8]: Character]

    public struct Missing: Error, CustomStringConvertible {
        public let description: String
    }

    /// The font of the kernel source under the guest cache.
    public static func kernel() throws -> ConsoleFont {
        let src = GuestCache.dir.appendingPathComponent("linux-src")
        for tree in (try? FileManager.default.contentsOfDirectory(atPath: src.path)) ?? [] {
            let f = src.appendingPathComponent(tree).appendingPathComponent("lib/fonts/font_8x16.c")
            if FileManager.default.fileExists(atPath: f.path) { return try ConsoleFont(source: f.path) }
        }
        throw Missing(description: "no lib/fonts/font_8x16.c under \(src.path): run `make guest`")
    }

    /// Parses font_8x16.c: 256 glyphs of 16 rows, one "0xNN," per row.
    public init(source path: String) throws {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var rows: [UInt8] = []
        for line in text.split(separator: "\n") {
            let t = line.trimmingCharacters(in: .whitespaces)
            guard t.hasPrefix("0x"), let comma = t.firstIndex(of: ","), let v = UInt8(t[t.index(t.startIndex, offsetBy: 2)..<comma], radix: 16) else {
                continue
            }
            rows.append(v)
        }
        guard rows.count == 256 * 16 else { throw Missing(description: "\(path): \(rows.count) rows, not 4096") }
        var g: [[UInt8]: Character] = [:]
        // Printable ASCII; a space last so that an empty cell reads as one.
        for c in (0x21...0x7E).reversed() { g[Array(rows[c * 16..<(c + 1) * 16])] = Character(UnicodeScalar(UInt8(c))) }
        g[Array(repeating: 0, count: 16)] = " "
        glyphs = g
    }

    /// The screen's lines (trailing blanks dropped). The background is the screen's commonest colour; a
    /// cell that is no glyph (the cursor's, a box-drawing character) reads as "?".
    public func lines(_ pixels: [UInt32], width: Int, height: Int) -> [String] {
        var counts: [UInt32: Int] = [:]
        for p in pixels { counts[p & 0xFF_FFFF, default: 0] += 1 }
        let bg = counts.max { $0.value < $1.value }?.key ?? 0
        var out: [String] = []
        for row in 0..<(height / 16) {
            var line = ""
            for col in 0..<(width / 8) {
                var cell = [UInt8](repeating: 0, count: 16)
                for y in 0..<16 {
                    var bits: UInt8 = 0
                    for x in 0..<8 where pixels[(row * 16 + y) * width + col * 8 + x] & 0xFF_FFFF != bg { bits |= 0x80 >> x }
                    cell[y] = bits
                }
                line.append(glyphs[cell] ?? "?")
            }
            while line.last == " " { line.removeLast() }
            out.append(line)
        }
        return out
    }
}

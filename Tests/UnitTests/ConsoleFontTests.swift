import Foundation
import Testing
import TestSupport

/// The tests' screen reader (TestSupport.ConsoleFont) against pictures drawn here with the same font: what
/// the end-to-end screen checks conclude rests on it.
@Suite(.enabled(if: (try? ConsoleFont.kernel()) != nil, "the kernel source is not unpacked: run `make guest`"))
struct ConsoleFontTests {
    /// Draws `text` in 8x16 cells (foreground 0xAAAAAA on black, as fbcon's default colours) from the
    /// font file's own rows.
    static func draw(_ lines: [String], width: Int, height: Int) throws -> [UInt32] {
        let src = GuestCache.dir.appendingPathComponent("linux-src")
        let tree = try #require(try FileManager.default.contentsOfDirectory(atPath: src.path).first)
        let text = try String(contentsOfFile: src.appendingPathComponent(tree).appendingPathComponent("lib/fonts/font_8x16.c").path, encoding: .utf8)
        let rows = text.split(separator: "\n").compactMap { l -> UInt8? in
            let t = l.trimmingCharacters(in: .whitespaces)
            guard t.hasPrefix("0x"), let c = t.firstIndex(of: ",") else { return nil }
            return UInt8(t[t.index(t.startIndex, offsetBy: 2)..<c], radix: 16)
        }
        var px = [UInt32](repeating: 0, count: width * height)
        for (r, line) in lines.enumerated() {
            for (col, ch) in line.unicodeScalars.enumerated() {
                for y in 0..<16 {
                    let bits = rows[Int(ch.value) * 16 + y]
                    for x in 0..<8 where bits & (0x80 >> x) != 0 { px[(r * 16 + y) * width + col * 8 + x] = 0x00AA_AAAA }
                }
            }
        }
        return px
    }

    @Test func readsBackWhatWasDrawn() throws {
        let font = try ConsoleFont.kernel()
        let text = ["/ # echo kumo-$((6*7))", "kumo-42", "", "Linux version 6.1 (gcc) #1 SMP {x|y} ~ 100%"]
        var px = try Self.draw(text, width: 640, height: 480)
        let lines = font.lines(px, width: 640, height: 480)
        #expect(lines.count == 30)
        #expect(Array(lines.prefix(4)) == text)
        #expect(lines.dropFirst(4).allSatisfy { $0.isEmpty })
        // A cell that is no glyph of the font reads as "?", and the rest of its line still reads.
        for y in 16..<32 { px[y * 640 + 9 * 8] = 0x00FF_FFFF }
        #expect(font.lines(px, width: 640, height: 480)[1] == "kumo-42  ?")
    }
}

import RFB
import Testing

/// kumo-vmm's RFB 3.8 protocol and encoders (Sources/RFB) against client messages as noVNC 1.3 sends them,
/// and a Hextile decoder written from RFC 6143 (here, independent of the encoder) reading back every tile.
@Suite struct RFBTests {
    static func u16(_ v: Int) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    static func u32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }

    /// noVNC's own pixel format: 32 bpp, depth 24, little-endian, red in the low byte.
    static let novncFormat: [UInt8] = [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0]

    @Test func handshakeAndServerInit() throws {
        var s = RFBSession(width: 1024, height: 768, name: "i-0123")
        #expect(RFBSession.greeting == Array("RFB 003.008\n".utf8))
        var r = try s.feed(ArraySlice(Array("RFB 003.008\n".utf8)))
        #expect(r.reply == [1, 1] && s.phase == .security)
        r = try s.feed([1])
        #expect(r.reply == [0, 0, 0, 0])
        r = try s.feed([1])  // shared
        #expect(s.phase == .normal)
        #expect(Array(r.reply.prefix(4)) == Self.u16(1024) + Self.u16(768))
        #expect(Array(r.reply[4..<20]) == PixelFormat.xrgb.encoded)
        #expect(Array(r.reply[20..<24]) == Self.u32(6) && Array(r.reply[24...]) == Array("i-0123".utf8))
    }

    @Test func clientMessagesAsNoVNCSendsThemEvenCutAcrossReads() throws {
        var s = RFBSession(width: 640, height: 480, name: "vm")
        _ = try s.feed(ArraySlice(Array("RFB 003.008\n".utf8) + [1, 1]))
        // SetPixelFormat, SetEncodings (Hextile, CopyRect, Raw, DesktopSize), an update request, a key
        // press and release, a pointer move, clipboard text: one stream, fed a byte at a time.
        var stream: [UInt8] = [0, 0, 0, 0] + Self.novncFormat
        stream += [2, 0] + Self.u16(4) + Self.u32(5) + Self.u32(1) + Self.u32(0) + Self.u32(UInt32(bitPattern: -223))
        stream += [3, 1] + Self.u16(0) + Self.u16(0) + Self.u16(640) + Self.u16(480)
        stream += [4, 1, 0, 0] + Self.u32(0x61) + [4, 0, 0, 0] + Self.u32(0x61)
        stream += [5, 1] + Self.u16(10) + Self.u16(20)
        stream += [6, 0, 0, 0] + Self.u32(5) + Array("hello".utf8)
        var got: [ClientMessage] = []
        for b in stream { got += try s.feed([b]).messages }
        let f = try #require(PixelFormat.decode(ArraySlice(Self.novncFormat)))
        #expect(
            got == [
                .setPixelFormat(f), .setEncodings([5, 1, 0, -223]), .updateRequest(incremental: true, x: 0, y: 0, width: 640, height: 480),
                .key(down: true, keysym: 0x61), .key(down: false, keysym: 0x61), .pointer(buttons: 1, x: 10, y: 20), .cutText(length: 5),
            ])
        #expect(s.format == f && s.encodings == [5, 1, 0, -223])
    }

    @Test func whatIsRefused() {
        func refuses(_ bytes: [UInt8], handshake: Bool = true, _ words: String) {
            var s = RFBSession(width: 8, height: 8, name: "x")
            do {
                if handshake { _ = try s.feed(ArraySlice(Array("RFB 003.008\n".utf8) + [1, 1])) }
                _ = try s.feed(ArraySlice(bytes))
                Issue.record("\(bytes) was taken")
            } catch { #expect(error.description.contains(words), "\(error)") }
        }
        refuses(Array("SSH-2.0-OpenSSH\n".utf8), handshake: false, "not an RFB client")
        refuses(Array("RFB 003.003\n".utf8), handshake: false, "3.7 or 3.8")
        refuses(Array("RFB 003.008\n".utf8) + [2], handshake: false, "only None")
        refuses([9], "unknown client message type 9")
        refuses([2, 0] + Self.u16(5000), "5000 encodings")
        refuses([6, 0, 0, 0] + Self.u32(1 << 30), "clipboard text")
        refuses([0, 0, 0, 0, 24, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0], "true colour at 8, 16 or 32 bpp")
        refuses([0, 0, 0, 0, 32, 24, 0, 0, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0], "true colour")
    }

    /// A screen of `w`×`h` XRGB pixels with text-like tiles, flat tiles and noise.
    static func screen(_ w: Int, _ h: Int) -> [UInt32] {
        var p = [UInt32](repeating: 0x0000_0000, count: w * h)
        var seed: UInt32 = 12345
        for y in 0..<h {
            for x in 0..<w {
                if y < 16 {
                    // "Text": light grey strokes on black.
                    p[y * w + x] = ((x / 2 + y) % 5 == 0 || (x % 7 == 3 && y % 4 != 0)) ? 0x00AA_AAAA : 0
                } else if y < 32 {
                    p[y * w + x] = x < w / 2 ? 0x0000_00AA : 0x00AA_5500  // two flat halves
                } else {
                    seed = seed &* 1_103_515_245 &+ 12345
                    p[y * w + x] = seed >> 8 & 0x00FF_FFFF  // noise
                }
            }
        }
        return p
    }

    /// RFC 6143 §7.7.4, decoded for the tests: a rectangle's pixels from its Hextile tiles.
    static func decodeHextile(_ b: [UInt8], at start: Int, width: Int, height: Int, bpp: Int) throws -> (pixels: [[UInt8]], end: Int) {
        var out = [[UInt8]](repeating: [], count: width * height)
        var i = start, bg: [UInt8] = [], fg: [UInt8] = []
        for ty in stride(from: 0, to: height, by: 16) {
            for tx in stride(from: 0, to: width, by: 16) {
                let w = min(16, width - tx), h = min(16, height - ty)
                let sub = b[i]
                i += 1
                if sub & 1 != 0 {
                    for y in 0..<h { for x in 0..<w { out[(ty + y) * width + tx + x] = Array(b[i..<(i + bpp)]); i += bpp } }
                    continue
                }
                if sub & 2 != 0 { bg = Array(b[i..<(i + bpp)]); i += bpp }
                try #require(!bg.isEmpty, "a tile without a background")
                for y in 0..<h { for x in 0..<w { out[(ty + y) * width + tx + x] = bg } }
                if sub & 4 != 0 { fg = Array(b[i..<(i + bpp)]); i += bpp }
                if sub & 8 != 0 {
                    let n = Int(b[i])
                    i += 1
                    for _ in 0..<n {
                        var colour = fg
                        if sub & 16 != 0 { colour = Array(b[i..<(i + bpp)]); i += bpp }
                        let xy = b[i], wh = b[i + 1]
                        i += 2
                        let sx = Int(xy >> 4), sy = Int(xy & 15), sw = Int(wh >> 4) + 1, sh = Int(wh & 15) + 1
                        try #require(sx + sw <= w && sy + sh <= h, "a subrectangle outside its tile")
                        for y in sy..<(sy + sh) { for x in sx..<(sx + sw) { out[(ty + y) * width + tx + x] = colour } }
                    }
                }
            }
        }
        return (out, i)
    }

    @Test(arguments: [32, 16, 8])
    func hextileReadsBackAsTheScreen(bits: Int) throws {
        let w = 100, h = 48  // tiles cut at the right and bottom edges too
        var pixels = Self.screen(w, h)
        let format: PixelFormat =
            switch bits {
            case 32: try #require(PixelFormat.decode(ArraySlice(Self.novncFormat)))
            case 16:
                PixelFormat(
                    bitsPerPixel: 16, depth: 16, bigEndian: true, trueColour: true, redMax: 31, greenMax: 63, blueMax: 31, redShift: 11, greenShift: 5,
                    blueShift: 0)
            default:
                PixelFormat(
                    bitsPerPixel: 8, depth: 8, bigEndian: false, trueColour: true, redMax: 7, greenMax: 7, blueMax: 3, redShift: 0, greenShift: 3, blueShift: 6)
            }
        try pixels.withUnsafeMutableBytes { raw in
            let s = Screen(base: raw.baseAddress!, width: w, height: h, stride: w * 4)
            let r = Rect(x: 0, y: 0, width: w, height: h)
            var hex: [UInt8] = [], plain: [UInt8] = []
            Encoder.hextile(s, r, format, into: &hex)
            Encoder.raw(s, r, format, into: &plain)
            #expect(Array(hex[8..<12]) == [0, 0, 0, 5] && Array(plain[8..<12]) == [0, 0, 0, 0])
            let bpp = bits / 8
            let decoded = try Self.decodeHextile(hex, at: 12, width: w, height: h, bpp: bpp)
            #expect(decoded.end == hex.count, "every byte is part of a tile")
            for i in 0..<(w * h) { #expect(decoded.pixels[i] == Array(plain[(12 + i * bpp)..<(12 + (i + 1) * bpp)]), "pixel \(i % w),\(i / w)") }
            // The text and flat bands cost a fraction of their raw pixels.
            var text: [UInt8] = []
            Encoder.hextile(s, Rect(x: 0, y: 0, width: w, height: 32), format, into: &text)
            #expect(text.count * 3 < 12 + w * 32 * bpp, "\(text.count) bytes for \(w * 32 * bpp) of pixels")
        }
    }

    @Test func changedTilesAreFoundAndCopied() {
        let w = 64, h = 48
        var screen = Self.screen(w, h), shadow = screen
        screen.withUnsafeMutableBytes { cur in
            shadow.withUnsafeMutableBytes { sh in
                let s = Screen(base: cur.baseAddress!, width: w, height: h, stride: w * 4)
                #expect(Encoder.changes(s, shadow: sh.baseAddress!, rows: 0..<h).isEmpty, "nothing changed")
                cur.storeBytes(of: UInt32(0x00FF_FFFF), toByteOffset: (20 * w + 3) * 4, as: UInt32.self)  // tile (0, 16)
                cur.storeBytes(of: UInt32(0x00FF_FFFF), toByteOffset: (21 * w + 20) * 4, as: UInt32.self)  // tile (16, 16)
                cur.storeBytes(of: UInt32(0x00FF_FFFF), toByteOffset: (47 * w + 63) * 4, as: UInt32.self)  // tile (48, 32)
                #expect(Encoder.changes(s, shadow: sh.baseAddress!, rows: 0..<16).isEmpty, "only the rows asked about")
                let found = Encoder.changes(s, shadow: sh.baseAddress!, rows: 0..<h)
                #expect(found == [Rect(x: 0, y: 16, width: 32, height: 16), Rect(x: 48, y: 32, width: 16, height: 16)], "\(found)")
                #expect(Encoder.changes(s, shadow: sh.baseAddress!, rows: 0..<h).isEmpty, "the shadow took them")
            }
        }
    }

    @Test func keysymsToSetOneScanCodes() {
        #expect(Keysyms.scanCode(0x61) == ScanCode(0x1E) && Keysyms.scanCode(0x41) == ScanCode(0x1E), "a and A: one key")
        #expect(Keysyms.scanCode(0x21) == ScanCode(0x02), "! is Shift+1")
        #expect(Keysyms.scanCode(0x20) == ScanCode(0x39) && Keysyms.scanCode(0x7C) == ScanCode(0x2B))
        #expect(Keysyms.scanCode(0xFF0D)?.bytes(down: true) == [0x1C] && Keysyms.scanCode(0xFF0D)?.bytes(down: false) == [0x9C])
        #expect(Keysyms.scanCode(0xFF51)?.bytes(down: true) == [0xE0, 0x4B] && Keysyms.scanCode(0xFF51)?.bytes(down: false) == [0xE0, 0xCB])
        #expect(Keysyms.scanCode(0xFFBE) == ScanCode(0x3B) && Keysyms.scanCode(0xFFC9) == ScanCode(0x58), "F1, F12")
        #expect(Keysyms.scanCode(0x20AC) == nil, "€: not on a US keyboard")
    }

    /// A shifted character sent without Shift (as Selenium's and many browsers' synthesized keys are) gets
    /// a Shift of the server's around it; with the viewer's own Shift down, none is added; keys left down
    /// when a viewer goes are released.
    @Test func shiftIsAddedWhereTheViewerLeftItOut() {
        var k = KeyboardState()
        #expect(k.event(down: true, keysym: 0x3E) == [0x2A, 0x34], "'>' alone: Shift, then the '.' key")
        #expect(k.event(down: true, keysym: 0x3E) == [0x34], "auto-repeat: the key again, Shift is still down")
        #expect(k.event(down: false, keysym: 0x3E) == [0xB4, 0xAA])
        #expect(k.event(down: true, keysym: 0xFFE1) == [0x2A])
        #expect(k.event(down: true, keysym: 0x41) == [0x1E], "'A' with the viewer's Shift down")
        #expect(k.event(down: false, keysym: 0x41) == [0x9E])
        #expect(k.event(down: false, keysym: 0xFFE1) == [0xAA])
        #expect(k.event(down: true, keysym: 0x61) == [0x1E] && k.event(down: false, keysym: 0x61) == [0x9E], "'a': no Shift")
        #expect(k.event(down: false, keysym: 0x62) == [], "a release of a key never pressed sends nothing")
        #expect(k.event(down: true, keysym: 0x20AC) == [], "outside the layout")
        _ = k.event(down: true, keysym: 0xFFE3)
        _ = k.event(down: true, keysym: 0x24)
        #expect(k.releaseAll() == [0x85, 0xAA, 0x9D], "'$' (with our Shift) and Ctrl released")
        #expect(k.releaseAll() == [])
    }

    /// A text-like picture: 16-row "lines" (lines 13 apart look alike), each row of a line its own, the
    /// last rows of each blank.
    static func textScreen(_ w: Int, _ h: Int, first: Int) -> [UInt32] {
        (0..<(w * h)).map { i in
            let x = i % w, y = i / w, line = first + y / 16
            return (x * (y % 16 + 1) + line * 7) % 13 < 3 && y % 16 < 12 ? 0x00AA_AAAA : 0
        }
    }

    @Test func aScrollIsFoundAndItsCopyMakesTheOldPictureTheNew() {
        let w = 128, h = 96
        var old = Self.textScreen(w, h, first: 0)
        // One line up, a new line at the bottom: rows 0..<80 show what rows 16..<96 showed.
        var now = Array(old[(16 * w)...]) + Self.textScreen(w, 16, first: 40)
        now.withUnsafeMutableBytes { cur in
            old.withUnsafeMutableBytes { sh in
                let s = Screen(base: cur.baseAddress!, width: w, height: h, stride: w * 4)
                let scroll = Encoder.scroll(s, shadow: sh.baseAddress!, rows: 0..<h)
                #expect(scroll == Scroll(rows: 0..<80, by: 16), "\(String(describing: scroll))")
                #expect(Encoder.scroll(s, shadow: sh.baseAddress!, rows: 0..<16) == nil, "too few rows to tell")
                if let scroll { Encoder.apply(scroll, to: sh.baseAddress!, stride: w * 4) }
                #expect(Encoder.changes(s, shadow: sh.baseAddress!, rows: 0..<h) == [Rect(x: 0, y: 80, width: w, height: 16)], "then only the new line")
                #expect(Encoder.scroll(s, shadow: sh.baseAddress!, rows: 0..<h) == nil, "nothing moved any more")
            }
        }
        // Down by 32 (a pager going back), and a picture that only changed in place: no scroll.
        old = Self.textScreen(w, h, first: 0)
        now = Self.textScreen(w, 32, first: 90) + Array(old[..<(64 * w)])
        now.withUnsafeMutableBytes { cur in
            old.withUnsafeMutableBytes { sh in
                let s = Screen(base: cur.baseAddress!, width: w, height: h, stride: w * 4)
                #expect(Encoder.scroll(s, shadow: sh.baseAddress!, rows: 0..<h) == Scroll(rows: 32..<96, by: -32))
            }
        }
        now = Self.textScreen(w, h, first: 100)
        now.withUnsafeMutableBytes { cur in
            old.withUnsafeMutableBytes { sh in
                #expect(Encoder.scroll(Screen(base: cur.baseAddress!, width: w, height: h, stride: w * 4), shadow: sh.baseAddress!, rows: 0..<h) == nil)
            }
        }
    }

    /// Absolute RFB pointer positions to relative PS/2 moves: the first event only places the pointer,
    /// Y grows downwards on the screen and upwards for the mouse, and the middle and right buttons swap bits.
    @Test func pointerEventsBecomeMouseMoves() {
        var p = PointerState()
        #expect(p.event(buttons: 0, x: 100, y: 100) == nil, "placed, nothing moved")
        let m = p.event(buttons: 1, x: 110, y: 95)
        #expect(m?.dx == 10 && m?.dy == 5 && m?.buttons == 1)
        #expect(p.event(buttons: 1, x: 110, y: 95) == nil, "the same again")
        #expect(p.event(buttons: 4, x: 110, y: 95)?.buttons == 2, "RFB's right (4) is PS/2's 2")
        #expect(p.event(buttons: 2, x: 110, y: 95)?.buttons == 4, "RFB's middle (2) is PS/2's 4")
        #expect(p.event(buttons: 8 | 2, x: 110, y: 95) == nil, "the wheel is left out")
        let down = p.event(buttons: 0, x: 90, y: 120)
        #expect(down?.dx == -20 && down?.dy == -25 && down?.buttons == 0)
    }
}

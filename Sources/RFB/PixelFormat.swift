// RFB 3.8 (RFC 6143) for kumo-vmm's VNC server: pure protocol and encoding, no I/O, no Foundation. The
// guest's framebuffer is 32 bpp XRGB (B, G, R, X in memory, as efifb is told); a client may ask for any
// true-colour format (noVNC asks for 32 bpp with red in the low byte), and every pixel sent is converted.

/// A PIXEL_FORMAT (RFC 6143 §7.4): 16 bytes on the wire.
public struct PixelFormat: Sendable, Equatable {
    public var bitsPerPixel: UInt8
    public var depth: UInt8
    public var bigEndian: Bool
    public var trueColour: Bool
    public var redMax: UInt16, greenMax: UInt16, blueMax: UInt16
    public var redShift: UInt8, greenShift: UInt8, blueShift: UInt8

    public init(
        bitsPerPixel: UInt8, depth: UInt8, bigEndian: Bool, trueColour: Bool, redMax: UInt16, greenMax: UInt16, blueMax: UInt16,
        redShift: UInt8, greenShift: UInt8, blueShift: UInt8
    ) {
        self.bitsPerPixel = bitsPerPixel; self.depth = depth; self.bigEndian = bigEndian; self.trueColour = trueColour
        self.redMax = redMax; self.greenMax = greenMax; self.blueMax = blueMax
        self.redShift = redShift; self.greenShift = greenShift; self.blueShift = blueShift
    }

    /// The server's own: the framebuffer's layout (32 bpp little-endian, red at bit 16).
    public static let xrgb = PixelFormat(
        bitsPerPixel: 32, depth: 24, bigEndian: false, trueColour: true, redMax: 255, greenMax: 255, blueMax: 255, redShift: 16, greenShift: 8,
        blueShift: 0)

    public var bytesPerPixel: Int { Int(bitsPerPixel) / 8 }

    public var encoded: [UInt8] {
        [
            bitsPerPixel, depth, bigEndian ? 1 : 0, trueColour ? 1 : 0, UInt8(redMax >> 8), UInt8(redMax & 0xFF), UInt8(greenMax >> 8),
            UInt8(greenMax & 0xFF), UInt8(blueMax >> 8), UInt8(blueMax & 0xFF), redShift, greenShift, blueShift, 0, 0, 0,
        ]
    }

    public static func decode(_ b: ArraySlice<UInt8>) -> PixelFormat? {
        guard b.count >= 16 else { return nil }
        let s = b.startIndex
        func u16(_ i: Int) -> UInt16 { UInt16(b[s + i]) << 8 | UInt16(b[s + i + 1]) }
        return PixelFormat(
            bitsPerPixel: b[s], depth: b[s + 1], bigEndian: b[s + 2] != 0, trueColour: b[s + 3] != 0, redMax: u16(4), greenMax: u16(6),
            blueMax: u16(8), redShift: b[s + 10], greenShift: b[s + 11], blueShift: b[s + 12])
    }

    /// What this server can convert to: true colour, 8, 16 or 32 bpp, each channel's max 2^n − 1 and
    /// inside the pixel.
    public var isSupported: Bool {
        guard trueColour, [8, 16, 32].contains(bitsPerPixel) else { return false }
        for (m, s) in [(redMax, redShift), (greenMax, greenShift), (blueMax, blueShift)] {
            guard m > 0, m & (m &+ 1) == 0, Int(s) + (16 - m.leadingZeroBitCount) <= Int(bitsPerPixel) else { return false }
        }
        return true
    }

    /// Appends the guest's XRGB pixel `p` to `out` in this format.
    @inline(__always)
    public func append(_ p: UInt32, to out: inout [UInt8]) {
        let r = (p >> 16) & 0xFF, g = (p >> 8) & 0xFF, b = p & 0xFF
        let v =
            ((r * UInt32(redMax) + 127) / 255) << redShift | ((g * UInt32(greenMax) + 127) / 255) << greenShift
            | ((b * UInt32(blueMax) + 127) / 255) << blueShift
        switch bitsPerPixel {
        case 8: out.append(UInt8(truncatingIfNeeded: v))
        case 16:
            if bigEndian {
                out.append(UInt8(truncatingIfNeeded: v >> 8)); out.append(UInt8(truncatingIfNeeded: v))
            } else {
                out.append(UInt8(truncatingIfNeeded: v)); out.append(UInt8(truncatingIfNeeded: v >> 8))
            }
        default:
            if bigEndian {
                out.append(UInt8(truncatingIfNeeded: v >> 24)); out.append(UInt8(truncatingIfNeeded: v >> 16))
                out.append(UInt8(truncatingIfNeeded: v >> 8)); out.append(UInt8(truncatingIfNeeded: v))
            } else {
                out.append(UInt8(truncatingIfNeeded: v)); out.append(UInt8(truncatingIfNeeded: v >> 8))
                out.append(UInt8(truncatingIfNeeded: v >> 16)); out.append(UInt8(truncatingIfNeeded: v >> 24))
            }
        }
    }
}

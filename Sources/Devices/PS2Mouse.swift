/// A PS/2 mouse as Linux's psmouse drives it (the standard 3-byte protocol, device ID 00): the commands
/// it sends through the i8042's aux port and their answers, and movement packets. No I/O of its own: the
/// i8042 holds it under its lock.
struct PS2Mouse {
    var reporting = false
    var sampleRate: UInt8 = 100
    var resolution: UInt8 = 2  // 4 counts/mm
    var scaling21 = false
    var pending: UInt8 = 0  // a command waiting for its argument
    var buttons: UInt8 = 0

    /// A byte written to the mouse: its answer (0xFA acknowledges; 0xFE asks for it again).
    mutating func receive(_ v: UInt8) -> [UInt8] {
        if pending != 0 {
            defer { pending = 0 }
            switch pending {
            case 0xF3: sampleRate = v
            case 0xE8: guard v <= 3 else { return [0xFE] }; resolution = v
            default: break
            }
            return [0xFA]
        }
        switch v {
        case 0xFF: self = PS2Mouse(); return [0xFA, 0xAA, 0x00]  // reset: self-test passed, ID 00
        case 0xF6: let b = buttons; self = PS2Mouse(); buttons = b; return [0xFA]  // defaults
        case 0xF5: reporting = false; return [0xFA]
        case 0xF4: reporting = true; return [0xFA]
        case 0xF3, 0xE8: pending = v; return [0xFA]
        case 0xF2: return [0xFA, 0x00]  // device ID: a standard PS/2 mouse
        case 0xE9:  // status: remote mode 0, reporting, scaling, buttons; resolution; sample rate
            let st: UInt8 = (reporting ? 0x20 : 0) | (scaling21 ? 0x10 : 0) | (buttons & 1) << 2 | (buttons & 4) >> 1 | (buttons & 2) >> 1
            return [0xFA, st, resolution, sampleRate]
        case 0xE6: scaling21 = false; return [0xFA]
        case 0xE7: scaling21 = true; return [0xFA]
        case 0xEA, 0xF0, 0xEC, 0xEE: return [0xFA]  // stream mode, remote mode, wrap on/off: taken
        case 0xEB: return [0xFA] + packet(dx: 0, dy: 0)  // read data
        default: return [0xFE]
        }
    }

    /// Movement packets for a move of (`dx`, `dy`) with `buttons` held, each within the 9-bit range;
    /// none while reporting is off or when nothing changed.
    mutating func packets(dx: Int, dy: Int, buttons new: UInt8) -> [UInt8] {
        guard reporting, dx != 0 || dy != 0 || new & 7 != buttons else { return [] }
        buttons = new & 7
        var out: [UInt8] = []
        var x = dx, y = dy
        repeat {
            let sx = max(-255, min(255, x)), sy = max(-255, min(255, y))
            out += packet(dx: sx, dy: sy)
            x -= sx
            y -= sy
        } while (x != 0 || y != 0) && out.count < 48
        return out
    }

    func packet(dx: Int, dy: Int) -> [UInt8] {
        let head: UInt8 = 0x08 | buttons & 7 | (dx < 0 ? 0x10 : 0) | (dy < 0 ? 0x20 : 0)
        return [head, UInt8(truncatingIfNeeded: dx), UInt8(truncatingIfNeeded: dy)]
    }
}

import Synchronization

/// The i8042 keyboard controller (ports 0x60 data, 0x64 status/command). Every VM has its CPU reset line
/// (command 0xFE, or bit 0 cleared through "write output port"), which is how `reboot` resets us. A VM with
/// a display also has a PS/2 keyboard behind it (IRQ 1): it answers Linux's atkbd (reset, identify, LEDs,
/// scan code set, typematic, enable) and delivers the keys the VNC viewer types, as set-1 scan codes, as a
/// translating controller does (Linux leaves translation on). Without a keyboard, bytes written to it are
/// answered "resend", as by a port with nothing plugged in. Port I/O comes from vCPU threads and keys from
/// the VNC thread: one lock.
public final class I8042: BusDevice, @unchecked Sendable {
    struct State {
        var commandByte: UInt8 = 0x45  // keyboard interrupt, system flag, translation
        var output: [UInt8] = []
        var pendingCommand: UInt8 = 0  // a controller command waiting for its data byte
        var pendingKeyboard: UInt8 = 0  // a keyboard command waiting for its argument
        var scanning = true
    }
    let state = Mutex(State())
    /// IRQ 1, when there is a keyboard.
    let irq: InterruptLine?
    static let status: UInt8 = 0x14  // system flag (self-test passed), keyboard not inhibited (no keylock)
    /// Keys typed while the guest has not read earlier ones: at most this many bytes wait.
    public static let maxQueued = 256

    public init(keyboard irq: InterruptLine? = nil) {
        self.irq = irq
        super.init()
    }

    public var hasKeyboard: Bool { irq != nil }

    public override func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        let (value, more) = state.withLock { s -> (UInt8, Bool) in
            if offset == 0 {  // 0x60: data
                let v = s.output.isEmpty ? 0 : s.output.removeFirst()
                return (v, !s.output.isEmpty && s.commandByte & 0x01 != 0)
            }
            return (Self.status | (s.output.isEmpty ? 0 : 0x01), false)  // 0x64: status, OBF when data waits
        }
        data[0] = value
        for i in 1..<data.count { data[i] = 0 }
        // Each byte is an interrupt of its own: the next one as soon as this one is taken.
        if more { irq?.trigger() }
    }

    public override func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction {
        guard data.count >= 1 else { return .none }
        let v = data[0]
        var interrupt = false
        let action = state.withLock { s -> IOAction in
            let before = s.output.count
            defer { interrupt = irq != nil && s.output.count > before && before == 0 && s.commandByte & 0x01 != 0 }
            if offset == 4 { return controllerCommand(v, &s) }
            // 0x60: data, for a controller command that wants it, else for the keyboard.
            let pending = s.pendingCommand
            s.pendingCommand = 0
            switch pending {
            case 0x60: s.commandByte = v
            case 0xD1: if v & 1 == 0 { return .reset(.i8042) }
            case 0xD2: s.output.append(v)  // "write keyboard output buffer": as if the keyboard sent it
            case 0xD4: s.output.append(0xFE)  // to the mouse port: there is none
            default: keyboardByte(v, &s)
            }
            return .none
        }
        if interrupt { irq?.trigger() }
        return action
    }

    func controllerCommand(_ v: UInt8, _ s: inout State) -> IOAction {
        s.pendingCommand = 0
        switch v {
        case 0x20: s.output.append(s.commandByte)
        case 0x60, 0xD1, 0xD2, 0xD4: s.pendingCommand = v
        case 0xAA: s.output.append(0x55)  // controller self-test passed
        case 0xA9, 0xAB: s.output.append(0x00)  // port tests passed
        case 0xAD: s.commandByte |= 0x10  // keyboard clock off
        case 0xAE: s.commandByte &= ~0x10
        case 0xFE: return .reset(.i8042)
        default: break
        }
        return .none
    }

    /// A byte for the keyboard (a command, or a command's argument): its answers into the output buffer.
    func keyboardByte(_ v: UInt8, _ s: inout State) {
        guard irq != nil else {
            s.output.append(0xFE)  // nothing plugged in: "resend"
            return
        }
        if s.pendingKeyboard != 0 {
            s.pendingKeyboard = 0
            s.output.append(0xFA)  // the argument of LEDs, scan code set or typematic: taken
            return
        }
        switch v {
        case 0xFF: s.output += [0xFA, 0xAA]; s.scanning = true  // reset: ack, self-test passed
        case 0xF2: s.output += [0xFA, 0xAB, s.commandByte & 0x40 != 0 ? 0x41 : 0x83]  // identify (translated or not)
        case 0xED, 0xF0, 0xF3: s.output.append(0xFA); s.pendingKeyboard = v
        case 0xF4: s.output.append(0xFA); s.scanning = true
        case 0xF5: s.output.append(0xFA); s.scanning = false
        case 0xF6: s.output.append(0xFA); s.scanning = true
        case 0xEE: s.output.append(0xEE)  // echo
        default: s.output.append(0xFA)
        }
    }

    /// Bytes from the keyboard (a key's scan codes), when the guest lets it send: scanning, the keyboard's
    /// clock on, translation on (set 1). False when they were dropped.
    @discardableResult
    public func keyboardSends(_ bytes: [UInt8]) -> Bool {
        guard let irq else { return false }
        let interrupt = state.withLock { s -> Bool? in
            guard s.scanning, s.commandByte & 0x10 == 0, s.commandByte & 0x40 != 0, s.output.count + bytes.count <= Self.maxQueued else { return nil }
            let wasEmpty = s.output.isEmpty
            s.output += bytes
            return wasEmpty && s.commandByte & 0x01 != 0
        }
        guard let interrupt else { return false }
        if interrupt { irq.trigger() }
        return true
    }
}

import Synchronization

/// The i8042 keyboard controller (ports 0x60 data, 0x64 status/command). Every VM has its CPU reset line
/// (command 0xFE, or bit 0 cleared through "write output port"), which is how `reboot` resets us. A VM with
/// a display also has a PS/2 keyboard behind it (IRQ 1): it answers Linux's atkbd (reset, identify, LEDs,
/// scan code set, typematic, enable) and delivers the keys the VNC viewer types, as set-1 scan codes, as a
/// translating controller does (Linux leaves translation on); and a PS/2 mouse on the aux port (IRQ 12,
/// `PS2Mouse`), which the viewer's pointer moves. Without a keyboard, bytes written to it are answered
/// "resend", as by a port with nothing plugged in; likewise the aux port without a mouse. Port I/O comes
/// from vCPU threads and keys and pointer moves from the VNC thread: one lock.
public final class I8042: BusDevice, @unchecked Sendable {
    struct State {
        var commandByte: UInt8 = 0x45  // keyboard interrupt, system flag, translation
        /// The output buffer and what waits behind it; `aux` bytes come from the mouse (status bit 5, IRQ 12).
        var output: [(byte: UInt8, aux: Bool)] = []
        var pendingCommand: UInt8 = 0  // a controller command waiting for its data byte
        var pendingKeyboard: UInt8 = 0  // a keyboard command waiting for its argument
        var scanning = true
        var mouse = PS2Mouse()
    }
    let state = Mutex(State())
    /// IRQ 1, when there is a keyboard; IRQ 12, when there is a mouse.
    let irq: InterruptLine?
    let auxIRQ: InterruptLine?
    static let status: UInt8 = 0x14  // system flag (self-test passed), keyboard not inhibited (no keylock)
    /// Keys typed (and pointer moves) while the guest has not read earlier ones: at most this many bytes wait.
    public static let maxQueued = 256

    public init(keyboard irq: InterruptLine? = nil, mouse auxIRQ: InterruptLine? = nil) {
        self.irq = irq
        self.auxIRQ = auxIRQ
        super.init()
    }

    public var hasKeyboard: Bool { irq != nil }
    public var hasMouse: Bool { auxIRQ != nil }

    /// The interrupt for the byte now at the head of the output buffer, if its port's interrupt is on.
    func headInterrupt(_ s: State) -> InterruptLine? {
        guard let head = s.output.first else { return nil }
        if head.aux { return s.commandByte & 0x02 != 0 ? auxIRQ : nil }
        return s.commandByte & 0x01 != 0 ? irq : nil
    }

    public override func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        let (value, next) = state.withLock { s -> (UInt8, InterruptLine?) in
            if offset == 0 {  // 0x60: data
                let v = s.output.isEmpty ? 0 : s.output.removeFirst().byte
                return (v, headInterrupt(s))
            }
            // 0x64: status; OBF when data waits, and AUXDATA when it is the mouse's.
            guard let head = s.output.first else { return (Self.status, nil) }
            return (Self.status | 0x01 | (head.aux ? 0x20 : 0), nil)
        }
        data[0] = value
        for i in 1..<data.count { data[i] = 0 }
        // Each byte is an interrupt of its own: the next one as soon as this one is taken.
        next?.trigger()
    }

    public override func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction {
        guard data.count >= 1 else { return .none }
        let v = data[0]
        var interrupt: InterruptLine? = nil
        let action = state.withLock { s -> IOAction in
            let wasEmpty = s.output.isEmpty
            defer { if wasEmpty { interrupt = headInterrupt(s) } }
            if offset == 4 { return controllerCommand(v, &s) }
            // 0x60: data, for a controller command that wants it, else for the keyboard.
            let pending = s.pendingCommand
            s.pendingCommand = 0
            switch pending {
            case 0x60: s.commandByte = v
            case 0xD1: if v & 1 == 0 { return .reset(.i8042) }
            case 0xD2: s.output.append((v, false))  // "write keyboard output buffer": as if the keyboard sent it
            case 0xD3: if auxIRQ != nil { s.output.append((v, true)) }  // the same from the mouse (Linux's AUX loop test)
            case 0xD4:  // to the mouse
                if auxIRQ != nil {
                    s.output += s.mouse.receive(v).map { ($0, true) }
                } else {
                    s.output.append((0xFE, false))  // there is none
                }
            default: keyboardByte(v, &s)
            }
            return .none
        }
        interrupt?.trigger()
        return action
    }

    func controllerCommand(_ v: UInt8, _ s: inout State) -> IOAction {
        s.pendingCommand = 0
        switch v {
        case 0x20: s.output.append((s.commandByte, false))
        case 0x60, 0xD1, 0xD2, 0xD4: s.pendingCommand = v
        case 0xD3: if auxIRQ != nil { s.pendingCommand = v }
        case 0xAA: s.output.append((0x55, false))  // controller self-test passed
        case 0xAB: s.output.append((0x00, false))  // keyboard port test passed
        case 0xA9: s.output.append((auxIRQ != nil ? 0x00 : 0xFF, false))  // aux port test: passed, or nothing there
        case 0xA7: if auxIRQ != nil { s.commandByte |= 0x20 }  // aux clock off
        case 0xA8: if auxIRQ != nil { s.commandByte &= ~0x20 }
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
            s.output.append((0xFE, false))  // nothing plugged in: "resend"
            return
        }
        if s.pendingKeyboard != 0 {
            s.pendingKeyboard = 0
            s.output.append((0xFA, false))  // the argument of LEDs, scan code set or typematic: taken
            return
        }
        let answer: [UInt8]
        switch v {
        case 0xFF: answer = [0xFA, 0xAA]; s.scanning = true  // reset: ack, self-test passed
        case 0xF2: answer = [0xFA, 0xAB, s.commandByte & 0x40 != 0 ? 0x41 : 0x83]  // identify (translated or not)
        case 0xED, 0xF0, 0xF3: answer = [0xFA]; s.pendingKeyboard = v
        case 0xF4: answer = [0xFA]; s.scanning = true
        case 0xF5: answer = [0xFA]; s.scanning = false
        case 0xF6: answer = [0xFA]; s.scanning = true
        case 0xEE: answer = [0xEE]  // echo
        default: answer = [0xFA]
        }
        s.output += answer.map { ($0, false) }
    }

    /// Bytes from the keyboard (a key's scan codes), when the guest lets it send: scanning, the keyboard's
    /// clock on, translation on (set 1). False when they were dropped.
    @discardableResult
    public func keyboardSends(_ bytes: [UInt8]) -> Bool {
        guard irq != nil else { return false }
        return deliver(aux: false) { s in s.scanning && s.commandByte & 0x10 == 0 && s.commandByte & 0x40 != 0 ? bytes : [] }
    }

    /// The mouse moved (`dx` right, `dy` up, in counts) with `buttons` held (left 1, right 2, middle 4):
    /// movement packets, when the guest lets it report (reporting on, aux clock on). False when dropped.
    @discardableResult
    public func mouseMoves(dx: Int, dy: Int, buttons: UInt8) -> Bool {
        guard auxIRQ != nil else { return false }
        return deliver(aux: true) { s in
            guard s.commandByte & 0x20 == 0 else { return [] }
            // The mouse keeps the buttons it reported: only when its packets are taken.
            var m = s.mouse
            let bytes = m.packets(dx: dx, dy: dy, buttons: buttons)
            if s.output.count + bytes.count <= Self.maxQueued { s.mouse = m }
            return bytes
        }
    }

    /// Puts what `make` yields from a port into the output buffer when all of it fits (at most `maxQueued`
    /// bytes wait), and raises the interrupt for the head if the buffer was empty. False when nothing went.
    func deliver(aux: Bool, _ make: (inout State) -> [UInt8]) -> Bool {
        var interrupt: InterruptLine? = nil
        let taken = state.withLock { s -> Bool in
            let bytes = make(&s)
            guard !bytes.isEmpty, s.output.count + bytes.count <= Self.maxQueued else { return false }
            let wasEmpty = s.output.isEmpty
            s.output += bytes.map { ($0, aux) }
            if wasEmpty { interrupt = headInterrupt(s) }
            return true
        }
        interrupt?.trigger()
        return taken
    }
}

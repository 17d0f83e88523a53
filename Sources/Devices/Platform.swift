import Synchronization

/// The hardware-reduced ACPI sleep and reset registers (see the FADT): S5 → power off, reset → reset.
public final class ACPIPowerDevice: BusDevice, @unchecked Sendable {
    let sleepType: UInt8
    let resetValue: UInt8
    public init(sleepType: UInt8, resetValue: UInt8) {
        self.sleepType = sleepType
        self.resetValue = resetValue
        super.init()
    }
    public override func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count { data[i] = 0 }
    }
    public override func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction {
        guard data.count >= 1 else { return .none }
        let v = data[0]
        switch offset {
        case 0 where v & 0x20 != 0 && (v >> 2) & 0x7 == sleepType: return .powerOff  // SLP_EN with SLP_TYP = S5
        case 2 where v == resetValue: return .reset(.acpi)
        default: return .none
        }
    }
}

/// The reset control register at port 0xCF9 (Intel chipsets; Linux's `reboot=pci`, and its last resort
/// before a triple fault): setting RST_CPU (bit 2) resets the machine, as on hardware. Bits 1 (hard
/// reset) and 3 (full reset) are kept and read back; there is no difference between them here.
public final class ResetControlDevice: BusDevice, @unchecked Sendable {
    var value: UInt8 = 0
    public override init() { super.init() }
    public override func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count { data[i] = i == 0 ? value : 0 }
    }
    public override func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction {
        guard data.count == 1 else { return .none }  // a dword at 0xCF8 is PCI configuration, not ours
        value = data[0] & 0x0A
        return data[0] & 0x04 != 0 ? .reset(.cf9) : .none
    }
}

/// The boot marker: the guest writes the magic byte when it reaches init.
public final class BootMarkerDevice: BusDevice, @unchecked Sendable {
    let magic: UInt8
    public init(magic: UInt8) { self.magic = magic; super.init() }
    public override func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count { data[i] = 0 }
    }
    public override func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction {
        data.count >= 1 && offset == 0 && data[0] == magic ? .bootMarker : .none
    }
}

/// The Generic Event Device's event register (hardware-reduced ACPI; see `AML.powerButton`). The host
/// raises an event (the power button) by setting its bit and interrupting; the guest's _EVT method
/// reads the register, which hands over the pending bits and clears them. The counts tell the host
/// whether a guest's ACPI layer took the event.
public final class GenericEventDevice: BusDevice, @unchecked Sendable {
    struct State { var pending: UInt32 = 0; var raised: UInt64 = 0; var taken: UInt64 = 0 }
    let state = Mutex(State())
    let irq: InterruptLine

    public init(irq: InterruptLine) { self.irq = irq; super.init() }

    /// Raises `event` (e.g. `1`: the power button) and interrupts the guest.
    public func raise(_ event: UInt32) {
        state.withLock {
            $0.pending |= event; $0.raised += 1
        }
        irq.trigger()
    }

    /// (events raised by the host, reads by the guest that took pending events)
    public var counts: (raised: UInt64, taken: UInt64) { state.withLock { ($0.raised, $0.taken) } }

    public override func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        var v: UInt32 = 0
        if offset == 0 {
            v = state.withLock { s in
                let p = s.pending
                if p != 0 { s.taken += 1; s.pending = 0 }
                return p
            }
        }
        for i in 0..<data.count { data[i] = i < 4 ? UInt8((v >> (8 * UInt32(i))) & 0xFF) : 0 }
    }

    public override func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction { .none }
}

import Testing
import Synchronization
@testable import Devices

final class CaptureSink: SerialSink, @unchecked Sendable {
    let bytes = Mutex<[UInt8]>([])
    func write(_ byte: UInt8) { bytes.withLock { $0.append(byte) } }
    var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
}

final class Counter: @unchecked Sendable {
    let n = Atomic<Int>(0)
}

func out(_ d: BusDevice, _ offset: UInt64, _ v: UInt8) -> IOAction {
    withUnsafeBytes(of: v) { d.write(offset: offset, data: $0) }
}
func inb(_ d: BusDevice, _ offset: UInt64) -> UInt8 {
    var v: UInt8 = 0
    withUnsafeMutableBytes(of: &v) { d.read(offset: offset, data: $0) }
    return v
}

@Suite struct SerialTests {
    @Test func transmitAndTHREInterrupt() {
        let sink = CaptureSink()
        let irqs = Counter()
        let u = Serial8250(sink: sink, irq: InterruptLine { irqs.n.add(1, ordering: .relaxed) })
        for c in "hi".utf8 { _ = out(u, 0, c) }
        #expect(sink.text == "hi")
        #expect(inb(u, 5) & 0x60 == 0x60)  // THR empty, transmitter empty
        #expect(irqs.n.load(ordering: .relaxed) == 0)
        _ = out(u, 1, 0x02)  // enable THRE interrupt
        #expect(irqs.n.load(ordering: .relaxed) == 1)
        #expect(inb(u, 2) & 0x0F == 0x02)  // IIR: THR empty; reading clears it
        #expect(inb(u, 2) & 0x0F == 0x01)
        _ = out(u, 0, 0x41)
        #expect(irqs.n.load(ordering: .relaxed) == 2)
    }

    @Test func receiveAndLoopbackAndDivisor() {
        let irqs = Counter()
        let u = Serial8250(sink: nil, irq: InterruptLine { irqs.n.add(1, ordering: .relaxed) })
        _ = out(u, 1, 0x01)  // RX interrupt on
        let typed: [UInt8] = [0x6C, 0x73, 0x0A]
        typed.withUnsafeBytes { _ = u.enqueueInput($0) }
        #expect(irqs.n.load(ordering: .relaxed) == 1)
        #expect(inb(u, 2) & 0x0F == 0x04)
        #expect(inb(u, 5) & 1 == 1)
        #expect([inb(u, 0), inb(u, 0), inb(u, 0)] == typed)
        #expect(inb(u, 5) & 1 == 0)
        // Scratch register and divisor latch.
        _ = out(u, 7, 0x5A); #expect(inb(u, 7) == 0x5A)
        _ = out(u, 3, 0x80); _ = out(u, 0, 0x01); _ = out(u, 1, 0x00); #expect(inb(u, 0) == 0x01); _ = out(u, 3, 0x03)
        // Loopback as the 8250 autoconfig probes it: MCR = LOOP | OUT2 | RTS → MSR = DCD | CTS.
        _ = out(u, 4, 0x10 | 0x0A)
        #expect(inb(u, 6) & 0xF0 == 0x90)
        _ = out(u, 0, 0x33)
        #expect(inb(u, 0) == 0x33)
    }

    @Test func inputFIFOIsBounded() {
        let u = Serial8250(sink: nil, irq: InterruptLine {})
        let big = [UInt8](repeating: 0x61, count: 10000)
        let n = big.withUnsafeBytes { u.enqueueInput($0) }
        #expect(n == Serial8250.rxCapacity)
        #expect(u.pendingInput == Serial8250.rxCapacity)
    }
}

@Suite struct PlatformDeviceTests {
    /// The power button: the host raises it (one interrupt); the guest's read takes the event and
    /// clears it; a second read sees nothing; the counts say the guest took it.
    @Test func genericEventDeviceHandsOverThePowerButtonOnce() {
        let irqs = Counter()
        let ged = GenericEventDevice(irq: InterruptLine { irqs.n.add(1, ordering: .relaxed) })
        var word = [UInt8](repeating: 0xFF, count: 4)
        word.withUnsafeMutableBytes { ged.read(offset: 0, data: $0) }
        #expect(word == [0, 0, 0, 0])
        #expect(ged.counts == (0, 0))
        ged.raise(1)
        #expect(irqs.n.load(ordering: .relaxed) == 1)
        word.withUnsafeMutableBytes { ged.read(offset: 0, data: $0) }
        #expect(word == [1, 0, 0, 0])
        word.withUnsafeMutableBytes { ged.read(offset: 0, data: $0) }
        #expect(word == [0, 0, 0, 0])
        #expect(ged.counts == (1, 1))
        // Reads at other offsets or widths never take the event.
        ged.raise(1)
        var byte = [UInt8](repeating: 0xFF, count: 1)
        byte.withUnsafeMutableBytes { ged.read(offset: 2, data: $0) }
        #expect(byte == [0])
        #expect(ged.counts == (2, 1))
    }

    @Test func i8042ResetsAndAnswersProbes() {
        let k = I8042()
        #expect(inb(k, 4) == 0x14, "self-test passed, no keylock (Linux warns \"Keylock active\" otherwise), nothing waiting")
        #expect(out(k, 4, 0xAA) == .none)
        #expect(inb(k, 4) & 1 == 1)
        #expect(inb(k, 0) == 0x55)
        _ = out(k, 4, 0x60); _ = out(k, 0, 0x47)
        _ = out(k, 4, 0x20); #expect(inb(k, 0) == 0x47)
        #expect(out(k, 4, 0xFE) == .reset(.i8042))
        _ = out(k, 4, 0xD1)
        #expect(out(k, 0, 0xFE) == .reset(.i8042))  // output port with bit 0 clear
    }

    /// The aux port: no mouse, "resend"; with one, Linux's probe sequence (aux test, loopback with its
    /// interrupt, reset, ID, enable) and movement packets, with AUXDATA in the status and IRQ 12.
    @Test func ps2MouseOnTheAuxPort() {
        let bare = I8042()
        _ = out(bare, 4, 0xA9)
        #expect(inb(bare, 0) == 0xFF, "the aux port test: nothing there")
        _ = out(bare, 4, 0xD4); _ = out(bare, 0, 0xFF)
        #expect(inb(bare, 0) == 0xFE)
        #expect(!bare.mouseMoves(dx: 1, dy: 1, buttons: 0))

        let kbd = Counter(), aux = Counter()
        let k = I8042(keyboard: InterruptLine { kbd.n.add(1, ordering: .relaxed) }, mouse: InterruptLine { aux.n.add(1, ordering: .relaxed) })
        func auxBytes(_ n: Int) -> [UInt8] {
            (0..<n).map { _ in
                #expect(inb(k, 4) & 0x21 == 0x21, "a byte waits, and it is the mouse's")
                return inb(k, 0)
            }
        }
        _ = out(k, 4, 0xA9)
        #expect(inb(k, 0) == 0x00)
        _ = out(k, 4, 0x60); _ = out(k, 0, 0x47)  // both interrupts on, translation
        let keyboardIRQs = kbd.n.load(ordering: .relaxed)
        _ = out(k, 4, 0xD3); _ = out(k, 0, 0x5A)
        #expect(auxBytes(1) == [0x5A] && aux.n.load(ordering: .relaxed) == 1, "the loopback byte raised IRQ 12")
        #expect(kbd.n.load(ordering: .relaxed) == keyboardIRQs, "and not IRQ 1")
        _ = out(k, 4, 0xD4); _ = out(k, 0, 0xFF)
        #expect(auxBytes(3) == [0xFA, 0xAA, 0x00], "reset: ack, passed, ID 00")
        _ = out(k, 4, 0xD4); _ = out(k, 0, 0xF2)
        #expect(auxBytes(2) == [0xFA, 0x00])
        #expect(!k.mouseMoves(dx: 5, dy: 0, buttons: 0), "reporting is off until enabled")
        _ = out(k, 4, 0xD4); _ = out(k, 0, 0xF3)
        _ = out(k, 4, 0xD4); _ = out(k, 0, 200)
        #expect(auxBytes(2) == [0xFA, 0xFA], "a sample rate and its argument")
        _ = out(k, 4, 0xD4); _ = out(k, 0, 0xF4)
        #expect(auxBytes(1) == [0xFA])
        let before = aux.n.load(ordering: .relaxed)
        #expect(k.mouseMoves(dx: 10, dy: -3, buttons: 1))
        #expect(auxBytes(3) == [0x29, 0x0A, 0xFD], "left held, 10 right, 3 down (Y's sign bit)")
        #expect(aux.n.load(ordering: .relaxed) > before)
        #expect(k.mouseMoves(dx: 300, dy: 0, buttons: 1))
        #expect(auxBytes(6) == [0x09, 0xFF, 0x00, 0x09, 45, 0x00], "a long move: packets of at most 255")
        _ = out(k, 4, 0xD4); _ = out(k, 0, 0xE9)
        #expect(auxBytes(4) == [0xFA, 0x24, 0x02, 200], "status: reporting, left button; resolution; rate")
        _ = out(k, 4, 0xA7)  // aux clock off
        #expect(!k.mouseMoves(dx: 1, dy: 1, buttons: 0))
        _ = out(k, 4, 0x20)
        #expect(inb(k, 4) & 0x20 == 0 && inb(k, 0) & 0x20 != 0, "the command byte (from the controller, not the mouse) says aux disabled")
        _ = out(k, 4, 0xD4); _ = out(k, 0, 0x42)
        #expect(auxBytes(1) == [0xFE], "an unknown mouse command: resend")
    }

    @Test func acpiSleepAndReset() {
        let p = ACPIPowerDevice(sleepType: 5, resetValue: 1)
        #expect(out(p, 0, (5 << 2) | 0x20) == .powerOff)
        #expect(out(p, 0, (5 << 2)) == .none)  // no SLP_EN
        #expect(out(p, 0, (3 << 2) | 0x20) == .none)  // S3 is not power-off
        #expect(out(p, 2, 1) == .reset(.acpi))
        #expect(out(p, 2, 7) == .none)
    }

    /// Port 0xCF9 as Linux drives it: read, request a hard reset (bit 1), then set RST_CPU (bit 2).
    @Test func resetControlRegister() {
        let r = ResetControlDevice()
        #expect(inb(r, 0) == 0)
        #expect(out(r, 0, 0x02) == .none)
        #expect(inb(r, 0) == 0x02)
        #expect(out(r, 0, 0x0E) == .reset(.cf9))
        #expect(out(r, 0, 0x06) == .reset(.cf9))
        // A wider access is PCI configuration space (0xCF8), not the reset register.
        let word: [UInt8] = [0x06, 0, 0, 0]
        #expect(word.withUnsafeBytes { r.write(offset: 0, data: $0) } == .none)
    }

    @Test func busDispatchAndOverlap() throws {
        let bus = Bus()
        let m = BootMarkerDevice(magic: 123)
        try bus.insert(m, base: 0x1000, length: 0x10)
        try bus.insert(I8042(), base: 0x60, length: 5)
        #expect(throws: Bus.BusError.self) { try bus.insert(I8042(), base: 0x100F, length: 2) }
        let v: UInt8 = 123
        #expect(withUnsafeBytes(of: v) { bus.write(0x1000, $0) } == .bootMarker)
        #expect(withUnsafeBytes(of: v) { bus.write(0x1010, $0) } == .none)
        var r: UInt32 = 0
        let claimed = withUnsafeMutableBytes(of: &r) { bus.read(0x5000, $0) }
        #expect(!claimed && r == 0xFFFF_FFFF)
    }
}

@Suite struct RTCTests {
    @Test func readsHostTimeInBCD() {
        // 2026-11-27 10:20:30 UTC, a Friday.
        let rtc = CMOSRTC(fixedTime: 1_795_774_830)
        func reg(_ r: UInt8) -> UInt8 { _ = out(rtc, 0, r); return inb(rtc, 1) }
        #expect(reg(0x00) == 0x30 && reg(0x02) == 0x20 && reg(0x04) == 0x10)
        #expect(reg(0x07) == 0x27 && reg(0x08) == 0x11 && reg(0x09) == 0x26 && reg(0x32) == 0x20)
        #expect(reg(0x06) == 0x06)  // Friday (Sunday = 1)
        #expect(reg(0x0A) & 0x80 == 0)  // never "update in progress"
        #expect(reg(0x0B) == 0x02 && reg(0x0D) == 0x80)
        // NMI-mask bit in the index is ignored; CMOS RAM keeps what the guest writes, time does not change.
        _ = out(rtc, 0, 0x80 | 0x40); _ = out(rtc, 1, 0x5A)
        #expect(reg(0x40) == 0x5A)
        _ = out(rtc, 0, 0x00); _ = out(rtc, 1, 0x99)
        #expect(reg(0x00) == 0x30)
    }
}

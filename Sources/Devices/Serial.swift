import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where the UART's transmitted bytes go.
public protocol SerialSink: AnyObject, Sendable {
    func write(_ byte: UInt8)
}

/// An 8250/16550A UART (COM1): enough of the register set for Linux's 8250 driver, its autoconfig
/// (scratch, IER and loopback tests) and interrupt-driven transmit and receive.
public final class Serial8250: BusDevice, @unchecked Sendable {
    struct State {
        var ier: UInt8 = 0
        var lcr: UInt8 = 0x03
        var mcr: UInt8 = 0x08
        var lsr: UInt8 = 0x60  // THR empty, transmitter empty
        var msr: UInt8 = 0xB0  // DCD, DSR, CTS
        var scr: UInt8 = 0
        var dll: UInt8 = 0x0C
        var dlm: UInt8 = 0
        var fcr: UInt8 = 0
        var thrInterruptPending = false
        var rx: [UInt8] = []
        var rxHead = 0
        var rxCount: Int { rx.count - rxHead }
    }

    static let rxCapacity = 4096
    let state = Mutex(State())
    let sink: SerialSink?
    let irq: InterruptLine

    public init(sink: SerialSink?, irq: InterruptLine) {
        self.sink = sink
        self.irq = irq
        super.init()
    }

    /// Queues bytes typed by the host side; returns how many were accepted (the FIFO is bounded).
    @discardableResult
    public func enqueueInput(_ bytes: UnsafeRawBufferPointer) -> Int {
        let (accepted, fire) = state.withLock { s -> (Int, Bool) in
            if s.rxHead > 0 && s.rxHead == s.rx.count { s.rx.removeAll(keepingCapacity: true); s.rxHead = 0 }
            let n = min(bytes.count, Serial8250.rxCapacity - s.rxCount)
            if n > 0 { s.rx.append(contentsOf: bytes[0..<n]) }
            s.lsr |= s.rxCount > 0 ? 1 : 0
            return (n, n > 0 && s.ier & 0x01 != 0)
        }
        if fire { irq.trigger() }
        return accepted
    }

    public var pendingInput: Int { state.withLock { $0.rxCount } }

    static func iir(_ s: State) -> UInt8 {
        let fifo: UInt8 = s.fcr & 1 != 0 ? 0xC0 : 0
        if s.ier & 0x01 != 0 && s.rxCount > 0 { return fifo | 0x04 }
        if s.ier & 0x02 != 0 && s.thrInterruptPending { return fifo | 0x02 }
        return fifo | 0x01
    }

    public override func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        let v: UInt8 = state.withLock { s in
            let dlab = s.lcr & 0x80 != 0
            switch offset {
            case 0:
                if dlab { return s.dll }
                guard s.rxCount > 0 else { return 0 }
                let b = s.rx[s.rxHead]
                s.rxHead += 1
                if s.rxCount == 0 { s.lsr &= ~1; s.rx.removeAll(keepingCapacity: true); s.rxHead = 0 }
                return b
            case 1: return dlab ? s.dlm : s.ier
            case 2:
                let r = Serial8250.iir(s)
                if r & 0x0F == 0x02 { s.thrInterruptPending = false }
                return r
            case 3: return s.lcr
            case 4: return s.mcr
            case 5: return s.lsr | (s.rxCount > 0 ? 1 : 0)
            case 6:
                if s.mcr & 0x10 != 0 {  // loopback: modem inputs mirror the outputs
                    let m = s.mcr
                    return ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
                }
                return s.msr
            case 7: return s.scr
            default: return 0xFF
            }
        }
        data[0] = v
        for i in 1..<data.count { data[i] = 0 }
    }

    public override func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction {
        guard data.count >= 1 else { return .none }
        let v = data[0]
        var out: UInt8? = nil
        let fire: Bool = state.withLock { s in
            let dlab = s.lcr & 0x80 != 0
            switch offset {
            case 0:
                if dlab { s.dll = v; return false }
                if s.mcr & 0x10 != 0 {  // loopback: transmit into our own receiver
                    if s.rxCount < Serial8250.rxCapacity { s.rx.append(v) }
                    s.thrInterruptPending = true
                    return s.ier & 0x03 != 0
                }
                out = v
                s.thrInterruptPending = true
                return s.ier & 0x02 != 0
            case 1:
                if dlab { s.dlm = v; return false }
                let wasTHRE = s.ier & 0x02 != 0
                s.ier = v & 0x0F
                if !wasTHRE && s.ier & 0x02 != 0 { s.thrInterruptPending = true }
                return Serial8250.iir(s) & 1 == 0
            case 2:
                s.fcr = v
                if v & 0x02 != 0 { s.rx.removeAll(keepingCapacity: true); s.rxHead = 0 }
                return false
            case 3: s.lcr = v; return false
            case 4: s.mcr = v & 0x1F; return false
            case 7: s.scr = v; return false
            default: return false
            }
        }
        if let b = out { sink?.write(b) }
        if fire { irq.trigger() }
        return .none
    }
}

/// A sink writing to a file descriptor (stdout, a log file).
public final class FDSink: SerialSink, @unchecked Sendable {
    let fd: Int32
    public init(fd: Int32) { self.fd = fd }
    public func write(_ byte: UInt8) {
        var b = byte
        _ = Glibc.write(fd, &b, 1)
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The CMOS real-time clock at ports 0x70 (index) / 0x71 (data), read-only wall-clock time from the
/// host in BCD, 24-hour mode. Without it the kernel reads an open bus at boot (all ones: "update in
/// progress" for ever) and spins in mc146818_avoid_UIP, which costs seconds to minutes where guest
/// kernel code is emulated, and the guest starts at 1970.
public final class CMOSRTC: BusDevice, @unchecked Sendable {
    let index = Atomic<UInt8>(0)
    /// Seconds since the epoch, for tests; nil = the host's clock.
    let fixedTime: Int?
    /// Guest writes to the battery-backed RAM (registers 0x0E–0x7F) are kept; time registers are not writable.
    let ram = Mutex<[UInt8]>([UInt8](repeating: 0, count: 128))

    public init(fixedTime: Int? = nil) {
        self.fixedTime = fixedTime
        super.init()
    }

    static func bcd(_ v: Int) -> UInt8 { UInt8((v / 10) << 4 | (v % 10)) }

    public func register(_ r: UInt8) -> UInt8 {
        var t = time_t(fixedTime ?? Int(time(nil)))
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        switch r {
        case 0x00: return Self.bcd(Int(tm.tm_sec))
        case 0x02: return Self.bcd(Int(tm.tm_min))
        case 0x04: return Self.bcd(Int(tm.tm_hour))
        case 0x06: return Self.bcd(Int(tm.tm_wday) + 1)
        case 0x07: return Self.bcd(Int(tm.tm_mday))
        case 0x08: return Self.bcd(Int(tm.tm_mon) + 1)
        case 0x09: return Self.bcd(Int(tm.tm_year) % 100)
        case 0x32: return Self.bcd((Int(tm.tm_year) + 1900) / 100)  // century
        case 0x0A: return 0x26  // 32.768 kHz base, 1024 Hz rate, no update in progress
        case 0x0B: return 0x02  // 24-hour, BCD, no interrupts
        case 0x0C: return 0x00  // no interrupt flags
        case 0x0D: return 0x80  // valid RAM and time (battery good)
        case 0x01, 0x03, 0x05: return 0  // alarms
        default: return ram.withLock { $0[Int(r & 0x7F)] }
        }
    }

    public override func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count { data[i] = 0 }
        guard data.count >= 1 else { return }
        data[0] = offset == 1 ? register(index.load(ordering: .relaxed)) : index.load(ordering: .relaxed)
    }

    public override func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction {
        guard data.count >= 1 else { return .none }
        if offset == 0 {
            index.store(data[0] & 0x7F, ordering: .relaxed)  // bit 7 is the NMI mask
        } else {
            let r = index.load(ordering: .relaxed)
            if r >= 0x0E && r != 0x32 { ram.withLock { $0[Int(r)] = data[0] } }
        }
        return .none
    }
}

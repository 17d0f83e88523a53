import KVM

/// Per-vCPU exit counters, written only by that vCPU's thread.
public final class ExitCounters: @unchecked Sendable {
    public static let extra = 4  // io_in, io_out, mmio_read, mmio_write
    public static let fallbackKinds = 4
    let counts: UnsafeMutablePointer<UInt64>
    public static var size: Int { ExitReason.count + extra + fallbackKinds }
    init() {
        counts = .allocate(capacity: ExitCounters.size)
        counts.initialize(repeating: 0, count: ExitCounters.size)
    }
    deinit { counts.deallocate() }
    public func value(_ i: Int) -> UInt64 { counts[i] }
    public var ioIn: UInt64 { counts[ExitReason.count] }
    public var ioOut: UInt64 { counts[ExitReason.count + 1] }
    public var mmioRead: UInt64 { counts[ExitReason.count + 2] }
    public var mmioWrite: UInt64 { counts[ExitReason.count + 3] }
    /// Instructions run by the emulation fallback: int3, fwait, ldmxcsr, stmxcsr.
    public func fallback(_ k: Int) -> UInt64 { counts[ExitReason.count + ExitCounters.extra + k] }
    public var total: UInt64 { (0..<ExitReason.count).reduce(0) { $0 + counts[$1] } }
}

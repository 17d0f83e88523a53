/// What a device asks the VMM to do after an access.
public enum IOAction: Sendable, Equatable {
    case none
    case reset(ResetCause)
    case powerOff
    case bootMarker
}

/// The way a guest asked for its restart (reported by kumo-vmm, recorded by kumod).
public enum ResetCause: String, Sendable, CaseIterable {
    case i8042 = "i8042"  // the keyboard controller's CPU reset line (0xFE to port 0x64)
    case acpi = "acpi"  // the FADT's reset register
    case cf9 = "cf9"  // the chipset's reset control register, port 0xCF9
    case tripleFault = "triple-fault"  // a fault while delivering a double fault (KVM_EXIT_SHUTDOWN)
    case resetVector = "reset-vector"  // a real-mode jump to F000:FFF0, where firmware would be
    case systemEvent = "system-event"  // KVM_SYSTEM_EVENT_RESET

    public var summary: String {
        switch self {
        case .i8042: return "i8042 reset line"
        case .acpi: return "ACPI reset register"
        case .cf9: return "reset control register (port 0xCF9)"
        case .tripleFault: return "triple fault"
        case .resetVector: return "real-mode jump to the reset vector"
        case .systemEvent: return "KVM reset event"
        }
    }
}

/// Base class of every bus device. Subclasses override `read`/`write`; dispatch is a class
/// vtable call (no existential boxing on the vCPU exit path).
open class BusDevice: @unchecked Sendable {
    public init() {}
    /// `offset` is relative to the device's base; `data` holds `data.count` bytes (1, 2, 4 or 8).
    open func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count { data[i] = 0xFF }
    }
    open func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction { .none }
}

/// An address space of devices (port I/O or MMIO): sorted, non-overlapping ranges.
public final class Bus: @unchecked Sendable {
    public struct Entry {
        public let base: UInt64
        public let length: UInt64
        public let device: BusDevice
    }
    public private(set) var entries: [Entry] = []

    public enum BusError: Error, Equatable { case overlap(UInt64) }

    public init() {}

    public func insert(_ device: BusDevice, base: UInt64, length: UInt64) throws(BusError) {
        for e in entries where base < e.base + e.length && e.base < base + length { throw .overlap(base) }
        entries.append(Entry(base: base, length: length, device: device))
        entries.sort { $0.base < $1.base }
    }

    @inline(__always)
    public func find(_ address: UInt64) -> Entry? {
        var lo = 0, hi = entries.count
        while lo < hi {
            let mid = (lo + hi) / 2
            let e = entries[mid]
            if address < e.base { hi = mid } else if address - e.base >= e.length { lo = mid + 1 } else { return e }
        }
        return nil
    }

    /// Reads from the device at `address`; unclaimed addresses read as all ones (an open bus).
    @inline(__always)
    public func read(_ address: UInt64, _ data: UnsafeMutableRawBufferPointer) -> Bool {
        if let e = find(address) {
            e.device.read(offset: address - e.base, data: data)
            return true
        }
        for i in 0..<data.count { data[i] = 0xFF }
        return false
    }

    /// Writes to the device at `address`; unclaimed writes are dropped.
    @inline(__always)
    public func write(_ address: UInt64, _ data: UnsafeRawBufferPointer) -> IOAction {
        if let e = find(address) { return e.device.write(offset: address - e.base, data: data) }
        return .none
    }
}

/// An interrupt line into the guest. The VMM supplies how it is raised (irqfd, KVM_IRQ_LINE, a test hook).
public final class InterruptLine: @unchecked Sendable {
    let raise: @Sendable () -> Void
    public init(_ raise: @escaping @Sendable () -> Void) { self.raise = raise }
    @inline(__always) public func trigger() { raise() }
}

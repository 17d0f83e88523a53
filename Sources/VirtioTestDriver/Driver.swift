import GuestMemory
import Devices
import Virtio
import Synchronization

/// A virtio driver that lives on the host side, for tests, the fuzzer and benchmarks: it programs a
/// `VirtioMMIO` transport through its registers exactly as a guest kernel would, and builds split rings
/// in an in-process `GuestMemory`. It can also build the malformed rings a hostile guest would.
public final class VirtioTestDriver: @unchecked Sendable {
    public let memory: GuestMemory
    public let transport: VirtioMMIO
    public let device: VirtioDevice
    public let interrupts = Atomic<Int>(0)
    public let errors = Mutex<[String]>([])
    /// Bump allocator for rings and buffers, from 1 MiB up.
    var next: UInt64 = 0x10_0000

    /// `inline`: QueueNotify runs the device on the calling thread (deterministic); otherwise the
    /// caller wires notifications (e.g. a `DeviceWorker`) through `onNotify`.
    public init(
        device: VirtioDevice, memorySize: UInt64 = 64 << 20,
        onNotify: (@Sendable (Int) -> Void)? = nil
    ) throws {
        memory = try GuestMemory(layout: [(0, memorySize)])
        self.device = device
        let box = InterruptCounter()
        let errs = ErrorLog()
        transport = VirtioMMIO(
            device: device, memory: memory, interrupt: InterruptLine { box.n.add(1, ordering: .relaxed) },
            notify: onNotify ?? { [device] q in device.queueNotified(q) },
            log: { msg in errs.lines.withLock { $0.append(msg) } })
        counter = box
        errorLog = errs
    }
    let counter: InterruptCounter
    let errorLog: ErrorLog
    public var interruptCount: Int { counter.n.load(ordering: .relaxed) }
    public var log: [String] { errorLog.lines.withLock { $0 } }

    public func alloc(_ bytes: UInt64, align: UInt64 = 16) -> UInt64 {
        next = (next + align - 1) / align * align
        let a = next
        next += bytes
        precondition(next <= memory.totalSize, "test driver ran out of guest memory")
        return a
    }

    public func read(_ off: UInt64) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { transport.read(offset: off, data: $0) }
        return UInt32(littleEndian: v)
    }
    public func write(_ off: UInt64, _ v: UInt32) {
        withUnsafeBytes(of: v.littleEndian) { _ = transport.write(offset: off, data: $0) }
    }
    public func readConfig(_ off: UInt64, count: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: count)
        b.withUnsafeMutableBytes { transport.read(offset: MMIOReg.config + off, data: $0) }
        return b
    }

    public var status: UInt32 { read(MMIOReg.status) }

    /// ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK. Returns whether the device accepted.
    @discardableResult
    public func negotiate(features want: UInt64? = nil) -> Bool {
        write(MMIOReg.status, 0)
        write(MMIOReg.status, VirtioStatus.acknowledge)
        write(MMIOReg.status, VirtioStatus.acknowledge | VirtioStatus.driver)
        write(MMIOReg.deviceFeaturesSel, 0)
        var offered = UInt64(read(MMIOReg.deviceFeatures))
        write(MMIOReg.deviceFeaturesSel, 1)
        offered |= UInt64(read(MMIOReg.deviceFeatures)) << 32
        let f = want ?? offered
        write(MMIOReg.driverFeaturesSel, 0)
        write(MMIOReg.driverFeatures, UInt32(truncatingIfNeeded: f))
        write(MMIOReg.driverFeaturesSel, 1)
        write(MMIOReg.driverFeatures, UInt32(truncatingIfNeeded: f >> 32))
        write(MMIOReg.status, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK)
        negotiated = f
        return status & VirtioStatus.featuresOK != 0
    }
    public private(set) var negotiated: UInt64 = 0

    /// Allocates rings for queue `index` and programs them; `ready` sets QueueReady.
    public func setupQueue(_ index: Int, size: UInt16, ready: Bool = true) -> DriverQueue {
        let n = UInt64(size)
        let q = DriverQueue(
            driver: self, index: index, size: size, desc: alloc(16 * n, align: 16),
            avail: alloc(6 + 2 * n, align: 2), used: alloc(6 + 8 * n, align: 4096))
        program(q.config, index: index, ready: ready)
        return q
    }

    /// Writes a queue's registers, whatever they hold (hostile tests pass bad values).
    public func program(_ c: QueueConfig, index: Int, ready: Bool = true) {
        write(MMIOReg.queueSel, UInt32(index))
        write(MMIOReg.queueNum, UInt32(c.size))
        write(MMIOReg.queueDescLow, UInt32(truncatingIfNeeded: c.desc))
        write(MMIOReg.queueDescHigh, UInt32(truncatingIfNeeded: c.desc >> 32))
        write(MMIOReg.queueDriverLow, UInt32(truncatingIfNeeded: c.avail))
        write(MMIOReg.queueDriverHigh, UInt32(truncatingIfNeeded: c.avail >> 32))
        write(MMIOReg.queueDeviceLow, UInt32(truncatingIfNeeded: c.used))
        write(MMIOReg.queueDeviceHigh, UInt32(truncatingIfNeeded: c.used >> 32))
        if ready { write(MMIOReg.queueReady, 1) }
    }

    public func driverOK() {
        write(MMIOReg.status, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK)
    }

    /// Reads and acknowledges the interrupt status, as the guest's interrupt handler does.
    @discardableResult
    public func ackInterrupt() -> UInt32 {
        let s = read(MMIOReg.interruptStatus)
        write(MMIOReg.interruptACK, s)
        return s
    }
}

final class InterruptCounter: Sendable { let n = Atomic<Int>(0) }
final class ErrorLog: Sendable { let lines = Mutex<[String]>([]) }

/// One buffer the driver hands the device.
public struct Buffer: Sendable {
    public var gpa: UInt64
    public var length: UInt32
    public var writable: Bool
    public init(_ gpa: UInt64, _ length: UInt32, writable: Bool) { self.gpa = gpa; self.length = length; self.writable = writable }
}

/// The driver's side of a split queue.
public final class DriverQueue: @unchecked Sendable {
    unowned let driver: VirtioTestDriver
    public let index: Int
    public let size: UInt16
    public let config: QueueConfig
    var free: [UInt16]
    /// The descriptors of each outstanding chain, by head.
    var chains: [[UInt16]]
    public private(set) var availIdx: UInt16 = 0
    var lastUsed: UInt16 = 0

    init(driver: VirtioTestDriver, index: Int, size: UInt16, desc: UInt64, avail: UInt64, used: UInt64) {
        self.driver = driver
        self.index = index
        self.size = size
        config = QueueConfig(size: size, desc: desc, avail: avail, used: used)
        free = Array((0..<size).reversed())
        chains = Array(repeating: [], count: Int(size))
    }

    var mem: GuestMemory { driver.memory }

    /// Raw descriptor write (hostile tests use it to build loops and out-of-range links).
    public func setDescriptor(_ i: UInt16, addr: UInt64, len: UInt32, flags: UInt16, next: UInt16) {
        let d = config.desc + 16 * UInt64(i)
        try! mem.store(addr, at: d)
        try! mem.store(len, at: d + 8)
        try! mem.store(flags, at: d + 12)
        try! mem.store(next, at: d + 14)
    }

    /// Publishes `head` in the available ring (no checks: tests may publish anything).
    public func publish(_ head: UInt16) {
        try! mem.store(head, at: config.avail + 4 + 2 * UInt64(availIdx % size))
        availIdx &+= 1
        try! mem.store(availIdx, at: config.avail + 2)
    }

    /// Raw available index (hostile tests move it arbitrarily).
    public func setAvailIndex(_ v: UInt16) { availIdx = v; try! mem.store(v, at: config.avail + 2) }

    /// Builds a chain from free descriptors and makes it available. Returns its head, nil when full.
    @discardableResult
    public func submit(_ bufs: [Buffer]) -> UInt16? {
        guard !bufs.isEmpty, bufs.count <= free.count else { return nil }
        var ids: [UInt16] = []
        for _ in bufs { ids.append(free.removeLast()) }
        for (k, b) in bufs.enumerated() {
            let last = k == bufs.count - 1
            setDescriptor(
                ids[k], addr: b.gpa, len: b.length, flags: (last ? 0 : 1) | (b.writable ? 2 : 0),
                next: last ? 0 : ids[k + 1])
        }
        chains[Int(ids[0])] = ids
        publish(ids[0])
        return ids[0]
    }

    /// The same chain through one indirect table (VIRTIO_F_INDIRECT_DESC).
    @discardableResult
    public func submitIndirect(_ bufs: [Buffer]) -> UInt16? {
        guard let id = free.popLast() else { return nil }
        let table = driver.alloc(16 * UInt64(bufs.count), align: 16)
        for (k, b) in bufs.enumerated() {
            let last = k == bufs.count - 1
            let d = table + 16 * UInt64(k)
            try! mem.store(b.gpa, at: d)
            try! mem.store(b.length, at: d + 8)
            try! mem.store(UInt16((last ? 0 : 1) | (b.writable ? 2 : 0)), at: d + 12)
            try! mem.store(UInt16(last ? 0 : k + 1), at: d + 14)
        }
        setDescriptor(id, addr: table, len: UInt32(16 * bufs.count), flags: 4, next: 0)
        chains[Int(id)] = [id]
        publish(id)
        return id
    }

    public func kick() { driver.write(MMIOReg.queueNotify, UInt32(index)) }

    /// The next used element (id, bytes written), freeing its descriptors.
    public func popUsed() -> (id: UInt32, length: UInt32)? {
        let idx = try! mem.load(UInt16.self, at: config.used + 2)
        if idx == lastUsed { return nil }
        let e = config.used + 4 + 8 * UInt64(lastUsed % size)
        let id = try! mem.load(UInt32.self, at: e)
        let len = try! mem.load(UInt32.self, at: e + 4)
        lastUsed &+= 1
        if id < UInt32(size) {
            free.append(contentsOf: chains[Int(id)].reversed())
            chains[Int(id)] = []
        }
        return (id, len)
    }

    public var usedIndex: UInt16 { try! mem.load(UInt16.self, at: config.used + 2) }
    /// The device's avail_event (event index): where it asked to be notified next.
    public var availEvent: UInt16 { try! mem.load(UInt16.self, at: config.used + 4 + 8 * UInt64(size)) }
    public func setUsedEvent(_ v: UInt16) { try! mem.store(v, at: config.avail + 4 + 2 * UInt64(size)) }
    public func setAvailFlags(_ v: UInt16) { try! mem.store(v, at: config.avail) }
}

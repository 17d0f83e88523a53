import GuestMemory
import Synchronization

/// Feature bits every Kumo virtio device offers (virtio 1.x, split rings).
public enum VirtioFeature {
    public static let indirectDesc: UInt64 = 1 << 28
    public static let eventIdx: UInt64 = 1 << 29
    public static let version1: UInt64 = 1 << 32
}

/// Why a virtqueue was refused. The guest is hostile: each is a guest bug or an attack, and the device
/// stops using the queue (DEVICE_NEEDS_RESET) rather than guess.
public enum QueueError: Error, Equatable, CustomStringConvertible {
    case badSize(UInt16)
    case misaligned(String, UInt64)
    case ringOutsideRAM(String, UInt64)
    case availRanAhead(avail: UInt16, last: UInt16)
    case headOutOfRange(UInt16)
    case nextOutOfRange(UInt16)
    case chainTooLong(Int)
    case bufferOutsideRAM(gpa: UInt64, length: UInt32)
    case readableAfterWritable
    case nestedIndirect
    case indirectNotNegotiated
    case indirectWithNext
    case badIndirectLength(UInt32)

    public var description: String {
        switch self {
        case let .badSize(s): return "queue size \(s) is not a power of two in 1...32768 within the device's maximum"
        case let .misaligned(what, a): return "\(what) at 0x\(String(a, radix: 16)) is misaligned"
        case let .ringOutsideRAM(what, a): return "\(what) at 0x\(String(a, radix: 16)) is not inside guest RAM"
        case let .availRanAhead(a, l): return "available index \(a) is more than a queue ahead of \(l)"
        case let .headOutOfRange(i): return "chain head \(i) is outside the descriptor table"
        case let .nextOutOfRange(i): return "next descriptor \(i) is outside the descriptor table"
        case let .chainTooLong(n): return "descriptor chain longer than \(n) (a loop?)"
        case let .bufferOutsideRAM(g, l): return "buffer 0x\(String(g, radix: 16))+\(l) is not inside guest RAM"
        case .readableAfterWritable: return "a device-readable descriptor follows a device-writable one"
        case .nestedIndirect: return "an indirect table points to another indirect table"
        case .indirectNotNegotiated: return "an indirect descriptor, but VIRTIO_F_INDIRECT_DESC was not negotiated"
        case .indirectWithNext: return "a descriptor has both INDIRECT and NEXT"
        case let .badIndirectLength(l): return "indirect table length \(l) is not a non-zero multiple of 16"
        }
    }
}

/// One buffer of a descriptor chain, already checked to lie inside one guest RAM region.
public struct Segment: Sendable, Equatable {
    public let gpa: UInt64
    public let length: UInt32
    public let writable: Bool
    let hostAddress: UInt
    public var host: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: hostAddress)! }
    public var buffer: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: host, count: Int(length)) }
}

/// A validated descriptor chain: device-readable segments first, then device-writable ones.
public struct DescriptorChain: Sendable {
    public internal(set) var head: UInt16
    public internal(set) var segments: [Segment] = []
    public internal(set) var readableBytes: UInt64 = 0
    public internal(set) var writableBytes: UInt64 = 0
    public var readable: ArraySlice<Segment> { segments.prefix { !$0.writable } }
    public var writable: ArraySlice<Segment> { segments.drop { !$0.writable } }
    /// Device-readable segments come first: this many of them.
    public var readableCount: Int { segments.firstIndex { $0.writable } ?? segments.count }

    /// Empties the chain for reuse, keeping its storage (no allocation when nobody else holds it).
    mutating func reset(head: UInt16) {
        self.head = head
        segments.removeAll(keepingCapacity: true)
        readableBytes = 0
        writableBytes = 0
    }

    /// Copies up to `count` device-readable bytes starting `offset` bytes into the chain.
    public func read(into dst: UnsafeMutableRawBufferPointer, offset: UInt64 = 0) -> Int {
        var skip = offset, done = 0
        for s in segments where !s.writable {
            if done == dst.count { break }
            let len = UInt64(s.length)
            if skip >= len { skip -= len; continue }
            let n = min(Int(len - skip), dst.count - done)
            dst.baseAddress!.advanced(by: done).copyMemory(from: s.host.advanced(by: Int(skip)), byteCount: n)
            done += n
            skip = 0
        }
        return done
    }

    /// Copies `src` into the device-writable part of the chain from `offset`; returns the bytes written.
    public func write(_ src: UnsafeRawBufferPointer, offset: UInt64 = 0) -> Int {
        var skip = offset, done = 0
        for s in segments where s.writable {
            if done == src.count { break }
            let len = UInt64(s.length)
            if skip >= len { skip -= len; continue }
            let n = min(Int(len - skip), src.count - done)
            s.host.advanced(by: Int(skip)).copyMemory(from: src.baseAddress!.advanced(by: done), byteCount: n)
            done += n
            skip = 0
        }
        return done
    }
}

/// Where the driver put a queue, as written to the transport's registers.
public struct QueueConfig: Sendable, Equatable {
    public var size: UInt16
    public var desc: UInt64
    public var avail: UInt64
    public var used: UInt64
    public init(size: UInt16, desc: UInt64, avail: UInt64, used: UInt64) {
        self.size = size; self.desc = desc; self.avail = avail; self.used = used
    }
}

/// A split virtqueue seen from the device. Ring addresses are checked once, when the queue is built;
/// every index the guest supplies is checked on use, and every guest field is read exactly once.
/// Used by one thread at a time (the device's worker).
public final class SplitQueue: @unchecked Sendable {
    public let size: UInt16
    public let config: QueueConfig
    let desc: UnsafeMutableRawPointer
    let avail: UnsafeMutableRawPointer
    let used: UnsafeMutableRawPointer
    let memory: GuestMemory
    public let eventIdx: Bool
    public let indirect: Bool
    /// The next available-ring slot to take, and the next used-ring slot to fill (free-running).
    public private(set) var lastAvail: UInt16 = 0
    public private(set) var nextUsed: UInt16 = 0
    /// `nextUsed` when the driver was last notified (event-index suppression).
    var signalledUsed: UInt16 = 0
    var signalledValid = false
    /// Longest chain accepted, counting indirect entries.
    public let maxChain: Int
    /// The chain `pop` fills and returns, reused from one request to the next: as long as the caller
    /// lets go of a chain before popping the next one, serving a request allocates nothing.
    var scratch = DescriptorChain(head: 0)

    public init(_ c: QueueConfig, memory: GuestMemory, maxSize: UInt16, features: UInt64) throws(QueueError) {
        guard c.size > 0, c.size <= maxSize, c.size <= 32768, c.size & (c.size - 1) == 0 else { throw .badSize(c.size) }
        let n = UInt64(c.size)
        guard c.desc % 16 == 0 else { throw .misaligned("descriptor table", c.desc) }
        guard c.avail % 2 == 0 else { throw .misaligned("available ring", c.avail) }
        guard c.used % 4 == 0 else { throw .misaligned("used ring", c.used) }
        guard let d = memory.hostPointer(c.desc, length: 16 * n) else { throw .ringOutsideRAM("descriptor table", c.desc) }
        guard let a = memory.hostPointer(c.avail, length: 6 + 2 * n) else { throw .ringOutsideRAM("available ring", c.avail) }
        guard let u = memory.hostPointer(c.used, length: 6 + 8 * n) else { throw .ringOutsideRAM("used ring", c.used) }
        size = c.size
        config = c
        desc = d; avail = a; used = u
        self.memory = memory
        eventIdx = features & VirtioFeature.eventIdx != 0
        indirect = features & VirtioFeature.indirectDesc != 0
        maxChain = max(Int(c.size), 1024)
        scratch.segments.reserveCapacity(8)
    }

    @inline(__always) func availIdx() -> UInt16 { UInt16(littleEndian: avail.advanced(by: 2).loadUnaligned(as: UInt16.self)) }
    @inline(__always) func availFlags() -> UInt16 { UInt16(littleEndian: avail.loadUnaligned(as: UInt16.self)) }

    /// True when the driver has made buffers available that the device has not taken.
    public var hasAvailable: Bool { availIdx() != lastAvail }

    /// Takes the next available chain, or nil when there is none.
    public func pop() throws(QueueError) -> DescriptorChain? {
        let idx = availIdx()
        if idx == lastAvail { return nil }
        guard idx &- lastAvail <= size else { throw .availRanAhead(avail: idx, last: lastAvail) }
        atomicMemoryFence(ordering: .acquiring)  // ring entries after the index that published them
        let slot = Int(lastAvail % size)
        let head = UInt16(littleEndian: avail.advanced(by: 4 + 2 * slot).loadUnaligned(as: UInt16.self))
        guard head < size else { throw .headOutOfRange(head) }
        // Work on a local (one exclusive access to the stored chain, not one per descriptor); its
        // storage is reused when the previous caller has let go of it.
        var chain = DescriptorChain(head: head)
        swap(&chain, &scratch)
        chain.reset(head: head)
        var i = head
        var count = 0
        var sawWritable = false
        while true {
            let p = desc.advanced(by: 16 * Int(i))
            let addr = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
            let len = UInt32(littleEndian: p.advanced(by: 8).loadUnaligned(as: UInt32.self))
            let flags = UInt16(littleEndian: p.advanced(by: 12).loadUnaligned(as: UInt16.self))
            let next = UInt16(littleEndian: p.advanced(by: 14).loadUnaligned(as: UInt16.self))
            if flags & 4 != 0 {  // INDIRECT
                guard indirect else { throw .indirectNotNegotiated }
                guard flags & 1 == 0 else { throw .indirectWithNext }
                try walkIndirect(addr: addr, len: len, into: &chain, count: &count, sawWritable: &sawWritable)
                break
            }
            count += 1
            guard count <= Int(size) else { throw .chainTooLong(Int(size)) }
            try add(addr: addr, len: len, writable: flags & 2 != 0, to: &chain, sawWritable: &sawWritable)
            if flags & 1 == 0 { break }
            guard next < size else { throw .nextOutOfRange(next) }
            i = next
        }
        lastAvail &+= 1
        scratch = chain
        return chain
    }

    func walkIndirect(
        addr: UInt64, len: UInt32, into chain: inout DescriptorChain, count: inout Int,
        sawWritable: inout Bool
    ) throws(QueueError) {
        guard len > 0, len % 16 == 0 else { throw .badIndirectLength(len) }
        let entries = Int(len / 16)
        guard entries <= maxChain else { throw .chainTooLong(maxChain) }
        guard addr % 16 == 0 else { throw .misaligned("indirect table", addr) }
        guard let table = memory.hostPointer(addr, length: UInt64(len)) else { throw .bufferOutsideRAM(gpa: addr, length: len) }
        var i = 0
        var steps = 0
        while true {
            steps += 1
            guard steps <= entries else { throw .chainTooLong(entries) }
            count += 1
            guard count <= maxChain else { throw .chainTooLong(maxChain) }
            let p = table.advanced(by: 16 * i)
            let a = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
            let l = UInt32(littleEndian: p.advanced(by: 8).loadUnaligned(as: UInt32.self))
            let flags = UInt16(littleEndian: p.advanced(by: 12).loadUnaligned(as: UInt16.self))
            let next = UInt16(littleEndian: p.advanced(by: 14).loadUnaligned(as: UInt16.self))
            guard flags & 4 == 0 else { throw .nestedIndirect }
            try add(addr: a, len: l, writable: flags & 2 != 0, to: &chain, sawWritable: &sawWritable)
            if flags & 1 == 0 { break }
            guard Int(next) < entries else { throw .nextOutOfRange(next) }
            i = Int(next)
        }
    }

    @inline(__always)
    func add(addr: UInt64, len: UInt32, writable: Bool, to chain: inout DescriptorChain, sawWritable: inout Bool) throws(QueueError) {
        if writable { sawWritable = true } else if sawWritable { throw .readableAfterWritable }
        if len == 0 { return }
        guard let h = memory.hostPointer(addr, length: UInt64(len)) else { throw .bufferOutsideRAM(gpa: addr, length: len) }
        chain.segments.append(Segment(gpa: addr, length: len, writable: writable, hostAddress: UInt(bitPattern: h)))
        if writable { chain.writableBytes += UInt64(len) } else { chain.readableBytes += UInt64(len) }
    }

    /// Puts back the chain `pop` just returned (the device could not use it yet: no frame to receive).
    public func unpop() { lastAvail &-= 1 }

    /// Returns a chain to the driver with the number of bytes the device wrote into it.
    public func push(head: UInt16, written: UInt32) {
        let slot = Int(nextUsed % size)
        let e = used.advanced(by: 4 + 8 * slot)
        e.storeBytes(of: UInt32(head).littleEndian, as: UInt32.self)
        e.advanced(by: 4).storeBytes(of: written.littleEndian, as: UInt32.self)
        nextUsed &+= 1
        atomicMemoryFence(ordering: .releasing)  // the element before the index that publishes it
        used.advanced(by: 2).storeBytes(of: nextUsed.littleEndian, as: UInt16.self)
    }

    /// After a batch of `push`es: should the driver be interrupted? (VIRTQ_AVAIL_F_NO_INTERRUPT, or
    /// the used_event index when VIRTIO_F_EVENT_IDX was negotiated.)
    public func needsInterrupt() -> Bool {
        atomicMemoryFence(ordering: .sequentiallyConsistent)  // our used index before the driver's flags
        if !eventIdx { return availFlags() & 1 == 0 }
        let usedEvent = UInt16(littleEndian: avail.advanced(by: 4 + 2 * Int(size)).loadUnaligned(as: UInt16.self))
        let old = signalledUsed
        let valid = signalledValid
        signalledUsed = nextUsed
        signalledValid = true
        if !valid { return true }
        // vring_need_event: the driver wants an interrupt once used passes used_event.
        return nextUsed &- usedEvent &- 1 < nextUsed &- old
    }

    /// Before sleeping: tell the driver which available index should wake us (event index), then
    /// re-check. Returns true when more chains arrived meanwhile (keep processing).
    public func armNotification() -> Bool {
        if eventIdx {
            used.advanced(by: 4 + 8 * Int(size)).storeBytes(of: lastAvail.littleEndian, as: UInt16.self)
        }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return hasAvailable
    }
}

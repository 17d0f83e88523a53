#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Synchronization

/// virtio-balloon (virtio 1.x §5.5): the host sets a target; the guest's driver gives pages back
/// (inflate: we drop them from the host with MADV_DONTNEED) and takes them again (deflate). Also the
/// statistics queue, deflate-on-OOM and free page reporting (the guest hands free ranges back on its own).
public final class VirtioBalloon: VirtioDevice, @unchecked Sendable {
    public enum Feature {
        public static let mustTellHost: UInt64 = 1 << 0
        public static let statsVQ: UInt64 = 1 << 1
        public static let deflateOnOOM: UInt64 = 1 << 2
        public static let pageReporting: UInt64 = 1 << 5
    }
    /// Statistics tags (§5.5.6.3).
    public static let statNames: [UInt16: String] = [
        0: "swap_in", 1: "swap_out", 2: "major_faults", 3: "minor_faults", 4: "free_memory", 5: "total_memory",
        6: "available_memory", 7: "disk_caches", 8: "hugetlb_allocations", 9: "hugetlb_failures",
    ]
    public static let queueSize: UInt16 = 256
    public static let pageSize: UInt64 = 4096

    enum Role { case inflate, deflate, stats, reporting }

    /// What the host sees of the balloon: shared with the control socket (its own lock, never the
    /// device lock, so a control request never waits for the worker).
    public struct Snapshot: Sendable, Equatable {
        /// Target and the driver's reported size, in 4 KiB pages.
        public var targetPages: UInt32 = 0
        public var actualPages: UInt32 = 0
        public var inflatedPages: UInt64 = 0
        public var deflatedPages: UInt64 = 0
        public var reportedPages: UInt64 = 0
        /// The last statistics the guest sent (tag name → value), and how many times it sent them.
        public var stats: [String: UInt64] = [:]
        public var statsUpdates = 0
        public var driverReady = false
    }
    let shared = Mutex(Snapshot())
    public var snapshot: Snapshot { shared.withLock { $0 } }

    let deflateOnOOM: Bool
    var roles: [Role?] = []
    /// The statistics buffer the driver gave us, held until we want fresh numbers.
    var statsHead: UInt16? = nil
    let wantStats = Atomic<Bool>(false)

    public init(deflateOnOOM: Bool = true, freePageReporting: Bool = true) {
        self.deflateOnOOM = deflateOnOOM
        var f = Feature.statsVQ
        if freePageReporting { f |= Feature.pageReporting }
        if deflateOnOOM { f |= Feature.deflateOnOOM }
        super.init(type: .balloon, queueMaxSizes: Array(repeating: VirtioBalloon.queueSize, count: 4), features: f)
    }

    public override var statistics: String {
        let s = snapshot
        return
            "target_pages=\(s.targetPages) actual_pages=\(s.actualPages) inflated=\(s.inflatedPages) deflated=\(s.deflatedPages) "
            + "reported=\(s.reportedPages) stats_updates=\(s.statsUpdates)"
    }

    // Config space: num_pages (le32, device → driver), actual (le32, driver → device).
    public override func readConfig(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let s = snapshot
        var cfg = [UInt8](repeating: 0, count: 16)
        for i in 0..<4 {
            cfg[i] = UInt8((s.targetPages >> (8 * UInt32(i))) & 0xFF)
            cfg[4 + i] = UInt8((s.actualPages >> (8 * UInt32(i))) & 0xFF)
        }
        VirtioDevice.readWindow(cfg, offset: offset, into: data)
    }

    public override func writeConfig(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset >= 4, offset + UInt64(data.count) <= 8 else { return }
        shared.withLock { s in
            var v = s.actualPages
            for i in 0..<data.count {
                let shift = 8 * UInt32(Int(offset) - 4 + i)
                v = (v & ~(0xFF << shift)) | (UInt32(data[i]) << shift)
            }
            s.actualPages = v
        }
    }

    /// Sets the target (in 4 KiB pages). Returns false when it exceeds guest RAM.
    public func setTarget(pages: UInt32, memory: UInt64) -> Bool {
        guard UInt64(pages) * VirtioBalloon.pageSize <= memory else { return false }
        shared.withLock { $0.targetPages = pages }
        return true
    }

    public override func activated(_ ctx: VirtioContext) throws(VirtioDeviceError) {
        // Queues are numbered densely over the negotiated features (inflate, deflate, [stats], [reporting]).
        var r: [Role?] = [.inflate, .deflate]
        if ctx.features & Feature.statsVQ != 0 { r.append(.stats) }
        if ctx.features & Feature.pageReporting != 0 { r.append(.reporting) }
        while r.count < queueMaxSizes.count { r.append(nil) }
        roles = r
        shared.withLock { $0.driverReady = true }
    }

    public override func didReset() {
        roles = []
        statsHead = nil
        shared.withLock { s in
            s.driverReady = false; s.actualPages = 0
        }
    }

    /// Asks the driver for fresh statistics (by returning the buffer it left with us).
    public func requestStats() {
        wantStats.store(true, ordering: .releasing)
        withContext { ctx in returnStatsBuffer(ctx) }
    }

    func returnStatsBuffer(_ ctx: VirtioContext) {
        guard wantStats.load(ordering: .acquiring), let head = statsHead,
            let i = roles.firstIndex(where: { $0 == .stats }), let q = ctx.queues[i]
        else { return }
        wantStats.store(false, ordering: .releasing)
        statsHead = nil
        q.push(head: head, written: 0)
        ctx.notifyUsed(q)
    }

    public override func process(queue index: Int, _ ctx: VirtioContext) {
        guard index < roles.count, let role = roles[index], let q = ctx.queues[index] else { return }
        switch role {
        case .inflate, .deflate:
            serve(q, ctx, name: role == .inflate ? "inflate queue" : "deflate queue", limiter: nil) { chain in
                let pfns = pageNumbers(chain)
                if role == .inflate {
                    for pfn in pfns { discard(ctx.memory, gpa: UInt64(pfn) * VirtioBalloon.pageSize, length: VirtioBalloon.pageSize) }
                    shared.withLock { $0.inflatedPages += UInt64(pfns.count) }
                } else {
                    // Anonymous memory comes back on first touch, zeroed: nothing to do.
                    shared.withLock { $0.deflatedPages += UInt64(pfns.count) }
                }
                return 0
            }
        case .reporting:
            serve(q, ctx, name: "reporting queue", limiter: nil) { chain in
                var pages: UInt64 = 0
                for s in chain.segments {
                    discard(ctx.memory, gpa: s.gpa, length: UInt64(s.length))
                    pages += UInt64(s.length) / VirtioBalloon.pageSize
                }
                shared.withLock { $0.reportedPages += pages }
                return chain.writableBytes > UInt64(UInt32.max) ? UInt32.max : UInt32(chain.writableBytes)
            }
        case .stats:
            // The driver (re)queues its one buffer of (le16 tag, le64 value) entries.
            while true {
                let chain: DescriptorChain?
                do { chain = try q.pop() } catch {
                    ctx.fail("statistics queue: \(error)")
                    return
                }
                guard let chain else { break }
                if let old = statsHead { q.push(head: old, written: 0) }  // a driver bug; give the old one back
                statsHead = chain.head
                var bytes = [UInt8](repeating: 0, count: Int(min(chain.readableBytes, 10 * 64)))
                let n = bytes.withUnsafeMutableBytes { chain.read(into: $0) }
                var stats: [String: UInt64] = [:]
                var o = 0
                while o + 10 <= n {
                    let tag = UInt16(bytes[o]) | UInt16(bytes[o + 1]) << 8
                    var v: UInt64 = 0
                    for k in 0..<8 { v |= UInt64(bytes[o + 2 + k]) << (8 * UInt64(k)) }
                    stats[VirtioBalloon.statNames[tag] ?? "tag\(tag)"] = v
                    o += 10
                }
                shared.withLock { s in
                    s.stats = stats; s.statsUpdates += 1
                }
            }
            _ = q.armNotification()
            returnStatsBuffer(ctx)
        }
    }

    /// The le32 page frame numbers in a chain's readable part.
    func pageNumbers(_ chain: DescriptorChain) -> [UInt32] {
        let count = Int(min(chain.readableBytes / 4, 1 << 20))
        var out = [UInt32](repeating: 0, count: count)
        _ = out.withUnsafeMutableBytes { chain.read(into: $0) }
        return out.map { UInt32(littleEndian: $0) }
    }

    /// Gives a guest range back to the host. Ranges outside guest RAM are ignored (a hostile PFN).
    func discard(_ memory: GuestMemory, gpa: UInt64, length: UInt64) {
        guard length > 0, gpa % VirtioBalloon.pageSize == 0, let p = memory.hostPointer(gpa, length: length) else { return }
        _ = madvise(p, Int(length), MADV_DONTNEED)
    }
}

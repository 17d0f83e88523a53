#if canImport(Glibc)
import Glibc
#endif
import SystemKit

/// virtio-net (virtio 1.x §5.1) on a tap: queue 0 receives, queue 1 transmits. MAC, link status, MTU.
/// Checksum and TCP segmentation offload both ways (the tap does the work the header asks for), so a
/// driver moves 64 KiB per frame instead of 1.5: where the guest kernel is slow (emulated, docs/NESTED.md)
/// its per-packet cost is what limits throughput. No mergeable buffers: each receive chain holds one
/// whole frame (a driver that takes TSO posts 64 KiB chains).
public final class VirtioNet: VirtioDevice, @unchecked Sendable {
    public enum Feature {
        public static let csum: UInt64 = 1 << 0
        public static let guestCsum: UInt64 = 1 << 1
        public static let mtu: UInt64 = 1 << 3
        public static let mac: UInt64 = 1 << 5
        public static let guestTSO4: UInt64 = 1 << 7
        public static let guestTSO6: UInt64 = 1 << 8
        public static let guestECN: UInt64 = 1 << 9
        public static let hostTSO4: UInt64 = 1 << 11
        public static let hostTSO6: UInt64 = 1 << 12
        public static let hostECN: UInt64 = 1 << 13
        public static let status: UInt64 = 1 << 16
        /// What kumo-vmm offers: the offloads a Linux tap can honour.
        public static let offered =
            mac | status | mtu | csum | guestCsum | guestTSO4 | guestTSO6 | guestECN | hostTSO4 | hostTSO6 | hostECN
    }
    public static let queueSize: UInt16 = 256
    /// Largest frame we carry (Ethernet + header; no TSO): what a chain must be able to hold.
    public static let maxFrame = 65562

    public let tap: Tap
    public let mac: [UInt8]
    public var rxLimiter: RateLimiter?
    public var txLimiter: RateLimiter?
    public private(set) var counters = (rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0, rxDropped: 0, txDropped: 0)
    /// No receive buffers were available when a frame waited: stop polling the tap until the driver adds some.
    var rxStalled = false

    public init(tap: Tap, mac: [UInt8]) {
        precondition(mac.count == 6)
        self.tap = tap
        self.mac = mac
        super.init(
            type: .net, queueMaxSizes: [VirtioNet.queueSize, VirtioNet.queueSize],
            features: Feature.offered)
    }

    /// What the tap may give the driver, from the features it took: frames it would reject (a partial
    /// checksum, a 64 KiB segment) only when it said it handles them.
    public static func tapOffload(for features: UInt64) -> Tap.Offload {
        guard features & Feature.guestCsum != 0 else { return [] }
        var o: Tap.Offload = .checksum
        if features & Feature.guestTSO4 != 0 { o.insert(.tso4) }
        if features & Feature.guestTSO6 != 0 { o.insert(.tso6) }
        if features & Feature.guestECN != 0, !o.isDisjoint(with: [.tso4, .tso6]) { o.insert(.tsoECN) }
        return o
    }

    public override func activated(_ ctx: VirtioContext) throws(VirtioDeviceError) {
        do { try tap.offload(Self.tapOffload(for: ctx.features)) } catch { throw VirtioDeviceError("\(error)") }
    }

    public override var counterValues: [(String, UInt64)] {
        [
            ("rx_frames", UInt64(counters.rxFrames)), ("rx_bytes", UInt64(counters.rxBytes)), ("tx_frames", UInt64(counters.txFrames)),
            ("tx_bytes", UInt64(counters.txBytes)), ("rx_dropped", UInt64(counters.rxDropped)), ("tx_dropped", UInt64(counters.txDropped)),
        ]
    }

    public override var backendName: String? { tap.name }

    public override func readConfig(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        // struct virtio_net_config: mac[6], status (le16: 1 = link up), max_virtqueue_pairs, mtu.
        var cfg = mac + [1, 0, 1, 0, 0xDC, 0x05]  // mtu 1500
        cfg += [UInt8](repeating: 0, count: 8)
        VirtioDevice.readWindow(cfg, offset: offset, into: data)
    }

    public override var backendFDs: [Int32] { [tap.fd] }
    public override func backendWanted(_ fd: Int32) -> Bool {
        // Not before DRIVER_OK: frames the host sends the tap meanwhile (IPv6 neighbour discovery) would
        // wake the worker for nothing, a CPU's worth through the guest's whole boot.
        context != nil && !rxStalled && (rxLimiter.map { $0.waitNanos() == 0 } ?? true)
    }

    public override func retryAfterNanos() -> UInt64? { VirtioDevice.retryAfter(rxLimiter, txLimiter) }

    public override func didReset() {
        rxStalled = false
        try? tap.offload([])  // the next driver may take none
    }

    public override func backendReady(_ fd: Int32) {
        withContext { ctx in receive(ctx) }
    }

    public override func process(queue index: Int, _ ctx: VirtioContext) {
        if index == 0 {
            rxStalled = false  // the driver added receive buffers
            receive(ctx)
        } else {
            transmit(ctx)
        }
    }

    /// Moves frames from the tap into receive chains until the tap is empty or the chains run out.
    func receive(_ ctx: VirtioContext) {
        guard let q = ctx.queues[0] else { rxStalled = true; return }
        var delivered = false
        while true {
            if let l = rxLimiter, !l.canProceed() { break }
            let chain: DescriptorChain
            switch nextReceiveChain(q, ctx, minBytes: Tap.headerSize, queueName: "receive queue") {
            case let .chain(c): chain = c
            case .none:
                // No buffer: leave the frame in the tap, and wait for the driver.
                rxStalled = true
                if delivered { ctx.notifyUsed(q) }
                return
            case .failed: return
            }
            var iov = chain.segments.map { iovec(iov_base: $0.host, iov_len: Int($0.length)) }
            let n = iov.withUnsafeMutableBufferPointer { readv(tap.fd, $0.baseAddress, Int32($0.count)) }
            if n <= 0 {
                q.unpop()  // nothing to receive (EAGAIN): the chain goes back for the next frame
                break
            }
            // num_buffers = 1 (no mergeable buffers).
            var one = UInt16(1).littleEndian
            _ = withUnsafeBytes(of: &one) { chain.write($0, offset: 10) }
            rxLimiter?.consume(ops: 1, bytes: UInt64(n))
            counters.rxFrames += 1
            counters.rxBytes += n - Tap.headerSize
            q.push(head: chain.head, written: UInt32(n))
            delivered = true
        }
        if delivered { ctx.notifyUsed(q) }
    }

    /// Sends every available transmit chain to the tap (a frame the tap cannot take is dropped, as
    /// on a real link).
    func transmit(_ ctx: VirtioContext) {
        guard let q = ctx.queues[1] else { return }
        serve(q, ctx, name: "transmit queue", limiter: txLimiter) { chain in
            let len = chain.readableBytes
            if chain.writableBytes != 0 || len < UInt64(Tap.headerSize) || len > UInt64(VirtioNet.maxFrame) {
                counters.txDropped += 1
                return 0
            }
            var iov = chain.segments.map { iovec(iov_base: $0.host, iov_len: Int($0.length)) }
            let n = iov.withUnsafeMutableBufferPointer { writev(tap.fd, $0.baseAddress, Int32($0.count)) }
            if n < 0 {
                counters.txDropped += 1
            } else {
                counters.txFrames += 1
                counters.txBytes += Int(len) - Tap.headerSize
            }
            txLimiter?.consume(ops: 1, bytes: len)
            return 0
        }
    }
}

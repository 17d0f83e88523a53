#if canImport(Glibc)
import Glibc
#endif
import CKVM

/// A Linux tap device opened with a virtio-net header in front of every frame (IFF_VNET_HDR), so that
/// frames move between the tap and guest buffers with no copy and no translation.
public final class Tap: @unchecked Sendable {
    public let fd: Int32
    public let name: String
    /// virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
    public static let headerSize = 12

    public struct TapError: Error, CustomStringConvertible { public let description: String }

    /// Creates the tap `name`, or attaches to it when it exists (and is not in use).
    public init(name: String) throws(TapError) {
        guard !name.isEmpty, name.utf8.count < 16, !name.contains("/") else {
            throw TapError(description: "tap name \"\(name)\" must be 1 to 15 characters without '/'")
        }
        let fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw TapError(description: "/dev/net/tun: \(String(cString: strerror(errno)))") }
        var ifr = [UInt8](repeating: 0, count: 40)
        for (i, b) in name.utf8.enumerated() { ifr[i] = b }
        let flags: UInt16 = 0x0002 | 0x1000 | 0x4000   // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        ifr[16] = UInt8(flags & 0xFF); ifr[17] = UInt8(flags >> 8)
        let rc = ifr.withUnsafeMutableBytes { ckvm_ioctl_ptr(fd, 0x4004_54CA, $0.baseAddress) }   // TUNSETIFF
        guard rc == 0 else {
            let e = errno
            close(fd)
            let hint = e == EBUSY ? " (another process has it open)" : e == EPERM ? " (needs CAP_NET_ADMIN)" : ""
            throw TapError(description: "tap \(name): TUNSETIFF: \(String(cString: strerror(e)))\(hint)")
        }
        var hdr = Int32(Tap.headerSize)
        guard ckvm_ioctl_ptr(fd, 0x4004_54D8, &hdr) == 0 else {   // TUNSETVNETHDRSZ
            let e = errno
            close(fd)
            throw TapError(description: "tap \(name): TUNSETVNETHDRSZ: \(String(cString: strerror(e)))")
        }
        // No offloads: the guest sends and receives plain, checksummed frames.
        _ = ckvm_ioctl_arg(fd, 0x4004_54D0, 0)   // TUNSETOFFLOAD
        self.fd = fd
        self.name = name
    }

    deinit { close(fd) }
}

/// virtio-net (virtio 1.x §5.1) on a tap: queue 0 receives, queue 1 transmits. MAC, link status.
/// No offloads and no mergeable buffers: each receive buffer chain holds one whole frame.
public final class VirtioNet: VirtioDevice, @unchecked Sendable {
    public enum Feature {
        public static let mtu: UInt64 = 1 << 3
        public static let mac: UInt64 = 1 << 5
        public static let status: UInt64 = 1 << 16
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
        super.init(type: .net, queueMaxSizes: [VirtioNet.queueSize, VirtioNet.queueSize],
                   features: Feature.mac | Feature.status | Feature.mtu)
    }

    public override var statistics: String {
        "rx_frames=\(counters.rxFrames) rx_bytes=\(counters.rxBytes) tx_frames=\(counters.txFrames) tx_bytes=\(counters.txBytes) rx_dropped=\(counters.rxDropped) tx_dropped=\(counters.txDropped)"
    }

    public override func readConfig(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        // struct virtio_net_config: mac[6], status (le16: 1 = link up), max_virtqueue_pairs, mtu.
        var cfg = mac + [1, 0, 1, 0, 0xDC, 0x05]   // mtu 1500
        cfg += [UInt8](repeating: 0, count: 8)
        VirtioDevice.readWindow(cfg, offset: offset, into: data)
    }

    public override var backendFDs: [Int32] { [tap.fd] }
    public override func backendWanted(_ fd: Int32) -> Bool {
        !rxStalled && (rxLimiter.map { $0.waitNanos() == 0 } ?? true)
    }

    public override func retryAfterNanos() -> UInt64? { VirtioDevice.retryAfter(rxLimiter, txLimiter) }

    public override func didReset() { rxStalled = false }

    public override func backendReady(_ fd: Int32) {
        withContext { ctx in receive(ctx) }
    }

    public override func process(queue index: Int, _ ctx: VirtioContext) {
        if index == 0 {
            rxStalled = false   // the driver added receive buffers
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
            let chain: DescriptorChain?
            do { chain = try q.pop() } catch {
                ctx.fail("receive queue: \(error)")
                return
            }
            guard let chain else {
                // No buffer: leave the frame in the tap, and wait for the driver (or re-arm and retry).
                if q.armNotification() { continue }
                rxStalled = true
                break
            }
            guard chain.readableBytes == 0, chain.writableBytes >= UInt64(Tap.headerSize) else {
                ctx.fail("receive chain \(chain.head) is not a device-writable buffer of at least \(Tap.headerSize) bytes")
                return
            }
            var iov = chain.segments.map { iovec(iov_base: $0.host, iov_len: Int($0.length)) }
            let n = iov.withUnsafeMutableBufferPointer { readv(tap.fd, $0.baseAddress, Int32($0.count)) }
            if n <= 0 {
                q.unpop()   // nothing to receive (EAGAIN): the chain goes back for the next frame
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

    /// Parses "52:54:00:12:34:56".
    public static func parseMAC(_ s: String) -> [UInt8]? {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            out.append(b)
        }
        // Unicast only: a multicast source address is not a valid NIC address.
        guard out[0] & 1 == 0 else { return nil }
        return out
    }

    /// A locally administered unicast MAC, random.
    public static func randomMAC() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 6)
        _ = b.withUnsafeMutableBytes { ckvm_getrandom($0.baseAddress, 6, 0) }
        b[0] = (b[0] & 0xFE) | 0x02
        return b
    }
}

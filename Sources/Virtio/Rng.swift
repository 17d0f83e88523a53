#if canImport(Glibc)
import Glibc
#endif
import SystemKit

/// virtio-rng (virtio 1.x §5.4): fills each device-writable buffer from the host's getrandom.
public final class VirtioRng: VirtioDevice, @unchecked Sendable {
    public static let queueSize: UInt16 = 256
    /// Bytes served per request at most (the driver asks again for more).
    public static let maxPerRequest = 64 * 1024
    public var limiter: RateLimiter?
    public private(set) var bytesServed: UInt64 = 0

    public override var statistics: String {
        "bytes=\(bytesServed)" + (limiter.map { " throttled=\($0.throttled)" } ?? "")
    }

    public init() {
        super.init(type: .rng, queueMaxSizes: [VirtioRng.queueSize], features: 0)
    }

    public override func retryAfterNanos() -> UInt64? { VirtioDevice.retryAfter(limiter) }

    public override func process(queue index: Int, _ ctx: VirtioContext) {
        guard let q = ctx.queues[index] else { return }
        serve(q, ctx, name: "queue \(index)", limiter: limiter) { chain in
            var left = VirtioRng.maxPerRequest
            var written = 0
            for s in chain.writable where left > 0 {
                let want = min(Int(s.length), left)
                var got = 0
                while got < want {
                    let n = systemRandom(UnsafeMutableRawBufferPointer(start: s.host.advanced(by: got), count: want - got))
                    if n < 0 { if errno == EINTR { continue }; break }
                    got += n
                }
                written += got
                left -= got
                if got < want { break }
            }
            limiter?.consume(ops: 1, bytes: UInt64(written))
            bytesServed += UInt64(written)
            return UInt32(written)
        }
    }
}

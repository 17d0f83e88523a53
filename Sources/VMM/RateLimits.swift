import Virtio
import VMMContract

// The configured token buckets as the device models' rate limiters.
extension BucketConfig {
    var bucket: TokenBucket { TokenBucket(size: size, refillMillis: refillMillis, oneTimeBurst: oneTimeBurst) }
}

extension RateLimitConfig {
    public func make() -> RateLimiter? {
        bandwidth == nil && ops == nil ? nil : RateLimiter(bandwidth: bandwidth?.bucket, ops: ops?.bucket)
    }
}

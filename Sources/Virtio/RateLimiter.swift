#if canImport(Glibc)
import Glibc
#endif

/// A token bucket: `size` tokens, refilled at `size` per `refillMillis`, with an optional one-time burst
/// on top (Firecracker's model). A request may proceed while the budget is positive and is then charged
/// in full, so a request bigger than the bucket still passes, and the average rate holds.
public struct TokenBucket: Sendable, Equatable {
    public let size: UInt64
    public let refillMillis: UInt64
    public let oneTimeBurst: UInt64
    var budget: Int64
    var burstLeft: UInt64
    var last: UInt64

    public init(size: UInt64, refillMillis: UInt64, oneTimeBurst: UInt64 = 0, now: UInt64 = RateLimiter.now()) {
        self.size = size
        self.refillMillis = max(refillMillis, 1)
        self.oneTimeBurst = oneTimeBurst
        budget = Int64(clamping: size)
        burstLeft = oneTimeBurst
        last = now
    }

    mutating func refill(_ now: UInt64) {
        guard now > last else { return }
        let period = refillMillis * 1_000_000
        let add = UInt64((Double(size) * Double(now - last) / Double(period)).rounded(.down))
        if add == 0 { return }
        // Advance `last` only by the time the added tokens account for, so rounding loses nothing.
        last += UInt64((Double(add) * Double(period) / Double(size)).rounded(.up))
        budget = min(Int64(clamping: size), budget &+ Int64(clamping: add))
    }

    var available: Bool { budget > 0 || burstLeft > 0 }

    mutating func consume(_ n: UInt64) {
        let fromBurst = min(burstLeft, n)
        burstLeft -= fromBurst
        budget -= Int64(clamping: n - fromBurst)
    }

    /// Nanoseconds until the budget is positive again.
    func wait() -> UInt64 {
        if available { return 0 }
        let missing = UInt64(-budget) + 1
        return UInt64((Double(missing) * Double(refillMillis * 1_000_000) / Double(size)).rounded(.up))
    }
}

/// Bandwidth (bytes) and operations buckets for one disk or NIC; either may be absent (unlimited).
public final class RateLimiter: @unchecked Sendable {
    public var bandwidth: TokenBucket?
    public var ops: TokenBucket?
    /// Times a request had to wait (for stats and tests).
    public private(set) var throttled = 0

    public init(bandwidth: TokenBucket?, ops: TokenBucket?) {
        self.bandwidth = bandwidth
        self.ops = ops
    }

    public static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// True when a request may start now.
    public func canProceed(now: UInt64 = RateLimiter.now()) -> Bool {
        bandwidth?.refill(now)
        ops?.refill(now)
        let ok = (bandwidth?.available ?? true) && (ops?.available ?? true)
        if !ok { throttled += 1 }
        return ok
    }

    public func consume(ops n: UInt64, bytes: UInt64) {
        ops?.consume(n)
        bandwidth?.consume(bytes)
    }

    /// Nanoseconds until `canProceed` can be true (0 when it is now).
    public func waitNanos() -> UInt64 {
        max(bandwidth?.wait() ?? 0, ops?.wait() ?? 0)
    }
}

import GuestMemory
import Devices
import Synchronization

/// Virtio device IDs (virtio 1.x §5).
public enum VirtioDeviceType: UInt32, Sendable {
    case net = 1
    case block = 2
    case rng = 4
    case balloon = 5
    case vsock = 19
}

/// What a device model gets when the driver sets DRIVER_OK: its queues and a way to interrupt the guest.
public final class VirtioContext: @unchecked Sendable {
    public let memory: GuestMemory
    /// One entry per queue the device declares; nil when the driver did not enable it.
    public let queues: [SplitQueue?]
    public let features: UInt64
    let interruptStatus: InterruptStatus
    let line: InterruptLine
    let onError: @Sendable (String) -> Void

    init(
        memory: GuestMemory, queues: [SplitQueue?], features: UInt64, interruptStatus: InterruptStatus,
        line: InterruptLine, onError: @escaping @Sendable (String) -> Void
    ) {
        self.memory = memory
        self.queues = queues
        self.features = features
        self.interruptStatus = interruptStatus
        self.line = line
        self.onError = onError
    }

    /// Raises the used-buffer interrupt if the queue's driver wants one now.
    public func notifyUsed(_ q: SplitQueue) {
        if q.needsInterrupt() {
            interruptStatus.value.bitwiseOr(1, ordering: .sequentiallyConsistent)
            line.trigger()
        }
    }

    /// The configuration space changed (balloon target, capacity): interrupt with the config bit.
    public func notifyConfigChange() {
        interruptStatus.value.bitwiseOr(2, ordering: .sequentiallyConsistent)
        line.trigger()
    }

    /// A queue broke the rules: the device stops and tells the driver to reset it.
    public func fail(_ why: String) { onError(why) }
}

/// Base class of the virtio device models. Subclasses override the hooks; the transport calls
/// `activate`, `reset` and `queueNotified` with the device lock held, so a model sees one caller at a time.
open class VirtioDevice: @unchecked Sendable {
    public let type: VirtioDeviceType
    /// Maximum size of each queue; the count is the number of queues.
    public let queueMaxSizes: [UInt16]
    /// Device-specific feature bits (the transport adds VERSION_1, EVENT_IDX and INDIRECT_DESC).
    public let deviceFeatures: UInt64
    /// The context while the device is live (after DRIVER_OK, until reset).
    public internal(set) var context: VirtioContext?
    /// Serialises the worker's queue processing with activation and reset.
    let lock = Mutex<Void>(())

    public init(type: VirtioDeviceType, queueMaxSizes: [UInt16], features: UInt64) {
        self.type = type
        self.queueMaxSizes = queueMaxSizes
        self.deviceFeatures = features
    }

    /// Configuration space reads (offset from 0x100). Default: no configuration space.
    open func readConfig(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count { data[i] = 0 }
    }
    open func writeConfig(offset: UInt64, data: UnsafeRawBufferPointer) {}

    /// Copies the part of a configuration-space image that an access at `offset` covers; bytes past
    /// its end read as zero (a driver may read any width at any offset).
    public static func readWindow(_ cfg: [UInt8], offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count {
            let o = offset &+ UInt64(i)
            data[i] = o < UInt64(cfg.count) ? cfg[Int(o)] : 0
        }
    }

    /// DRIVER_OK: `ctx` holds the queues. Throwing refuses the activation (DEVICE_NEEDS_RESET).
    open func activated(_ ctx: VirtioContext) throws(VirtioDeviceError) {}
    /// The driver reset the device (or the VM is going away): drop every reference into guest memory.
    open func didReset() {}
    /// The driver notified queue `index` (through ioeventfd and the worker, or inline in tests).
    open func process(queue index: Int, _ ctx: VirtioContext) {}

    /// Counters by name (monotonic while the VM runs), for the control socket's `vm.stats` (kumod's
    /// monitoring samples them) and `--stats`. Read them through `currentCounters` while the worker runs.
    open var counterValues: [(String, UInt64)] { [] }
    /// What the device serves as its user names it: a disk's serial, a NIC's tap.
    open var backendName: String? { nil }
    /// One line of counters for `--stats` (by default the counters as `name=value`).
    open var statistics: String { counterValues.map { "\($0.0)=\($0.1)" }.joined(separator: " ") }
    /// `statistics` under the device lock (the worker updates the counters).
    public var currentStatistics: String { lock.withLock { _ in statistics } }
    /// `counterValues` under the device lock.
    public var currentCounters: [(String, UInt64)] { lock.withLock { _ in counterValues } }

    /// Host descriptors the worker should poll for this device (a tap), and what to do when one is ready.
    open var backendFDs: [Int32] { [] }
    open func backendReady(_ fd: Int32) {}
    /// Whether the worker should poll `fd` now (a receive path with no guest buffers says no; nothing is
    /// wanted before the driver is ready, or a ready back end would spin the worker).
    open func backendWanted(_ fd: Int32) -> Bool { context != nil }
    /// When the device has work it could not do yet (rate limited): nanoseconds until it can.
    open func retryAfterNanos() -> UInt64? { nil }

    /// The common service loop: takes every available chain (while `limiter` allows), lets `handle` serve
    /// it and return the bytes it wrote, hands it back, interrupts once per batch, and re-arms the
    /// notification before sleeping. A malformed queue stops the device.
    public func serve(
        _ q: SplitQueue, _ ctx: VirtioContext, name: String, limiter: RateLimiter?,
        _ handle: (DescriptorChain) -> UInt32
    ) {
        repeat {
            var done = false
            while true {
                if let l = limiter, !l.canProceed() {
                    if done { ctx.notifyUsed(q) }
                    return  // the worker runs us again when tokens are back (retryAfterNanos)
                }
                let chain: DescriptorChain?
                do { chain = try q.pop() } catch {
                    ctx.fail("\(name): \(error)")
                    return
                }
                guard let chain else { break }
                q.push(head: chain.head, written: handle(chain))
                done = true
            }
            if done { ctx.notifyUsed(q) }
        } while q.armNotification()
    }

    public enum ReceiveChain { case chain(DescriptorChain), none, failed }

    /// The next receive chain, device-writable only and at least `minBytes` long: `.none` when the driver
    /// has given none (notification re-armed first, so a buffer added meanwhile is seen); `.failed` when
    /// the queue or the chain broke the rules (the device is stopped).
    public func nextReceiveChain(_ q: SplitQueue, _ ctx: VirtioContext, minBytes: Int, queueName: String) -> ReceiveChain {
        while true {
            let chain: DescriptorChain?
            do { chain = try q.pop() } catch {
                ctx.fail("\(queueName): \(error)")
                return .failed
            }
            guard let chain else {
                if q.armNotification() { continue }
                return .none
            }
            guard chain.readableBytes == 0, chain.writableBytes >= UInt64(minBytes) else {
                ctx.fail("\(queueName): chain \(chain.head) is not a device-writable buffer of at least \(minBytes) bytes")
                return .failed
            }
            return .chain(chain)
        }
    }

    /// Nanoseconds until the most constrained of `limiters` lets work through, nil when none holds it back.
    public static func retryAfter(_ limiters: RateLimiter?...) -> UInt64? {
        let w = limiters.map { $0?.waitNanos() ?? 0 }.max() ?? 0
        return w > 0 ? w : nil
    }

    /// Runs `process` under the device lock when the device is live.
    public func queueNotified(_ index: Int) {
        lock.withLock { _ in
            guard let ctx = context, index >= 0, index < ctx.queues.count, ctx.queues[index] != nil else { return }
            process(queue: index, ctx)
        }
    }

    /// Runs `body` under the device lock with the live context (for back-end events: tap readable, timers).
    public func withContext(_ body: (VirtioContext) -> Void) {
        lock.withLock { _ in if let c = context { body(c) } }
    }
}

public struct VirtioDeviceError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// The transport's InterruptStatus register, shared with the context the worker uses.
public final class InterruptStatus: Sendable {
    public let value = Atomic<UInt32>(0)
    public init() {}
}

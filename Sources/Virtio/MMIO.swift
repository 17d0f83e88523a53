import GuestMemory
import Devices
import Synchronization

/// Device status bits (virtio 1.x §2.1).
public enum VirtioStatus {
    public static let acknowledge: UInt32 = 1
    public static let driver: UInt32 = 2
    public static let driverOK: UInt32 = 4
    public static let featuresOK: UInt32 = 8
    public static let needsReset: UInt32 = 64
    public static let failed: UInt32 = 128
}

/// Register offsets of the virtio-mmio transport, version 2 (virtio 1.x §4.2.2).
public enum MMIOReg {
    public static let magic: UInt64 = 0x000
    public static let version: UInt64 = 0x004
    public static let deviceID: UInt64 = 0x008
    public static let vendorID: UInt64 = 0x00C
    public static let deviceFeatures: UInt64 = 0x010
    public static let deviceFeaturesSel: UInt64 = 0x014
    public static let driverFeatures: UInt64 = 0x020
    public static let driverFeaturesSel: UInt64 = 0x024
    public static let queueSel: UInt64 = 0x030
    public static let queueNumMax: UInt64 = 0x034
    public static let queueNum: UInt64 = 0x038
    public static let queueReady: UInt64 = 0x044
    public static let queueNotify: UInt64 = 0x050
    public static let interruptStatus: UInt64 = 0x060
    public static let interruptACK: UInt64 = 0x064
    public static let status: UInt64 = 0x070
    public static let queueDescLow: UInt64 = 0x080
    public static let queueDescHigh: UInt64 = 0x084
    public static let queueDriverLow: UInt64 = 0x090
    public static let queueDriverHigh: UInt64 = 0x094
    public static let queueDeviceLow: UInt64 = 0x0A0
    public static let queueDeviceHigh: UInt64 = 0x0A4
    public static let configGeneration: UInt64 = 0x0FC
    public static let config: UInt64 = 0x100
    public static let magicValue: UInt32 = 0x7472_6976  // "virt"
    public static let vendor: UInt32 = 0x4F4D_554B  // "KUMO"
    /// Each device's register window.
    public static let windowSize: UInt64 = 0x1000
}

/// The virtio-mmio transport in front of one device model: the registers the driver programs from its
/// vCPU threads. Every write is checked against the status state machine; anything out of order is
/// ignored, and a queue the device cannot use sets DEVICE_NEEDS_RESET.
public final class VirtioMMIO: BusDevice, @unchecked Sendable {
    struct QueueRegs {
        var size: UInt16 = 0
        var ready = false
        var desc: UInt64 = 0, avail: UInt64 = 0, used: UInt64 = 0
    }
    struct State {
        var status: UInt32 = 0
        var deviceFeaturesSel: UInt32 = 0
        var driverFeaturesSel: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var queueSel: UInt32 = 0
        var queues: [QueueRegs]
        var configGeneration: UInt32 = 0
    }

    public let device: VirtioDevice
    public let memory: GuestMemory
    public let interruptStatus = InterruptStatus()
    let line: InterruptLine
    /// What the transport does when the driver writes QueueNotify (the VMM registers ioeventfds so
    /// that these writes never exit; this is the path without them, used by tests and as a fallback).
    let notify: @Sendable (Int) -> Void
    let state: Mutex<State>
    /// Problems the guest caused, for the VMM's log (first one per activation).
    let log: @Sendable (String) -> Void
    public let features: UInt64

    public init(
        device: VirtioDevice, memory: GuestMemory, interrupt: InterruptLine,
        notify: @escaping @Sendable (Int) -> Void, log: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.device = device
        self.memory = memory
        self.line = interrupt
        self.notify = notify
        self.log = log
        features = device.deviceFeatures | VirtioFeature.version1 | VirtioFeature.eventIdx | VirtioFeature.indirectDesc
        state = Mutex(State(queues: Array(repeating: QueueRegs(), count: device.queueMaxSizes.count)))
        super.init()
    }

    /// Current device status (for tests and the control socket).
    public var status: UInt32 { state.withLock { $0.status } }

    public override func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count { data[i] = 0 }
        if offset >= MMIOReg.config {
            device.readConfig(offset: offset - MMIOReg.config, data: data)
            return
        }
        guard data.count == 4, offset % 4 == 0 else { return }  // registers are 32-bit only
        let v: UInt32 = state.withLock { s in
            switch offset {
            case MMIOReg.magic: return MMIOReg.magicValue
            case MMIOReg.version: return 2
            case MMIOReg.deviceID: return device.type.rawValue
            case MMIOReg.vendorID: return MMIOReg.vendor
            case MMIOReg.deviceFeatures:
                return s.deviceFeaturesSel > 1 ? 0 : UInt32(truncatingIfNeeded: features >> (32 * UInt64(s.deviceFeaturesSel)))
            case MMIOReg.queueNumMax:
                return Int(s.queueSel) < s.queues.count ? UInt32(device.queueMaxSizes[Int(s.queueSel)]) : 0
            case MMIOReg.queueReady:
                return Int(s.queueSel) < s.queues.count && s.queues[Int(s.queueSel)].ready ? 1 : 0
            case MMIOReg.interruptStatus: return interruptStatus.value.load(ordering: .sequentiallyConsistent)
            case MMIOReg.status: return s.status
            case MMIOReg.configGeneration: return s.configGeneration
            default: return 0
            }
        }
        data.storeBytes(of: v.littleEndian, as: UInt32.self)
    }

    public override func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction {
        if offset >= MMIOReg.config {
            // Configuration writes are only meaningful once the driver has started the handshake.
            if status & VirtioStatus.driver != 0 { device.writeConfig(offset: offset - MMIOReg.config, data: data) }
            return .none
        }
        guard data.count == 4, offset % 4 == 0 else { return .none }
        let v = UInt32(littleEndian: data.loadUnaligned(as: UInt32.self))
        switch offset {
        case MMIOReg.queueNotify:
            if status & VirtioStatus.driverOK != 0, Int(v) < device.queueMaxSizes.count { notify(Int(v)) }
        case MMIOReg.interruptACK:
            interruptStatus.value.bitwiseAnd(~v, ordering: .sequentiallyConsistent)
        case MMIOReg.status:
            writeStatus(v)
        default:
            state.withLock { s in writeRegister(&s, offset, v) }
        }
        return .none
    }

    func writeRegister(_ s: inout State, _ offset: UInt64, _ v: UInt32) {
        let q = Int(s.queueSel)
        // Queue registers may change only between FEATURES_OK and DRIVER_OK, on a queue not yet ready.
        let queueSetup =
            s.status & VirtioStatus.featuresOK != 0 && s.status & VirtioStatus.driverOK == 0
            && s.status & VirtioStatus.failed == 0 && q < s.queues.count && !s.queues[q].ready
        func setLow(_ x: inout UInt64) { x = (x & ~0xFFFF_FFFF) | UInt64(v) }
        func setHigh(_ x: inout UInt64) { x = (x & 0xFFFF_FFFF) | (UInt64(v) << 32) }
        switch offset {
        case MMIOReg.deviceFeaturesSel: s.deviceFeaturesSel = v
        case MMIOReg.driverFeaturesSel: s.driverFeaturesSel = v
        case MMIOReg.driverFeatures:
            // Only while negotiating: after FEATURES_OK the set is frozen.
            guard s.status & VirtioStatus.driver != 0, s.status & VirtioStatus.featuresOK == 0, s.driverFeaturesSel <= 1 else { return }
            let shift = 32 * UInt64(s.driverFeaturesSel)
            s.driverFeatures = (s.driverFeatures & ~(0xFFFF_FFFF << shift)) | (UInt64(v) << shift)
        case MMIOReg.queueSel: s.queueSel = v
        case MMIOReg.queueNum where queueSetup: s.queues[q].size = UInt16(truncatingIfNeeded: min(v, 0xFFFF))
        case MMIOReg.queueDescLow where queueSetup: setLow(&s.queues[q].desc)
        case MMIOReg.queueDescHigh where queueSetup: setHigh(&s.queues[q].desc)
        case MMIOReg.queueDriverLow where queueSetup: setLow(&s.queues[q].avail)
        case MMIOReg.queueDriverHigh where queueSetup: setHigh(&s.queues[q].avail)
        case MMIOReg.queueDeviceLow where queueSetup: setLow(&s.queues[q].used)
        case MMIOReg.queueDeviceHigh where queueSetup: setHigh(&s.queues[q].used)
        case MMIOReg.queueReady:
            guard q < s.queues.count else { return }
            if v == 0 {
                if s.status & VirtioStatus.driverOK == 0 { s.queues[q].ready = false }
                return
            }
            guard queueSetup else { return }
            let r = s.queues[q]
            let cfg = QueueConfig(size: r.size, desc: r.desc, avail: r.avail, used: r.used)
            do {
                _ = try SplitQueue(cfg, memory: memory, maxSize: device.queueMaxSizes[q], features: s.driverFeatures)
                s.queues[q].ready = true
            } catch {
                log("virtio-\(device.type) queue \(q): \(error)")
                s.status |= VirtioStatus.needsReset
            }
        default: break
        }
    }

    func writeStatus(_ v: UInt32) {
        if v == 0 { reset(); return }
        var activate: (features: UInt64, queues: [QueueConfig?])? = nil
        state.withLock { s in
            let old = s.status
            // The driver only ever adds bits (§3.1.1); anything else is ignored.
            guard v & old == old else { return }
            var new = v & ~VirtioStatus.needsReset | (old & VirtioStatus.needsReset)
            let added = new & ~old
            if added & VirtioStatus.featuresOK != 0 {
                let ok =
                    new & VirtioStatus.driver != 0
                    && s.driverFeatures & ~features == 0
                    && s.driverFeatures & VirtioFeature.version1 != 0
                if !ok {
                    log("virtio-\(device.type): driver features 0x\(String(s.driverFeatures, radix: 16)) refused (offered 0x\(String(features, radix: 16)))")
                    new &= ~VirtioStatus.featuresOK
                }
            }
            if added & VirtioStatus.driverOK != 0 {
                if new & VirtioStatus.featuresOK == 0 || old & VirtioStatus.needsReset != 0 {
                    new &= ~VirtioStatus.driverOK
                } else {
                    activate = (
                        s.driverFeatures,
                        s.queues.map { q in
                            q.ready ? QueueConfig(size: q.size, desc: q.desc, avail: q.avail, used: q.used) : nil
                        }
                    )
                }
            }
            s.status = new
        }
        guard let (feat, cfgs) = activate else { return }
        do {
            var queues: [SplitQueue?] = []
            for (i, c) in cfgs.enumerated() {
                if let c {
                    do { queues.append(try SplitQueue(c, memory: memory, maxSize: device.queueMaxSizes[i], features: feat)) } catch {
                        throw VirtioDeviceError("queue \(i): \(error)")
                    }
                } else {
                    queues.append(nil)
                }
            }
            let ctx = VirtioContext(
                memory: memory, queues: queues, features: feat, interruptStatus: interruptStatus,
                line: line, onError: { [weak self] why in self?.deviceFailed(why) })
            try device.lock.withLock { (_) throws(VirtioDeviceError) in
                try device.activated(ctx)
                device.context = ctx
            }
            log("driver ready: features 0x\(String(feat, radix: 16)), \(queues.compactMap { $0 }.count) queue(s)")
            // Buffers made available before DRIVER_OK (Linux's balloon driver primes its statistics
            // queue and kicks it while probing) were not served then: the device worker looks now.
            for (i, q) in queues.enumerated() where q?.hasAvailable == true { notify(i) }
        } catch {
            log("virtio-\(device.type): cannot start: \(error)")
            state.withLock { s in s.status = (s.status & ~VirtioStatus.driverOK) | VirtioStatus.needsReset }
            notifyConfigChange()
        }
    }

    /// A queue error seen while processing (called with the device lock held): stop the device and
    /// ask the driver to reset it.
    func deviceFailed(_ why: String) {
        log("virtio-\(device.type): \(why); device needs reset")
        device.context = nil
        device.didReset()
        state.withLock { s in s.status |= VirtioStatus.needsReset }
        notifyConfigChange()
    }

    func notifyConfigChange() {
        interruptStatus.value.bitwiseOr(2, ordering: .sequentiallyConsistent)
        line.trigger()
    }

    /// Device reset (status 0, or the VMM tearing the VM down): waits for the worker to leave the device.
    public func reset() {
        device.lock.withLock { _ in
            device.context = nil
            device.didReset()
        }
        state.withLock { s in
            s = State(queues: Array(repeating: QueueRegs(), count: device.queueMaxSizes.count))
        }
        interruptStatus.value.store(0, ordering: .sequentiallyConsistent)
    }

    /// Tells the driver the configuration space changed (balloon target, disk size). The interrupt is
    /// raised only once the driver is running (DRIVER_OK): before that the driver reads the configuration
    /// when it probes, and a line raised while the guest is still booting reaches interrupt controllers
    /// the guest has not set up yet (on kvm_pvm hosts such an early interrupt corrupted the boot: an
    /// "invalid opcode" on valid kernel code right after interrupts were first enabled).
    public func configChanged() {
        let live = state.withLock { s in
            s.configGeneration &+= 1
            return s.status & VirtioStatus.driverOK != 0
        }
        if live { notifyConfigChange() }
    }
}

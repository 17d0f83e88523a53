#if canImport(Glibc)
import Glibc
#endif
import CKVM
import SystemKit

public typealias Regs = kvm_regs
public typealias SRegs = kvm_sregs
public typealias FPU = kvm_fpu
public typealias Segment = kvm_segment
public typealias CPUIDEntry = kvm_cpuid_entry2
public typealias VcpuEvents = kvm_vcpu_events
public typealias LapicState = kvm_lapic_state

/// `/dev/kvm`: the system handle.
public final class KVMSystem: @unchecked Sendable {
    public let fd: OwnedFD
    public let vcpuMmapSize: Int

    public init(path: String = "/dev/kvm") throws(SysError) {
        let raw = try sysCall("open \(path)") { open(path, O_RDWR | O_CLOEXEC) }
        fd = OwnedFD(raw)
        let version = try sysCall("KVM_GET_API_VERSION") { ckvm_ioctl(raw, CKVM_GET_API_VERSION) }
        guard version == KVM_API_VERSION else { throw SysError("KVM_GET_API_VERSION \(version)", errno: EINVAL) }
        vcpuMmapSize = Int(try sysCall("KVM_GET_VCPU_MMAP_SIZE") { ckvm_ioctl(raw, CKVM_GET_VCPU_MMAP_SIZE) })
    }

    public func checkExtension(_ cap: Int32) -> Int32 {
        max(0, ckvm_ioctl_arg(fd.raw, CKVM_CHECK_EXTENSION, UInt(cap)))
    }

    /// KVM_GET_SUPPORTED_CPUID: the CPUID entries this host's KVM can offer a guest.
    public func supportedCPUID() throws(SysError) -> [CPUIDEntry] {
        var n: UInt32 = 128
        while n <= 4096 {
            guard let c = ckvm_cpuid2_alloc(n) else { throw SysError("KVM_GET_SUPPORTED_CPUID", errno: ENOMEM) }
            defer { ckvm_free(c) }
            if ckvm_ioctl_ptr(fd.raw, CKVM_GET_SUPPORTED_CPUID, c) == 0 {
                return cpuidEntries(c)
            }
            if errno != E2BIG { throw SysError("KVM_GET_SUPPORTED_CPUID") }
            n *= 2
        }
        throw SysError("KVM_GET_SUPPORTED_CPUID", errno: E2BIG)
    }

    public func createVM() throws(SysError) -> VirtualMachine {
        let raw = try sysCall("KVM_CREATE_VM") { ckvm_ioctl_arg(fd.raw, CKVM_CREATE_VM, 0) }
        return VirtualMachine(fd: OwnedFD(raw), system: self)
    }
}

func cpuidEntries(_ c: UnsafeMutablePointer<kvm_cpuid2>) -> [CPUIDEntry] {
    let count = Int(c.pointee.nent)
    let base = UnsafeMutableRawPointer(c).advanced(by: MemoryLayout<kvm_cpuid2>.size)
        .assumingMemoryBound(to: CPUIDEntry.self)
    return Array(UnsafeBufferPointer(start: base, count: count))
}

/// A VM file descriptor.
public final class VirtualMachine: @unchecked Sendable {
    public let fd: OwnedFD
    public let system: KVMSystem

    init(fd: OwnedFD, system: KVMSystem) {
        self.fd = fd
        self.system = system
    }

    public func setUserMemoryRegion(
        slot: UInt32, guestPhys: UInt64, size: UInt64,
        host: UnsafeMutableRawPointer, flags: UInt32 = 0
    ) throws(SysError) {
        var r = kvm_userspace_memory_region(
            slot: slot, flags: flags, guest_phys_addr: guestPhys,
            memory_size: size, userspace_addr: UInt64(UInt(bitPattern: host)))
        _ = try sysCall("KVM_SET_USER_MEMORY_REGION") { ckvm_ioctl_ptr(fd.raw, CKVM_SET_USER_MEMORY_REGION, &r) }
    }

    /// Flag for `setUserMemoryRegion`: KVM records the slot's pages the guest writes (KVM_GET_DIRTY_LOG).
    public static let logDirtyPages = CKVM_MEM_LOG_DIRTY_PAGES

    /// The pages of `slot` written since the last call, a bit per page (`bitmap` holds at least one bit
    /// per page, rounded up to 64), and KVM's record cleared (KVM_GET_DIRTY_LOG).
    public func dirtyLog(slot: UInt32, into bitmap: inout [UInt64]) throws(SysError) {
        let rc = bitmap.withUnsafeMutableBytes { b -> Int32 in
            var log = kvm_dirty_log()
            log.slot = slot
            log.dirty_bitmap = b.baseAddress
            return ckvm_ioctl_ptr(fd.raw, CKVM_GET_DIRTY_LOG, &log)
        }
        guard rc >= 0 else { throw SysError("KVM_GET_DIRTY_LOG") }
    }

    public func setTSSAddress(_ addr: UInt64) throws(SysError) {
        _ = try sysCall("KVM_SET_TSS_ADDR") { ckvm_ioctl_arg(fd.raw, CKVM_SET_TSS_ADDR, UInt(addr)) }
    }

    public func setIdentityMapAddress(_ addr: UInt64) throws(SysError) {
        var a = addr
        _ = try sysCall("KVM_SET_IDENTITY_MAP_ADDR") { ckvm_ioctl_ptr(fd.raw, CKVM_SET_IDENTITY_MAP_ADDR, &a) }
    }

    public func createIRQChip() throws(SysError) {
        _ = try sysCall("KVM_CREATE_IRQCHIP") { ckvm_ioctl(fd.raw, CKVM_CREATE_IRQCHIP) }
    }

    public func createPIT2() throws(SysError) {
        // Flags 0: KVM also emulates port 0x61 (PIT channel 2 gate and output), which guests use
        // to calibrate the TSC against the PIT.
        var cfg = kvm_pit_config()
        _ = try sysCall("KVM_CREATE_PIT2") { ckvm_ioctl_ptr(fd.raw, CKVM_CREATE_PIT2, &cfg) }
    }

    /// KVM_IRQ_LINE: drives an interrupt line of the in-kernel irqchip.
    public func setIRQLine(_ irq: UInt32, level: Bool) throws(SysError) {
        var l = kvm_irq_level()
        l.irq = irq
        l.level = level ? 1 : 0
        _ = try sysCall("KVM_IRQ_LINE") { ckvm_ioctl_ptr(fd.raw, CKVM_IRQ_LINE, &l) }
    }

    /// KVM_IRQFD: signalling `event` raises (edge) GSI `gsi`.
    public func registerIRQFD(_ event: EventFD, gsi: UInt32) throws(SysError) {
        var r = kvm_irqfd()
        r.fd = UInt32(bitPattern: event.fd.raw)
        r.gsi = gsi
        _ = try sysCall("KVM_IRQFD") { ckvm_ioctl_ptr(fd.raw, CKVM_IRQFD, &r) }
    }

    /// KVM_IOEVENTFD: a guest write to `address` (MMIO, or PIO when `pio`) signals `event` without an exit.
    public func registerIOEventFD(
        _ event: EventFD, address: UInt64, length: UInt32,
        pio: Bool = false, datamatch: UInt64? = nil
    ) throws(SysError) {
        var r = kvm_ioeventfd()
        r.addr = address
        r.len = length
        r.fd = event.fd.raw
        var flags: UInt32 = 0
        if pio { flags |= CKVM_IOEVENTFD_FLAG_PIO }
        if let d = datamatch {
            flags |= CKVM_IOEVENTFD_FLAG_DATAMATCH
            r.datamatch = d
        }
        r.flags = flags
        _ = try sysCall("KVM_IOEVENTFD") { ckvm_ioctl_ptr(fd.raw, CKVM_IOEVENTFD, &r) }
    }

    public func createVCPU(id: UInt32) throws(SysError) -> VCPU {
        let raw = try sysCall("KVM_CREATE_VCPU") { ckvm_ioctl_arg(fd.raw, CKVM_CREATE_VCPU, UInt(id)) }
        let owned = OwnedFD(raw)
        let size = system.vcpuMmapSize
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, raw, 0), p != MAP_FAILED else {
            throw SysError("mmap kvm_run")
        }
        return VCPU(id: id, fd: owned, run: p.assumingMemoryBound(to: kvm_run.self), runSize: size)
    }
}

/// A vCPU file descriptor and its mmapped `struct kvm_run`.
public final class VCPU: @unchecked Sendable {
    public let id: UInt32
    public let fd: OwnedFD
    public let run: UnsafeMutablePointer<kvm_run>
    let runSize: Int

    init(id: UInt32, fd: OwnedFD, run: UnsafeMutablePointer<kvm_run>, runSize: Int) {
        self.id = id
        self.fd = fd
        self.run = run
        self.runSize = runSize
    }

    deinit { munmap(run, runSize) }

    /// KVM_RUN once. Returns false when interrupted by a signal (EINTR): the caller decides what
    /// that means (a kick); it is never retried here.
    @inline(__always)
    public func runOnce() throws(SysError) -> Bool {
        if ckvm_ioctl(fd.raw, CKVM_RUN) == 0 { return true }
        let e = errno
        if e == EINTR || e == EAGAIN { return false }
        throw SysError("KVM_RUN", errno: e)
    }

    @inline(__always) public var exitReason: UInt32 { ckvm_run_exit_reason(run) }

    public func setImmediateExit(_ on: Bool) { ckvm_run_set_immediate_exit(run, on ? 1 : 0) }

    public func getRegs() throws(SysError) -> Regs {
        var r = Regs()
        _ = try sysCall("KVM_GET_REGS") { ckvm_ioctl_ptr(fd.raw, CKVM_GET_REGS, &r) }
        return r
    }
    public func setRegs(_ regs: Regs) throws(SysError) {
        var r = regs
        _ = try sysCall("KVM_SET_REGS") { ckvm_ioctl_ptr(fd.raw, CKVM_SET_REGS, &r) }
    }
    public func getSRegs() throws(SysError) -> SRegs {
        var r = SRegs()
        _ = try sysCall("KVM_GET_SREGS") { ckvm_ioctl_ptr(fd.raw, CKVM_GET_SREGS, &r) }
        return r
    }
    public func setSRegs(_ sregs: SRegs) throws(SysError) {
        var r = sregs
        _ = try sysCall("KVM_SET_SREGS") { ckvm_ioctl_ptr(fd.raw, CKVM_SET_SREGS, &r) }
    }
    public func getFPU() throws(SysError) -> FPU {
        var f = FPU()
        _ = try sysCall("KVM_GET_FPU") { ckvm_ioctl_ptr(fd.raw, CKVM_GET_FPU, &f) }
        return f
    }
    public func setFPU(_ fpu: FPU) throws(SysError) {
        var f = fpu
        _ = try sysCall("KVM_SET_FPU") { ckvm_ioctl_ptr(fd.raw, CKVM_SET_FPU, &f) }
    }
    public func getEvents() throws(SysError) -> VcpuEvents {
        var e = VcpuEvents()
        _ = try sysCall("KVM_GET_VCPU_EVENTS") { ckvm_ioctl_ptr(fd.raw, CKVM_GET_VCPU_EVENTS, &e) }
        return e
    }
    public func setEvents(_ events: VcpuEvents) throws(SysError) {
        var e = events
        _ = try sysCall("KVM_SET_VCPU_EVENTS") { ckvm_ioctl_ptr(fd.raw, CKVM_SET_VCPU_EVENTS, &e) }
    }

    /// Injects exception `vector` (with an optional error code) before the next guest instruction.
    public func injectException(vector: UInt8, errorCode: UInt32? = nil) throws(SysError) {
        var e = try getEvents()
        e.exception.injected = 1
        e.exception.nr = vector
        e.exception.has_error_code = errorCode == nil ? 0 : 1
        e.exception.error_code = errorCode ?? 0
        e.exception.pending = 0
        e.flags = 0
        try setEvents(e)
    }

    public func setCPUID(_ entries: [CPUIDEntry]) throws(SysError) {
        guard let c = ckvm_cpuid2_alloc(UInt32(entries.count)) else { throw SysError("KVM_SET_CPUID2", errno: ENOMEM) }
        defer { ckvm_free(c) }
        let base = UnsafeMutableRawPointer(c).advanced(by: MemoryLayout<kvm_cpuid2>.size)
            .assumingMemoryBound(to: CPUIDEntry.self)
        for (i, e) in entries.enumerated() { base[i] = e }
        _ = try sysCall("KVM_SET_CPUID2") { ckvm_ioctl_ptr(fd.raw, CKVM_SET_CPUID2, c) }
    }

    /// KVM_SET_MSRS: all entries must be accepted.
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws(SysError) {
        guard let m = ckvm_msrs_alloc(UInt32(msrs.count)) else { throw SysError("KVM_SET_MSRS", errno: ENOMEM) }
        defer { ckvm_free(m) }
        let base = UnsafeMutableRawPointer(m).advanced(by: MemoryLayout<kvm_msrs>.size)
            .assumingMemoryBound(to: kvm_msr_entry.self)
        for (i, e) in msrs.enumerated() {
            base[i] = kvm_msr_entry(index: e.index, reserved: 0, data: e.value)
        }
        let n = try sysCall("KVM_SET_MSRS") { ckvm_ioctl_ptr(fd.raw, CKVM_SET_MSRS, m) }
        if Int(n) != msrs.count {
            throw SysError("KVM_SET_MSRS (MSR 0x\(String(msrs[Int(n)].index, radix: 16)) refused)", errno: EINVAL)
        }
    }

    public func getMSR(_ index: UInt32) throws(SysError) -> UInt64 {
        guard let m = ckvm_msrs_alloc(1) else { throw SysError("KVM_GET_MSRS", errno: ENOMEM) }
        defer { ckvm_free(m) }
        let e = UnsafeMutableRawPointer(m).advanced(by: MemoryLayout<kvm_msrs>.size)
            .assumingMemoryBound(to: kvm_msr_entry.self)
        e.pointee.index = index
        let n = try sysCall("KVM_GET_MSRS") { ckvm_ioctl_ptr(fd.raw, CKVM_GET_MSRS, m) }
        if n != 1 { throw SysError("KVM_GET_MSRS 0x\(String(index, radix: 16))", errno: EINVAL) }
        return e.pointee.data
    }

    public func getLAPIC() throws(SysError) -> LapicState {
        var l = LapicState()
        _ = try sysCall("KVM_GET_LAPIC") { ckvm_ioctl_ptr(fd.raw, CKVM_GET_LAPIC, &l) }
        return l
    }
    public func setLAPIC(_ state: LapicState) throws(SysError) {
        var l = state
        _ = try sysCall("KVM_SET_LAPIC") { ckvm_ioctl_ptr(fd.raw, CKVM_SET_LAPIC, &l) }
    }

    /// MXCSR, read from the vCPU's XSAVE image (legacy region offset 24); KVM_GET_FPU does not
    /// report it on every host.
    public func getMXCSR() throws(SysError) -> UInt32 {
        var x = kvm_xsave()
        _ = try sysCall("KVM_GET_XSAVE") { ckvm_ioctl_ptr(fd.raw, CKVM_GET_XSAVE, &x) }
        return x.region.6
    }

    public func setMXCSR(_ value: UInt32) throws(SysError) {
        var x = kvm_xsave()
        _ = try sysCall("KVM_GET_XSAVE") { ckvm_ioctl_ptr(fd.raw, CKVM_GET_XSAVE, &x) }
        x.region.6 = value
        // The XSAVE header's XSTATE_BV must include SSE, or MXCSR is not restored from the image.
        withUnsafeMutableBytes(of: &x.region) { $0.storeBytes(of: $0.load(fromByteOffset: 512, as: UInt64.self) | 2, toByteOffset: 512, as: UInt64.self) }
        _ = try sysCall("KVM_SET_XSAVE") { ckvm_ioctl_ptr(fd.raw, CKVM_SET_XSAVE, &x) }
    }

    /// KVM_GET_TSC_KHZ: the guest TSC frequency.
    public func tscKHz() throws(SysError) -> UInt32 {
        UInt32(try sysCall("KVM_GET_TSC_KHZ") { ckvm_ioctl(fd.raw, CKVM_GET_TSC_KHZ) })
    }

    /// KVM_GET_STATS_FD: the vCPU's binary statistics file descriptor, where the host offers it.
    public func statsFD() -> OwnedFD? {
        let r = ckvm_ioctl(fd.raw, CKVM_GET_STATS_FD)
        return r >= 0 ? OwnedFD(r) : nil
    }
}

/// Exit reasons by number, for dispatch and statistics.
public enum ExitReason {
    public static let count = 40
    public static func name(_ reason: Int) -> String {
        switch UInt32(reason) {
        case UInt32(KVM_EXIT_UNKNOWN): return "unknown"
        case UInt32(KVM_EXIT_EXCEPTION): return "exception"
        case UInt32(KVM_EXIT_IO): return "io"
        case UInt32(KVM_EXIT_HYPERCALL): return "hypercall"
        case UInt32(KVM_EXIT_DEBUG): return "debug"
        case UInt32(KVM_EXIT_HLT): return "hlt"
        case UInt32(KVM_EXIT_MMIO): return "mmio"
        case UInt32(KVM_EXIT_IRQ_WINDOW_OPEN): return "irq_window_open"
        case UInt32(KVM_EXIT_SHUTDOWN): return "shutdown"
        case UInt32(KVM_EXIT_FAIL_ENTRY): return "fail_entry"
        case UInt32(KVM_EXIT_INTR): return "intr"
        case UInt32(KVM_EXIT_NMI): return "nmi"
        case UInt32(KVM_EXIT_INTERNAL_ERROR): return "internal_error"
        case UInt32(KVM_EXIT_SYSTEM_EVENT): return "system_event"
        case UInt32(KVM_EXIT_IOAPIC_EOI): return "ioapic_eoi"
        case UInt32(KVM_EXIT_X86_RDMSR): return "rdmsr"
        case UInt32(KVM_EXIT_X86_WRMSR): return "wrmsr"
        default: return "reason_\(reason)"
        }
    }
}

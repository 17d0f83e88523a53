import VMMContract
import KVM
import SystemKit
import CKVM
import GuestMemory
import Boot
import Devices
import Virtio
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Why a machine stopped running.
public enum MachineOutcome: Equatable, Sendable {
    case powerOff
    /// The guest asked for a restart: how, and on which vCPU.
    case reset(ResetCause, vcpu: Int)
    case halted(vcpu: Int)
    case stopped
    case fatal(String)
}

enum MachineEvent: Sendable {
    case powerOff
    case reset(ResetCause, vcpu: Int)
    case halted(Int)
    case fatal(String)
    case bootMarker(UInt64)
    case stop
}

/// Monotonic nanoseconds.
@inline(__always)
public func monotonicNanos(_ clock: clockid_t = CLOCK_MONOTONIC) -> UInt64 {
    var ts = timespec()
    clock_gettime(clock, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Per-vCPU exit counters, written only by that vCPU's thread.
public final class ExitCounters: @unchecked Sendable {
    public static let extra = 4  // io_in, io_out, mmio_read, mmio_write
    public static let fallbackKinds = 4
    let counts: UnsafeMutablePointer<UInt64>
    public static var size: Int { ExitReason.count + extra + fallbackKinds }
    init() {
        counts = .allocate(capacity: ExitCounters.size)
        counts.initialize(repeating: 0, count: ExitCounters.size)
    }
    deinit { counts.deallocate() }
    public func value(_ i: Int) -> UInt64 { counts[i] }
    public var ioIn: UInt64 { counts[ExitReason.count] }
    public var ioOut: UInt64 { counts[ExitReason.count + 1] }
    public var mmioRead: UInt64 { counts[ExitReason.count + 2] }
    public var mmioWrite: UInt64 { counts[ExitReason.count + 3] }
    /// Instructions run by the emulation fallback: int3, fwait, ldmxcsr, stmxcsr.
    public func fallback(_ k: Int) -> UInt64 { counts[ExitReason.count + ExitCounters.extra + k] }
    public var total: UInt64 { (0..<ExitReason.count).reduce(0) { $0 + counts[$1] } }
}

/// A request to a vCPU thread for its paging registers (a control-thread request served by the vCPU
/// itself at its next exit: vCPU ioctls belong to the thread that runs KVM_RUN).
public final class RegisterMailbox: Sendable {
    struct State { var asked = 0; var served = 0; var mode: PagingMode? = nil; var rip: UInt64 = 0 }
    let state = Mutex(State())
}

/// A vCPU thread's kernel thread id, published by the thread itself.
public final class VCPUThreadID: Sendable {
    public let value = Atomic<Int32>(0)
}

/// Signal used to kick vCPU threads out of KVM_RUN; its handler does nothing.
let kickSignal = SIGUSR1

private let installKickHandler: Void = {
    var sa = sigaction()
    sa.__sigaction_handler.sa_handler = { _ in }
    sigemptyset(&sa.sa_mask)
    sa.sa_flags = 0  // no SA_RESTART: KVM_RUN must return EINTR
    sigaction(kickSignal, &sa, nil)
}()

/// One VM: KVM VM fd, guest memory, devices, vCPUs and their threads.
public final class Machine: @unchecked Sendable {
    public struct Options: Sendable {
        public var memorySize: UInt64
        public var vcpus: Int
        /// In-kernel LAPIC/IOAPIC/PIC and PIT. Off only for tiny test guests that want HLT exits.
        public var irqchip: Bool = true
        public var cpuid: [CPUIDModifier] = []
        /// Run the emulation fallback on KVM emulation failures.
        public var emulationFallback: Bool = true
        /// Per-vCPU pinning, applied by each vCPU thread as it starts.
        public var affinity: VCPUAffinity? = nil
        /// Guest RAM mergeable by KSM (and without transparent huge pages, which KSM does not merge).
        public var memoryDedup: Bool = false
        public init(memorySize: UInt64, vcpus: Int) { self.memorySize = memorySize; self.vcpus = vcpus }
    }

    public let options: Options
    public let kvm: KVMSystem
    public let vm: VirtualMachine
    public let memory: GuestMemory
    public let pio = Bus()
    public let mmio = Bus()
    public let vcpus: [VCPU]
    public let counters: [ExitCounters]
    /// Each vCPU thread's kernel thread id (0 until it starts): for /proc/self/task/TID (schedstat,
    /// affinity).
    public let vcpuTIDs: [VCPUThreadID]
    let mailboxes: [RegisterMailbox]
    /// KVM's binary statistics per vCPU, where the host offers them (KVM_GET_STATS_FD).
    public let kvmStats: [(fd: OwnedFD, layout: KVMStats)?]
    public private(set) var serial: Serial8250!
    let serialEvent: EventFD?
    /// The ACPI power button (Generic Event Device); nil without the in-kernel irqchip.
    public private(set) var powerButton: GenericEventDevice? = nil
    var gedEvent: EventFD? = nil

    let stopFlag = Atomic<Bool>(false)
    let events = Mutex<[MachineEvent]>([])
    let wake: EventFD
    var threads: [OSThread] = []
    /// vCPU threads that have not left their exit loop yet.
    let vcpusRunning = Atomic<Int>(0)
    /// Monotonic time of the first KVM_RUN and the process CPU time then (ns); 0 until it happens.
    public let firstRunNanos = Atomic<UInt64>(0)
    /// Set per vCPU when a register sample was asked for (SIGUSR2 to kumo-vmm): the vCPU prints
    /// its RIP and stack pointer on stderr at its next exit.
    let sampleGeneration = Atomic<Int>(0)
    public let firstRunCPUNanos = Atomic<UInt64>(0)
    public private(set) var bootMarkerNanos: UInt64? = nil
    /// Virtio devices: their MMIO transports, worker threads and the eventfds KVM signals.
    public private(set) var virtio: [VirtioMMIO] = []
    var workers: [DeviceWorker] = []
    var virtioEvents: [EventFD] = []
    /// The balloon, when the VM has one (the control socket drives it).
    public var balloon: VirtioBalloon? { virtio.lazy.compactMap { $0.device as? VirtioBalloon }.first }
    public var balloonTransport: VirtioMMIO? { virtio.first { $0.device is VirtioBalloon } }
    /// DSDT entries describing the virtio devices (for the boot loader's ACPI tables).
    public private(set) var acpiDevices: [[UInt8]] = []

    public init(_ options: Options, kvm: KVMSystem, serialSink: SerialSink?, virtio devices: [VirtioDevice] = []) throws {
        _ = installKickHandler
        self.options = options
        self.kvm = kvm
        vm = try kvm.createVM()
        memory = try GuestMemory(
            layout: Layout.ramRegions(size: options.memorySize),
            hugePages: !options.memoryDedup && !devices.contains { $0 is VirtioBalloon })  // see GuestMemory.init
        if options.memoryDedup, let e = memory.markMergeable() {
            throw SysError("madvise(MADV_MERGEABLE) on guest RAM (is KSM built into this kernel?)", errno: e)
        }
        for (slot, r) in memory.regions.enumerated() {
            try vm.setUserMemoryRegion(slot: UInt32(slot), guestPhys: r.guestPhys, size: r.size, host: r.host)
        }
        // What the firmware would do at the reset vector: reset (see ResetVector).
        try memory.write(ResetVector.stub, at: Layout.resetVector)
        try vm.setTSSAddress(Layout.kvmTSS)
        if options.irqchip {
            try vm.setIdentityMapAddress(Layout.kvmIdentityMap)
            try vm.createIRQChip()
            try vm.createPIT2()
        }
        wake = try EventFD()
        // Devices.
        let irq: InterruptLine
        if options.irqchip {
            let ev = try EventFD()
            try vm.registerIRQFD(ev, gsi: Layout.com1IRQ)
            serialEvent = ev
            irq = InterruptLine { ev.signal() }
        } else {
            serialEvent = nil
            irq = InterruptLine {}
        }
        serial = Serial8250(sink: serialSink, irq: irq)
        try pio.insert(serial, base: UInt64(Layout.com1Port), length: 8)
        try pio.insert(I8042(), base: 0x60, length: 5)
        try pio.insert(CMOSRTC(), base: 0x70, length: 2)
        try pio.insert(
            ACPIPowerDevice(sleepType: Layout.s5SleepType, resetValue: Layout.acpiResetValue),
            base: UInt64(Layout.acpiSleepControlPort), length: 3)
        try pio.insert(ResetControlDevice(), base: UInt64(Layout.resetControlPort), length: 1)
        if options.irqchip {
            let ev = try EventFD()
            try vm.registerIRQFD(ev, gsi: Layout.gedGSI)
            let ged = GenericEventDevice(irq: InterruptLine { ev.signal() })
            try pio.insert(ged, base: UInt64(Layout.gedPort), length: 4)
            gedEvent = ev
            powerButton = ged
        }
        try mmio.insert(BootMarkerDevice(magic: Layout.bootMarkerValue), base: Layout.bootMarker, length: 0x1000)
        if !devices.isEmpty && !options.irqchip { throw SysError("virtio devices need the in-kernel irqchip", errno: EINVAL) }
        for (i, dev) in devices.enumerated() {
            guard i < Layout.virtioGSIs.count else { throw SysError("too many virtio devices", errno: EINVAL) }
            let base = Layout.virtioMMIO + UInt64(i) * MMIOReg.windowSize
            let gsi = Layout.virtioGSIs[i]
            // Interrupts leave by irqfd; notifications arrive by ioeventfd (one per queue, matched on
            // the queue index written to QueueNotify), so neither costs a userspace exit.
            let irqEvent = try EventFD()
            try vm.registerIRQFD(irqEvent, gsi: gsi)
            var queueEvents: [EventFD] = []
            for q in dev.queueMaxSizes.indices {
                let ev = try EventFD()
                try vm.registerIOEventFD(ev, address: base + MMIOReg.queueNotify, length: 4, datamatch: UInt64(q))
                queueEvents.append(ev)
            }
            let name = "virtio-\(dev.type)\(i)"
            let qe = queueEvents
            let t = VirtioMMIO(
                device: dev, memory: memory, interrupt: InterruptLine { irqEvent.signal() },
                notify: { q in qe[q].signal() }, log: { eprint("kumo-vmm: \(name): \($0)") })
            try mmio.insert(t, base: base, length: MMIOReg.windowSize)
            virtio.append(t)
            virtioEvents.append(irqEvent)
            virtioEvents.append(contentsOf: queueEvents)
            workers.append(try DeviceWorker(device: dev, name: name, queueFDs: queueEvents.map { $0.fd.raw }))
            acpiDevices.append(AML.virtioMMIO(index: i, base: base, gsi: gsi))
        }
        // vCPUs.
        let supported = try kvm.supportedCPUID().map {
            CPUIDLeaf(function: $0.function, index: $0.index, flags: $0.flags, eax: $0.eax, ebx: $0.ebx, ecx: $0.ecx, edx: $0.edx)
        }
        var made: [VCPU] = []
        var ctrs: [ExitCounters] = []
        for i in 0..<options.vcpus {
            let v = try vm.createVCPU(id: UInt32(i))
            let leaves = CPUTemplate.apply(supported, modifiers: options.cpuid, vcpu: i, of: options.vcpus)
            try v.setCPUID(
                leaves.map {
                    CPUIDEntry(
                        function: $0.function, index: $0.index, flags: $0.flags, eax: $0.eax, ebx: $0.ebx,
                        ecx: $0.ecx, edx: $0.edx, padding: (0, 0, 0))
                })
            try Machine.initMSRs(v)
            var fpu = FPU()
            fpu.fcw = 0x37F
            fpu.mxcsr = 0x1F80
            try v.setFPU(fpu)
            if options.irqchip { try Machine.initLAPIC(v) }
            made.append(v)
            ctrs.append(ExitCounters())
        }
        vcpus = made
        counters = ctrs
        vcpuTIDs = made.map { _ in VCPUThreadID() }
        mailboxes = made.map { _ in RegisterMailbox() }
        kvmStats = made.map { v in
            guard let fd = v.statsFD() else { return nil }
            guard let layout = KVMStats(fd: fd.raw) else { return nil }
            return (fd, layout)
        }
    }

    static func initMSRs(_ v: VCPU) throws {
        try v.setMSRs([
            (0x174, 0), (0x175, 0), (0x176, 0),  // SYSENTER_CS/ESP/EIP
            (0xC000_0081, 0), (0xC000_0082, 0), (0xC000_0083, 0), (0xC000_0084, 0),  // STAR LSTAR CSTAR SFMASK
            (0xC000_0102, 0),  // KERNEL_GS_BASE
            (0x10, 0),  // TSC
            (0x1A0, 1),  // MISC_ENABLE: fast strings
            (0x2FF, (1 << 11) | 6),  // MTRRdefType: enabled, write-back
        ])
    }

    /// LINT0 as ExtINT and LINT1 as NMI, as firmware leaves them.
    static func initLAPIC(_ v: VCPU) throws {
        var l = try v.getLAPIC()
        func set(_ off: Int, _ mode: UInt32) {
            withUnsafeMutableBytes(of: &l.regs) { p in
                var x = p.loadUnaligned(fromByteOffset: off, as: UInt32.self)
                x = (x & ~0x700) | (mode << 8)
                p.storeBytes(of: x, toByteOffset: off, as: UInt32.self)
            }
        }
        set(0x350, 7)  // LVT0: ExtINT
        set(0x360, 4)  // LVT1: NMI
        try v.setLAPIC(l)
    }

    /// Sets vCPU `index`'s registers to `cpu`.
    public func setBootState(_ cpu: BootCPUState, vcpu index: Int) throws {
        let v = vcpus[index]
        var s = try v.getSRegs()
        func seg(_ x: SegmentState) -> KVM.Segment {
            Segment(
                base: x.base, limit: x.limit, selector: x.selector, type: x.type, present: x.present, dpl: x.dpl,
                db: x.db, s: x.s, l: x.l, g: x.g, avl: 0, unusable: 0, padding: 0)
        }
        s.cs = seg(cpu.code)
        s.ds = seg(cpu.data); s.es = s.ds; s.fs = s.ds; s.gs = s.ds; s.ss = s.ds
        s.tr = seg(cpu.tss)
        s.gdt.base = cpu.gdtBase; s.gdt.limit = cpu.gdtLimit
        s.idt.base = cpu.idtBase; s.idt.limit = cpu.idtLimit
        s.cr0 = cpu.cr0; s.cr3 = cpu.cr3; s.cr4 = cpu.cr4; s.efer = cpu.efer
        try v.setSRegs(s)
        var r = Regs()
        r.rip = cpu.rip; r.rsp = cpu.rsp; r.rbp = cpu.rsp; r.rsi = cpu.rsi; r.rbx = cpu.rbx; r.rflags = cpu.rflags
        try v.setRegs(r)
    }

    func post(_ e: MachineEvent) {
        events.withLock { $0.append(e) }
        wake.signal()
    }

    /// Starts one thread per vCPU.
    public func start() throws {
        for w in workers { try w.start() }
        for i in 0..<vcpus.count {
            vcpusRunning.add(1, ordering: .relaxed)
            do {
                threads.append(
                    try OSThread.spawn(name: "vcpu\(i)") { [self] in
                        vcpuLoop(i)
                        vcpusRunning.subtract(1, ordering: .releasing)
                    })
            } catch {
                vcpusRunning.subtract(1, ordering: .relaxed)
                throw error
            }
        }
    }

    /// Answers a pending register request (called by the vCPU's own thread).
    func serveMailbox(_ index: Int, _ vcpu: VCPU) {
        let box = mailboxes[index]
        guard box.state.withLock({ $0.asked != $0.served }) else { return }
        let sr = try? vcpu.getSRegs()
        let r = try? vcpu.getRegs()
        box.state.withLock { s in
            s.mode = sr.map { PagingMode(cr0: $0.cr0, cr3: $0.cr3, cr4: $0.cr4, efer: $0.efer) }
            s.rip = r?.rip ?? 0
            s.served = s.asked
        }
    }

    /// vCPU `index`'s paging registers (CR0, CR3, CR4, EFER) and RIP, fetched by kicking the vCPU out
    /// of KVM_RUN and letting its thread read them; nil if it does not answer within `timeoutMs`.
    public func pagingState(vcpu index: Int, timeoutMs: Int = 1000) -> (mode: PagingMode, rip: UInt64)? {
        guard index >= 0, index < vcpus.count, index < threads.count else { return nil }
        let box = mailboxes[index]
        let ticket = box.state.withLock { s -> Int in
            s.asked += 1; return s.asked
        }
        for _ in 0..<timeoutMs {
            threads[index].kill(kickSignal)
            let done = box.state.withLock { s -> (PagingMode, UInt64)?? in
                guard s.served >= ticket else { return .none }
                return .some(s.mode.map { ($0, s.rip) })
            }
            if let d = done { return d }
            usleep(1000)
        }
        return nil
    }

    /// Waits for the machine to stop; `extraFD` (e.g. a signal eventfd) becomes `.stopped` when readable.
    /// `onBootMarker` runs on this (the calling) thread.
    public func wait(extraFD: Int32 = -1, sampleFD: Int32 = -1, onBootMarker: (UInt64) -> Void = { _ in }) -> MachineOutcome {
        var halted = 0
        while true {
            var fds = [
                pollfd(fd: wake.fd.raw, events: Int16(POLLIN), revents: 0),
                pollfd(fd: extraFD, events: Int16(POLLIN), revents: 0),
                pollfd(fd: sampleFD, events: Int16(POLLIN), revents: 0),
            ]
            let n = poll(&fds, 3, -1)
            if n < 0 && errno == EINTR { continue }
            if extraFD >= 0 && fds[1].revents != 0 { post(.stop) }
            if sampleFD >= 0 && fds[2].revents != 0 {
                var v: UInt64 = 0
                _ = read(sampleFD, &v, 8)
                sampleGeneration.add(1, ordering: .releasing)
                for t in threads { t.kill(kickSignal) }
                continue
            }
            _ = wake.wait()
            let pending = events.withLock { e -> [MachineEvent] in
                let x = e; e.removeAll(); return x
            }
            for e in pending {
                switch e {
                case let .bootMarker(t):
                    if bootMarkerNanos == nil { bootMarkerNanos = t; onBootMarker(t) }
                case .powerOff: stopAll(); return .powerOff
                case let .reset(cause, v): stopAll(); return .reset(cause, vcpu: v)
                case let .halted(i):
                    // Without an in-kernel irqchip nothing can wake a halted vCPU: the machine
                    // is done when every vCPU has halted.
                    halted += 1
                    if halted == vcpus.count { stopAll(); return .halted(vcpu: i) }
                case let .fatal(m): stopAll(); return .fatal(m)
                case .stop: stopAll(); return .stopped
                }
            }
        }
    }

    /// Stops every vCPU thread (kick out of KVM_RUN) and joins them. The machine is done after it.
    public func stopAll() {
        stopFlag.store(true, ordering: .releasing)
        for v in vcpus { v.setImmediateExit(true) }
        for t in threads { t.kill(kickSignal) }
        // On kvm_pvm a vCPU that spins in emulated kernel code without a single exit never notices the
        // signal (measured: still in KVM_RUN after 5 s, whatever the loop). Taking guest RAM away makes
        // its next instruction fetch exit; the machine is being torn down anyway.
        var waited = 0
        while vcpusRunning.load(ordering: .acquiring) > 0 && !threads.isEmpty {
            if waited == 200 {
                for slot in memory.regions.indices {
                    let r = memory.regions[slot]
                    try? vm.setUserMemoryRegion(slot: UInt32(slot), guestPhys: r.guestPhys, size: 0, host: r.host)
                }
                for t in threads { t.kill(kickSignal) }
            }
            usleep(1000)
            waited += 1
        }
        for t in threads { t.join() }
        threads.removeAll()
        for w in workers { w.stop() }
        for t in virtio { t.reset() }
    }

    deinit {
        if !threads.isEmpty { stopAll() }
        for w in workers { w.stop() }
    }

    // MARK: - The vCPU exit loop (no allocation or formatting on the common paths)

    func vcpuLoop(_ index: Int) {
        let vcpu = vcpus[index]
        let run = vcpu.run
        let c = counters[index].counts
        let runBase = UnsafeMutableRawPointer(run)
        let fallbackOn = options.emulationFallback
        var sampleSeen = 0
        // Pinned before the thread id is published: whoever sees the id (vm.stats, vcpu.pin) sees the pinning.
        if let cpus = options.affinity?.get(index), let e = CPUList.pin(tid: 0, cpus) {
            eprint("kumo-vmm: vcpu\(index): cannot pin to CPUs \(CPUList.format(cpus)): \(String(cString: strerror(e)))")
        }
        vcpuTIDs[index].value.store(OSThread.currentTID, ordering: .releasing)
        if index == 0 {
            firstRunCPUNanos.store(monotonicNanos(CLOCK_PROCESS_CPUTIME_ID), ordering: .relaxed)
            firstRunNanos.store(monotonicNanos(), ordering: .releasing)
        }
        while !stopFlag.load(ordering: .acquiring) {
            let entered: Bool
            do { entered = try vcpu.runOnce() } catch {
                post(.fatal("vCPU \(index): \(error)"))
                return
            }
            // Stopping: whatever this exit was (after stopAll took guest RAM away, a fetch from nothing).
            if stopFlag.load(ordering: .acquiring) { return }
            if !entered {
                c[Int(KVM_EXIT_INTR)] &+= 1
                serveMailbox(index, vcpu)
                let g = sampleGeneration.load(ordering: .acquiring)
                if g != sampleSeen, let r = try? vcpu.getRegs() {
                    sampleSeen = g
                    // With the top of the stack: return addresses show who called the hot spot.
                    var stack = ""
                    if let sr = try? vcpu.getSRegs() {
                        let mode = PagingMode(cr0: sr.cr0, cr3: sr.cr3, cr4: sr.cr4, efer: sr.efer)
                        let words = memory.readVirtual(r.rsp, count: 128, mode: mode).bytes
                        var i = 0
                        while i + 8 <= words.count {
                            var v: UInt64 = 0
                            for k in 0..<8 { v |= UInt64(words[i + k]) << (8 * UInt64(k)) }
                            if v >> 44 == 0xFFFFF { stack += " 0x" + hex(v) }  // kernel text-looking values only
                            i += 8
                        }
                    }
                    eprint("kumo-vmm: sample vCPU \(index): rip 0x\(hex(r.rip)) rsp 0x\(hex(r.rsp))" + (stack.isEmpty ? "" : " stack:" + stack))
                }
                continue
            }
            let reason = Int(ckvm_run_exit_reason(run))
            c[reason < ExitReason.count ? reason : 0] &+= 1
            var action = IOAction.none
            switch reason {
            case Int(KVM_EXIT_IO):
                let size = Int(ckvm_run_io_size(run))
                let port = UInt64(ckvm_run_io_port(run))
                let count = Int(ckvm_run_io_count(run))
                let data = runBase + Int(ckvm_run_io_data_offset(run))
                if ckvm_run_io_direction(run) == UInt8(KVM_EXIT_IO_IN) {
                    c[ExitReason.count] &+= 1
                    for k in 0..<count {
                        _ = pio.read(port, UnsafeMutableRawBufferPointer(start: data + k * size, count: size))
                    }
                } else {
                    c[ExitReason.count + 1] &+= 1
                    for k in 0..<count {
                        let a = pio.write(port, UnsafeRawBufferPointer(start: data + k * size, count: size))
                        if a != .none { action = a }
                    }
                }
            case Int(KVM_EXIT_MMIO):
                let addr = ckvm_run_mmio_phys_addr(run)
                let len = min(Int(ckvm_run_mmio_len(run)), 8)
                let data = UnsafeMutableRawPointer(ckvm_run_mmio_data(run)!)
                if ckvm_run_mmio_is_write(run) != 0 {
                    c[ExitReason.count + 3] &+= 1
                    action = mmio.write(addr, UnsafeRawBufferPointer(start: data, count: len))
                } else {
                    c[ExitReason.count + 2] &+= 1
                    _ = mmio.read(addr, UnsafeMutableRawBufferPointer(start: data, count: len))
                }
            case Int(KVM_EXIT_HLT):
                post(.halted(index))
                return
            case Int(KVM_EXIT_SHUTDOWN):
                // A triple fault resets a PC (Linux's last way to restart). Where it was is worth
                // seeing when a kernel faults like this at every boot.
                eprint("kumo-vmm: vCPU \(index): triple fault\n" + registerDump(vcpu, memory: memory))
                post(.reset(.tripleFault, vcpu: index))
                return
            case Int(KVM_EXIT_SYSTEM_EVENT):
                switch Int32(ckvm_run_system_event_type(run)) {
                case KVM_SYSTEM_EVENT_SHUTDOWN: post(.powerOff)
                case KVM_SYSTEM_EVENT_RESET: post(.reset(.systemEvent, vcpu: index))
                default: post(.fatal("vCPU \(index): system event \(ckvm_run_system_event_type(run)) (guest crash)\n" + registerDump(vcpu, memory: memory)))
                }
                return
            case Int(KVM_EXIT_INTERNAL_ERROR):
                let sub = ckvm_run_internal_suberror(run)
                if sub == UInt32(KVM_INTERNAL_ERROR_EMULATION) && fallbackOn {
                    switch EmulationFallback.handle(vcpu, memory: memory) {
                    case let .handled(kind):
                        let k: Int
                        switch kind {
                        case .int3: k = 0
                        case .fwait: k = 1
                        case .ldmxcsr: k = 2
                        default: k = 3
                        }
                        c[ExitReason.count + ExitCounters.extra + k] &+= 1
                        continue
                    case let .unhandled(msg):
                        post(.fatal(msg + "\n" + registerDump(vcpu, memory: memory)))
                        return
                    }
                }
                var data = ""
                for k in 0..<min(ckvm_run_internal_ndata(run), 16) { data += " 0x" + hex(ckvm_run_internal_data(run, k)) }
                post(.fatal("vCPU \(index): KVM internal error, suberror \(sub), data [\(data) ]\n" + registerDump(vcpu, memory: memory)))
                return
            case Int(KVM_EXIT_FAIL_ENTRY):
                post(.fatal("vCPU \(index): VM entry failed, hardware reason 0x\(hex(ckvm_run_fail_entry_reason(run)))\n" + registerDump(vcpu, memory: memory)))
                return
            case Int(KVM_EXIT_INTR):
                continue
            default:
                post(.fatal("vCPU \(index): unhandled exit reason \(ExitReason.name(reason)) (\(reason))\n" + registerDump(vcpu, memory: memory)))
                return
            }
            switch action {
            case .none: break
            case .bootMarker: post(.bootMarker(monotonicNanos()))
            case .powerOff: post(.powerOff); return
            case let .reset(cause):
                // The vCPU that asked stops here, before it re-enters the guest; `wait` stops the rest.
                post(.reset(cause == .i8042 && atResetVector(vcpu) ? .resetVector : cause, vcpu: index))
                return
            }
        }
    }
}

extension Machine {
    /// True when `vcpu` is running the reset vector's stub (a real-mode restart), not the guest's code.
    func atResetVector(_ vcpu: VCPU) -> Bool {
        guard let r = try? vcpu.getRegs(), let sr = try? vcpu.getSRegs() else { return false }
        return sr.cr0 & 1 == 0 && ResetVector.contains(linear: sr.cs.base &+ r.rip)
    }
}

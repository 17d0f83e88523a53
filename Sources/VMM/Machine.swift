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
        /// A display: its framebuffer (mapped into this VM) and a PS/2 keyboard on the i8042.
        public var display: FramebufferMemory? = nil
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
    /// DSDT entries describing the virtio devices and the keyboard (for the boot loader's ACPI tables).
    public private(set) var acpiDevices: [[UInt8]] = []
    /// The display's framebuffer in this VM, when it has one.
    public private(set) var framebuffer: Framebuffer? = nil
    /// The i8042: the reset line, and a display's keyboard.
    public private(set) var keyboard: I8042! = nil
    var keyboardEvent: EventFD? = nil
    var mouseEvent: EventFD? = nil

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
        if let display = options.display {
            guard options.irqchip else { throw SysError("a display needs the in-kernel irqchip", errno: EINVAL) }
            framebuffer = try Framebuffer(display, vm: vm, slot: UInt32(memory.regions.count))
            let ev = try EventFD(), aux = try EventFD()
            try vm.registerIRQFD(ev, gsi: Layout.keyboardIRQ)
            try vm.registerIRQFD(aux, gsi: Layout.mouseIRQ)
            keyboardEvent = ev
            mouseEvent = aux
            keyboard = I8042(keyboard: InterruptLine { ev.signal() }, mouse: InterruptLine { aux.signal() })
            acpiDevices.append(AML.ps2Keyboard())
            acpiDevices.append(AML.ps2Mouse())
        } else {
            keyboard = I8042()
        }
        try pio.insert(keyboard, base: 0x60, length: 5)
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
}

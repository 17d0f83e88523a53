import VMMContract
import KVM
import SystemKit
import Boot
import Devices
import Virtio
import GuestMemory
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Writes a line to stderr.
public func eprint(_ s: String) {
    let line = Array((s + "\n").utf8)
    line.withUnsafeBytes { b in
        var off = 0
        while off < b.count {
            let n = write(2, b.baseAddress! + off, b.count - off)
            if n <= 0 { if n < 0 && errno == EINTR { continue }; return }
            off += n
        }
    }
}

nonisolated(unsafe) var signalWakeFD: Int32 = -1
nonisolated(unsafe) var sampleWakeFD: Int32 = -1

/// A fully checked VM description: files read and parsed, template resolved. Creating one touches no VM.
public struct VMPlan: Sendable {
    public var config: VMConfig
    public var kernel: KernelImage
    public var initrd: [UInt8]?
    public var cmdline: String
    public var template: CPUTemplate
    public var host: HostKVM
    public var bootProtocol: BootProtocol
    /// Taps, opened once (before any VM) and kept across guest resets; MACs fixed for the VM's life.
    public var taps: [(tap: Tap, mac: [UInt8])] = []
    /// vCPU pinning for the VM's life (config first, then the control socket's vcpu.pin).
    public let affinity: VCPUAffinity
    /// Disks, opened once (before the jail, which could not open them again) and kept across guest resets.
    public var disks: [DiskFile] = []
    /// The vsock device's host socket when made before the boots (`runVMM`, for the jail); nil: each boot's makes it.
    public var vsockListener: OwnedFD? = nil

    public init(_ config: VMConfig, host: HostKVM = .detect(), hostMemory: UInt64 = hostMemoryBytes()) throws(ConfigError) {
        try config.validate(hostMemoryBytes: hostMemory)
        self.config = config
        affinity = VCPUAffinity(
            (0..<config.vcpus).map { i in
                guard i < config.vcpuAffinity.count, let s = config.vcpuAffinity[i], case let .success(c) = CPUList.parse(s) else { return nil }
                return c
            })
        self.host = host
        kernel = try BootInputs.kernel(config.kernel)
        if let path = config.initrd { initrd = try BootInputs.initrd(path) }
        for (i, d) in config.disks.enumerated() {
            if d.format == .raw { try BootInputs.disk(d.path, readOnly: d.readOnly) }
            do { disks.append(try DiskFile(path: d.path, readOnly: d.readOnly, format: d.format)) } catch {
                throw .invalid("disks[\(i)]", error.description)
            }
        }
        switch config.cpuTemplate {
        case .auto: template = host.emulatesGuestKernel ? .nested : .none
        case .none: template = .none
        case .nested: template = .nested
        }
        var cmd = config.cmdline
        for p in template.kernelParameters {
            let key = p.split(separator: "=").first.map(String.init) ?? p
            let present = cmd.split(separator: " ").contains { $0 == key || $0.hasPrefix(key + "=") }
            if !present { cmd += (cmd.isEmpty ? "" : " ") + p }
        }
        cmdline = cmd
        for (i, n) in config.nets.enumerated() {
            do { taps.append((try Tap(name: n.tap), n.mac ?? MAC.random())) } catch {
                throw .invalid("nets[\(i)]", error.description)
            }
        }
        do {
            // A display is described in screen_info, which only the 64-bit protocol carries.
            bootProtocol = config.display != nil ? .linux64 : try kernel.resolve(config.bootProtocol)
        } catch { throw .file(config.kernel, error.description) }
        do {
            var s = spec
            if template.tellsTSCFrequency { s.cmdline += " tsc_early_khz=4294967295" }  // room for it
            try BootLoader.check(s)
        } catch { throw .invalid("boot", error.description) }
    }

    public var spec: BootSpec {
        BootSpec(
            kernel: kernel, initrd: initrd, cmdline: cmdline, memorySize: UInt64(config.memoryMiB) << 20,
            vcpus: config.vcpus, bootProtocol: bootProtocol, display: config.display.map { FramebufferMemory.mode(width: $0.width, height: $0.height) })
    }

    /// Fresh device models for one boot, on the plan's open disks and taps (a guest reset gets new models).
    public func makeDevices() throws -> [VirtioDevice] {
        var out: [VirtioDevice] = []
        for (d, file) in zip(config.disks, disks) {
            let b = VirtioBlock(file, serial: d.serial)
            b.limiter = d.rateLimit?.make()
            out.append(b)
        }
        for (i, t) in taps.enumerated() {
            let dev = VirtioNet(tap: t.tap, mac: t.mac)
            dev.rxLimiter = config.nets[i].rxRateLimit?.make()
            dev.txLimiter = config.nets[i].txRateLimit?.make()
            out.append(dev)
        }
        if let b = config.balloon { out.append(VirtioBalloon(deflateOnOOM: b.deflateOnOOM, freePageReporting: b.freePageReporting)) }
        if let r = config.rng {
            let dev = VirtioRng()
            dev.limiter = r.rateLimit?.make()
            out.append(dev)
        }
        if let v = config.vsock {
            out.append(try vsockListener.map { try VirtioVsock(guestCID: v.cid, path: v.path, listener: $0) } ?? VirtioVsock(guestCID: v.cid, path: v.path))
        }
        return out
    }

    public var machineOptions: Machine.Options {
        var o = Machine.Options(memorySize: UInt64(config.memoryMiB) << 20, vcpus: config.vcpus)
        o.cpuid = template.modifiers + config.cpuid
        o.affinity = affinity
        o.memoryDedup = config.memoryDedup
        return o
    }
}

/// Builds a machine from a plan and boots it: memory, boot structures, vCPU state.
public func bootMachine(_ plan: VMPlan, kvm: KVMSystem, sink: SerialSink?, display: FramebufferMemory? = nil) throws -> (Machine, BootResult) {
    var options = plan.machineOptions
    options.display = display
    let m = try Machine(options, kvm: kvm, serialSink: sink, virtio: try plan.makeDevices())
    var spec = plan.spec
    spec.display = display?.mode
    if plan.template.tellsTSCFrequency, !spec.cmdline.contains("tsc_early_khz=") {
        // The guest cannot calibrate its TSC against the PIT when its kernel code is emulated
        // (the calibration loops run far too slowly), so it is told the frequency KVM gives it.
        spec.cmdline += " tsc_early_khz=\(try m.vcpus[0].tscKHz())"
    }
    let result = try BootLoader.load(spec, into: m.memory, acpi: ACPIConfig(vcpus: plan.config.vcpus, devices: m.acpiDevices))
    try m.setBootState(result.cpu, vcpu: 0)
    return (m, result)
}

/// `kumo-vmm`'s whole life: run the VM (restarting it on guest reset) until power-off, a fatal
/// error or SIGTERM/SIGINT. Returns the process exit status.
public func runVMM(_ plan: VMPlan, startNanos: UInt64) -> Int32 {
    var plan = plan
    // First everything opened or made by path (the plan's files and taps, /dev/kvm, the console log, the
    // sockets), then the jail (which shows none of the host's files), then the threads.
    let kvm: KVMSystem
    do { kvm = try KVMSystem() } catch {
        eprint("kumo-vmm: \(error)")
        return 1
    }
    let console: Console
    do { console = try Console(plan.config.serial, socket: plan.config.serialSocket) } catch {
        eprint("kumo-vmm: serial: \(error)")
        return 1
    }
    defer { console.close() }
    if let v = plan.config.vsock {
        do { plan.vsockListener = try VirtioVsock.listen(v.path) } catch {
            eprint("kumo-vmm: vsock: \(error)")
            return 1
        }
    }
    // SIGTERM/SIGINT: wake the main loop through an eventfd (write is async-signal-safe).
    guard let sigEvent = try? EventFD() else { eprint("kumo-vmm: eventfd failed"); return 1 }
    signalWakeFD = sigEvent.fd.raw
    // A parent may have spawned us with signals blocked (the mask is inherited): unblock the ones
    // kumo-vmm acts on, in this thread and so in every vCPU thread created after.
    var unblock = sigset_t()
    sigemptyset(&unblock)
    for s in [SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2] { sigaddset(&unblock, s) }
    pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
    for s in [SIGTERM, SIGINT, SIGHUP] {
        signal(s) { _ in
            var one: UInt64 = 1; _ = write(signalWakeFD, &one, 8)
        }
    }
    signal(SIGPIPE, SIG_IGN)
    // SIGUSR2: every vCPU prints its RIP (a poor man's profiler for slow guests).
    guard let sampleEvent = try? EventFD() else { eprint("kumo-vmm: eventfd failed"); return 1 }
    sampleWakeFD = sampleEvent.fd.raw
    signal(SIGUSR2) { _ in
        var one: UInt64 = 1; _ = write(sampleWakeFD, &one, 8)
    }

    eprint(
        "kumo-vmm: \(plan.config.vcpus) vCPU, \(plan.config.memoryMiB) MiB, \(plan.kernel.format == .elf ? "ELF" : "bzImage") via "
            + "\(plan.bootProtocol.rawValue), host \(plan.host.summary), CPU template \(plan.template.rawValue)"
    )
    var boots = 0
    var totals = [UInt64](repeating: 0, count: ExitCounters.size)
    var perVCPU: [[UInt64]] = Array(repeating: [UInt64](repeating: 0, count: ExitCounters.size), count: plan.config.vcpus)
    var status: Int32 = 0
    var deviceStats: [String] = []
    let control = ControlState(
        memoryBytes: UInt64(plan.config.memoryMiB) << 20, vcpus: plan.config.vcpus, affinity: plan.affinity,
        balloonTargetMiB: plan.config.balloon?.targetMiB ?? 0)
    var server: ControlServer? = nil
    if let path = plan.config.apiSocket {
        do { server = try ControlServer(path: path) { [control] in control.handle($0) } } catch {
            eprint("kumo-vmm: api socket: \(error)")
            return 1
        }
    }
    defer { server?.shutdown() }
    // The display: its memory and its VNC server live as long as the VMM (the picture and the viewers
    // outlive a guest reboot); each boot maps the memory and brings a keyboard.
    var display: FramebufferMemory? = nil
    var vnc: VNCServer? = nil
    if let d = plan.config.display {
        do {
            display = try FramebufferMemory(width: d.width, height: d.height)
            if let path = d.vncSocket { vnc = try VNCServer(path: path, memory: display!, name: "kumo-vmm") }
        } catch {
            eprint("kumo-vmm: display: \(error)")
            return 1
        }
        eprint("kumo-vmm: display \(d.width)x\(d.height) at 0x\(String(Layout.framebuffer, radix: 16))" + (d.vncSocket.map { ", VNC on \($0)" } ?? ""))
    }
    defer { vnc?.stop() }
    if let j = plan.config.jail {
        do { try Jail.enter(j, plan: plan) } catch {
            eprint("kumo-vmm: \(error)")
            return 1
        }
        eprint("kumo-vmm: jailed: uid \(j.uid) gid \(j.gid), no capabilities, an empty root")
    }
    console.start()
    do {
        try server?.start()
        try vnc?.start()
    } catch {
        eprint("kumo-vmm: \(error)")
        return 1
    }
    while true {
        boots += 1
        let machine: Machine
        do { (machine, _) = try bootMachine(plan, kvm: kvm, sink: console.sink, display: display) } catch {
            eprint("kumo-vmm: cannot start the VM: \(error)")
            return 1
        }
        console.attach(machine.serial)
        control.attach(machine)
        vnc?.attach(machine)
        do {
            try machine.start()
            // The main thread's own filter, once the first boot's threads run theirs (docs/SANDBOX.md).
            if boots == 1 { try Sandbox.install("main") }
        } catch {
            eprint("kumo-vmm: \(error)")
            return 1
        }
        let outcome = machine.wait(extraFD: sigEvent.fd.raw, sampleFD: sampleEvent.fd.raw) { t in
            let first = machine.firstRunNanos.load(ordering: .acquiring)
            eprint("kumo-vmm: boot marker: \(ms(t &- startNanos)) ms from process start, \(ms(t &- first)) ms from first KVM_RUN")
        }
        console.attach(nil)
        control.attach(nil)
        vnc?.attach(nil)
        if boots == 1 {
            let cpu = machine.firstRunCPUNanos.load(ordering: .relaxed)
            if plan.config.stats { eprint("kumo-vmm: CPU time to first KVM_RUN: \(ms(cpu)) ms") }
        }
        deviceStats = machine.virtio.enumerated().map { (i, t) in
            "  virtio-\(t.device.type)\(i): " + t.device.statistics
        }
        for (i, c) in machine.counters.enumerated() {
            for k in 0..<ExitCounters.size { perVCPU[i][k] &+= c.value(k); totals[k] &+= c.value(k) }
        }
        switch outcome {
        case let .reset(cause, v) where plan.config.onReboot == .restart:
            eprint("kumo-vmm: guest reset (\(cause.summary), vCPU \(v)); restarting it")
            control.recordReset(cause.rawValue)
            continue
        case let .reset(cause, v):
            eprint("kumo-vmm: guest reset (\(cause.summary), vCPU \(v)); exiting (on_reboot exit)")
            eprint("kumo-vmm: reboot cause: \(cause.rawValue)")
            status = exitStatusReboot
        case .powerOff:
            eprint("kumo-vmm: guest powered off")
            status = 0
        case .stopped:
            eprint("kumo-vmm: stopped by signal")
            status = 0
        case let .halted(v):
            eprint("kumo-vmm: vCPU \(v) halted with no interrupt controller to wake it")
            status = 0
        case let .fatal(msg):
            eprint("kumo-vmm: fatal: \(msg)")
            status = 1
        }
        break
    }
    if plan.config.stats {
        eprint(formatStats(perVCPU))
        if !deviceStats.isEmpty { eprint("kumo-vmm: virtio devices (last boot)\n" + deviceStats.joined(separator: "\n")) }
    }
    return status
}

/// kumo-vmm's exit status when the guest asked for a restart and `on_reboot` is `exit`.
public let exitStatusReboot: Int32 = 3

func ms(_ ns: UInt64) -> String {
    let tenths = ns / 100_000
    return "\(tenths / 10).\(tenths % 10)"
}

/// Per-vCPU exit counts by reason, one line per vCPU.
public func formatStats(_ perVCPU: [[UInt64]]) -> String {
    var lines = ["kumo-vmm: exits by reason"]
    for (i, c) in perVCPU.enumerated() {
        var parts: [String] = []
        for r in 0..<ExitReason.count where c[r] > 0 { parts.append("\(ExitReason.name(r))=\(c[r])") }
        let b = ExitReason.count
        parts.append("io_in=\(c[b]) io_out=\(c[b + 1]) mmio_read=\(c[b + 2]) mmio_write=\(c[b + 3])")
        let f = b + ExitCounters.extra
        if c[f] + c[f + 1] + c[f + 2] + c[f + 3] > 0 {
            parts.append("emulated: int3=\(c[f]) fwait=\(c[f + 1]) ldmxcsr=\(c[f + 2]) stmxcsr=\(c[f + 3])")
        }
        lines.append("  vcpu\(i): " + parts.joined(separator: " "))
    }
    return lines.joined(separator: "\n")
}

/// Writes each ACPI table a VM with `vcpus` vCPUs gets to DIR/SIG.dat.
public func dumpACPITables(to dir: String, vcpus: Int) throws(FileError) {
    for blob in ACPITables.build(ACPIConfig(vcpus: vcpus)).blobs {
        let sig = String(decoding: blob.bytes[0..<4], as: UTF8.self).replacingSpaces
        let path = dir + "/" + sig + ".dat"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FileError(description: "\(path): \(String(cString: strerror(errno)))") }
        _ = blob.bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
}

extension String {
    var replacingSpaces: String { String(map { $0 == " " ? "_" : $0 }) }
}

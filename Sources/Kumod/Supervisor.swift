// Supervision: spawning kumo-vmm, stop timeouts, reaping, re-attaching after a kumod restart, the
// monitor. It runs on the supervisor queue, never on Swift concurrency's cooperative pool.
import Foundation
import KumoAPI
import GRDB
import Synchronization
import HostCPUs
import VMMContract

extension Service {
    // MARK: supervision

    func startLaunch(_ id: String) {
        supervisor.async { [self] in self.launch(id) }
    }

    /// pending/starting → starting → (VMM spawned) → running, or error with the reason. What takes long
    /// (the root disk's copy) runs first on the preparation queue, so that one instance's launch never
    /// holds up the others' or the monitor's noticing a dead VMM.
    func launch(_ id: String, prepared: Bool = false) {
        guard !closing.load(ordering: .sequentiallyConsistent) else { return }
        guard let rec = try? store.instance(id), [.pending, .starting].contains(rec.instance.state) else { return }
        guard let image = try? store.image(rec.imageID) else {
            _ = try? store.transition(id, to: .error, reason: "image \(rec.imageID) is gone")
            return
        }
        if !prepared { _ = try? store.transition(id, to: .starting, reason: "launching kumo-vmm", from: [.pending, .starting]) }
        var spec = LaunchSpec(
            instanceID: id, workDir: URL(fileURLWithPath: rec.workDir), vcpus: rec.instance.vcpus,
            memoryMiB: rec.instance.memoryMiB, image: image, affinity: cpuPlan(rec))
        if let t = try? store.type(rec.instance.type) {
            spec.cpuCapPercent = t.cpuCapPercent; spec.cpuShares = t.cpuShares
            spec.bandwidthMbps = t.bandwidthMbps; spec.packetsPerSecond = t.packetsPerSecond
        }
        let nics = (try? store.nics(instance: id)) ?? []
        spec.nics = nics.map { .init(tap: $0.tap, mac: $0.mac, address: $0.address, gateway: $0.gateway, prefix: $0.cidr.prefix) }
        spec.display = rec.instance.display.flatMap(DisplaySize.parse)
        spec.seed = NoCloudSeed(
            instanceID: id, name: rec.instance.name, userData: rec.userData, nics: spec.nics, publicKeys: rec.publicKey.map { [$0] } ?? [])
        if !prepared {
            let prepSpec = spec
            preparation.async { [self] in
                guard !closing.load(ordering: .sequentiallyConsistent) else { return }
                do {
                    try ensureTaps(nics)
                    try launcher.prepare(prepSpec)
                } catch {
                    _ = try? store.transition(id, to: .error, reason: "preparing the instance: \(error)", from: [.starting])
                    return
                }
                supervisor.async { [self] in launch(id, prepared: true) }
            }
            return
        }
        var note = ""
        if rec.instance.memoryDedup == true {
            spec.memoryDedup = ksm.admit(id, tenant: rec.tenantID)
            if !spec.memoryDedup { note = "; memory dedup suspended: another tenant's instances hold this host's KSM domain" }
        }
        do {
            let p: VMMProcess
            // Checked again on the supervisor queue, which `shutdown` drains after setting it.
            guard !closing.load(ordering: .sequentiallyConsistent) else { return }
            do { p = try launcher.launch(spec) } catch { ksm.remove(id); throw error }
            processes.withLock { $0[id] = p }
            // Recorded at once (not at running): a kumod killed from here on re-attaches this VMM.
            try? store.recordVMM(id, pid: Int(p.pid), startTicks: p.startTicks)
            if spec.memoryDedup { ksm.tune() }
            if rec.instance.cpuPolicy == "dedicated" { rebalanceShared() }
            let moved =
                (try? store.transition(
                    id, to: .running, reason: "kumo-vmm \(p.pid) started" + note, from: [.starting],
                    pid: .some((Int(p.pid), p.startTicks)))) ?? false
            if !moved {
                // Stopped or deleted while the VMM was being spawned (the request found no process to
                // signal): this VMM must not outlive the decision.
                switch (try? store.instance(id))?.instance.state {
                case .stopping?:
                    _ = try? store.transition(id, to: .stopping, reason: "stopped while starting", from: [.stopping], pid: .some((Int(p.pid), p.startTicks)))
                    requestStop(id, force: false)
                default:
                    endVMM(id, p)
                }
            }
        } catch {
            _ = try? store.transition(id, to: .error, reason: "\(error)", from: [.starting])
        }
    }

    /// Stop: the ACPI power button first; a guest that has not powered off after `stopTimeout` (or a
    /// VMM that did not take the button) is stopped by force: SIGTERM (kumo-vmm tears the VM down),
    /// then SIGKILL if kumo-vmm is still there 5 s later. `force` skips straight to SIGKILL.
    func requestStop(_ id: String, force: Bool) {
        guard let p = processes.withLock({ $0[id] }) else {
            // No VMM (still pending, or its process is gone): stopped at once.
            _ = try? store.transition(id, to: .stopped, reason: "stopped before its VMM started", from: [.stopping], pid: .some(nil))
            return
        }
        if force {
            stopNotes.withLock { $0[id] = "forced" }
            launcher.signal(p, SIGKILL)
            return
        }
        supervisor.async { [self] in
            guard let workDir = (try? store.instance(id)).map({ URL(fileURLWithPath: $0.workDir) }) else { return }
            let seconds = stopTimeout.seconds
            @Sendable func forceNow(_ note: String) {
                guard processes.withLock({ $0[id] }) == p, launcher.exitStatus(p) == nil else { return }
                stopNotes.withLock { $0[id] = note }
                launcher.signal(p, SIGTERM)
                supervisor.asyncAfter(deadline: .now() + 5) { [self] in
                    if processes.withLock({ $0[id] }) == p, launcher.exitStatus(p) == nil { launcher.signal(p, SIGKILL) }
                }
            }
            if (try? launcher.handle(workDir: workDir).pressPowerButton()) != nil {
                stopNotes.withLock { $0[id] = "ACPI power button pressed" }
                supervisor.asyncAfter(deadline: .now() + seconds) {
                    forceNow("the guest did not power off within \(Self.format(seconds)) of the ACPI power button; stopped by force")
                }
            } else {
                forceNow("the VMM did not take the ACPI power button; stopped by force")
            }
        }
    }

    static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? "\(Int(seconds)) s" : String(format: "%.1f s", seconds)
    }

    /// Ends the instance's VMM `p` for good: SIGKILL, up to 2 s for it to go, then what was set up for it
    /// goes too.
    func endVMM(_ id: String, _ p: VMMProcess) {
        processes.withLock { if $0[id] == p { $0.removeValue(forKey: id) } }
        launcher.signal(p, SIGKILL)
        for _ in 0..<200 where launcher.exitStatus(p) == nil { usleep(10_000) }
        released(id)
    }

    /// The instance's VMM is gone: its cgroup and its KSM standing are released.
    func released(_ id: String) {
        launcher.release(instanceID: id)
        ksm.remove(id)
    }

    /// One pass of the monitor: every live VMM whose process is gone moves its instance on.
    public func reap() {
        let live = processes.withLock { $0 }
        for (id, p) in live {
            guard let fate = launcher.exitStatus(p) else { continue }
            processes.withLock { if $0[id] == p { $0.removeValue(forKey: id) } }
            released(id)
            if (try? store.instance(id))?.instance.cpuPolicy == "dedicated" { supervisor.async { [self] in rebalanceShared() } }
            let rec = try? store.instance(id)
            let state = rec?.instance.state
            let tail = Self.vmmLogTail(rec?.workDir)
            let why: String
            var clean = false  // the guest powered off (or kumo-vmm was stopped): not an error
            var rebooted = false
            switch fate {
            case .exited(0):
                clean = true
                why = "kumo-vmm \(p.pid) exited: guest powered off or stopped"
            case .exited(vmmExitGuestRebooted):
                rebooted = true
                why = "kumo-vmm \(p.pid) exited: the guest rebooted"
            case let .exited(c): why = "kumo-vmm \(p.pid) exited with status \(c) (see vmm.log in the instance's work directory)"
            case .killed(SIGSYS):
                // Its seccomp filter stopped a call (docs/SANDBOX.md): the VMM said which, unless it could not
                // (a call made with every signal blocked is killed outright).
                let said = tail.split(separator: "\n").last { $0.hasPrefix("kumo-vmm: seccomp: syscall ") }
                why =
                    (said.map { String($0.dropFirst("kumo-vmm: ".count)) } ?? "seccomp: a system call outside its thread's list (unnamed)")
                    + " (kumo-vmm \(p.pid) killed by SIGSYS)"
            case let .killed(s): why = "kumo-vmm \(p.pid) killed by signal \(s)"
            case .vanished:
                // Not kumod's child (adopted after a restart): its log says how it ended, if it does.
                clean = tail.contains("kumo-vmm: guest powered off")
                rebooted = Reboots.logSaysRebooted(tail)
                why =
                    clean
                    ? "kumo-vmm \(p.pid) exited: guest powered off (from its log; it outlived a kumod restart)"
                    : rebooted
                        ? "kumo-vmm \(p.pid) exited: the guest rebooted (from its log; it outlived a kumod restart)"
                        : "kumo-vmm \(p.pid) is gone (exit status unknown: it outlived a kumod restart)"
            }
            if rebooted && (state == .running || state == .starting) {
                guestRebooted(id, vmm: p.pid, logTail: tail)
                continue
            }
            switch state {
            case .stopping?:
                let note = stopNotes.withLock { $0.removeValue(forKey: id) }
                _ = try? store.transition(id, to: .stopped, reason: "StopInstances: " + (note.map { $0 + "; " } ?? "") + why, pid: .some(nil))
            case .running?, .starting?:
                _ = try? store.transition(id, to: clean ? .stopped : .error, reason: why, pid: .some(nil))
            default: break
            }
        }
    }

    /// What the last kumo-vmm run wrote to the instance's vmm.log (appended across runs; each run
    /// begins with its "kumo-vmm: N vCPU, …" banner), from the last 16 KiB: how it ended, when it says.
    static func vmmLogTail(_ workDir: String?) -> String {
        guard let workDir, let h = FileHandle(forReadingAtPath: workDir + "/vmm.log") else { return "" }
        defer { try? h.close() }
        let end = (try? h.seekToEnd()) ?? 0
        try? h.seek(toOffset: end > 16384 ? end - 16384 : 0)
        return lastRun(String(decoding: (try? h.readToEnd()) ?? Data(), as: UTF8.self))
    }

    /// The lines of `log` from the last kumo-vmm start banner on (all of it when none is seen).
    static func lastRun(_ log: String) -> String {
        let lines = log.split(separator: "\n", omittingEmptySubsequences: false)
        guard let start = lines.lastIndex(where: { $0.wholeMatch(of: #/kumo-vmm: \d+ vCPU, .*/#) != nil }) else { return log }
        return lines[start...].joined(separator: "\n")
    }

    /// After a (re)start of kumod: adopt the VMMs that still run, settle the instances whose VMM is
    /// gone, and launch the ones that were pending. Returns the instances adopted.
    @discardableResult
    public func recover() throws(APIError) -> [String] {
        var f = Store.Filter()
        f.states = [.pending, .starting, .running, .stopping]
        let recs = try wrap { try store.instances(f, limit: 1_000_000).0 }
        var adopted: [String] = [], toLaunch: [String] = []
        for rec in recs {
            let id = rec.instance.id
            if let pid = rec.instance.pid, let ticks = rec.pidStartTicks {
                let p = VMMProcess(pid: Int32(pid), startTicks: ticks)
                if launcher.exitStatus(p) == nil {
                    processes.withLock { $0[id] = p }
                    adopted.append(id)
                    // Its KSM standing is what its VMM was started with.
                    if (try? VMConfig.load(jsonFile: URL(fileURLWithPath: rec.workDir).appendingPathComponent("config.json").path))?.memoryDedup == true {
                        _ = ksm.admit(id, tenant: rec.tenantID)
                    }
                    if rec.instance.state == .stopping { requestStop(id, force: false) }
                    // Spawned, but kumod died before it saw the VMM up: it is up.
                    if rec.instance.state == .starting {
                        _ = try? store.transition(id, to: .running, reason: "kumo-vmm \(pid) re-attached after a kumod restart", from: [.starting])
                    }
                    continue
                }
                let to: InstanceState = rec.instance.state == .stopping ? .stopped : .error
                _ = try? store.transition(id, to: to, reason: "kumo-vmm \(pid) exited while kumod was down", pid: .some(nil))
                released(id)
            } else if rec.instance.state == .stopping {
                _ = try? store.transition(id, to: .stopped, reason: "stopped while kumod was down", pid: .some(nil))
                released(id)
            } else {
                toLaunch.append(id)
            }
        }
        // Before anything is launched again: VMMs under this data directory that no instance records (a
        // kumod killed mid-launch left them, or their instance was deleted meanwhile) are ended.
        let known = processes.withLock { $0 }
        for (id, p) in Orphans.vmms(under: dataDir.appendingPathComponent("instances").path) where known[id] != p {
            FileHandle.standardError.write(
                Data("kumod: ending kumo-vmm \(p.pid) of instance \(id): not the VMM kumod recorded for it (left by a kumod that died)\n".utf8))
            p.end()
        }
        for id in toLaunch { startLaunch(id) }
        return adopted
    }

    /// Starts the monitor (every `interval`).
    public func startMonitor(interval: Duration = .milliseconds(250)) {
        let (s, atto) = interval.components
        let seconds = max(Double(s) + Double(atto) / 1e18, 0.001)
        let generation = monitorGeneration.add(1, ordering: .sequentiallyConsistent).newValue
        let tuneEvery = max(1, Int(5 / seconds))
        let dnsmasqEvery = max(1, Int(1 / seconds))
        let ticks = Atomic<Int>(0)
        @Sendable func tick(_ service: Service?) {
            guard let service, service.monitorGeneration.load(ordering: .sequentiallyConsistent) == generation else { return }
            service.reap()
            let n = ticks.add(1, ordering: .relaxed).newValue
            if n % tuneEvery == 0 { service.ksm.tune() }
            // Beside the supervisor, not on it: restarting a dnsmasq waits for any network change in progress.
            if n % dnsmasqEvery == 0 { service.preparation.async { [weak service] in service?.superviseDnsmasq() } }
            service.supervisor.asyncAfter(deadline: .now() + seconds) { [weak service] in tick(service) }
        }
        supervisor.async { [weak self] in tick(self) }
        startBalloonLoop()
    }

    public func stopMonitor() { monitorGeneration.add(1, ordering: .sequentiallyConsistent) }
}

extension Duration {
    var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}

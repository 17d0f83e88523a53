// Starting and watching kumo-vmm processes. Each instance is its own kumo-vmm in its own session
// (so that kumod can die and come back without taking VMs with it), with a work directory holding
// its config, console log, VMM log and control socket.
import DiskImage
import Foundation
import KumoAPI
import SystemKit
import VMMContract

/// What a VMM needs to boot an instance.
public struct LaunchSpec: Sendable {
    public var instanceID: String
    public var workDir: URL
    public var vcpus: Int
    public var memoryMiB: Int
    public var image: Image
    /// Per-vCPU pinning (host CPU lists or nil).
    public var affinity: [String?]
    /// The instance type's CPU cap (percent of a host CPU per vCPU) and shares, applied through cgroups.
    public var cpuCapPercent: Int? = nil
    public var cpuShares: Int? = nil
    /// Guest RAM offered to KSM (kumo-vmm's memory_dedup).
    public var memoryDedup = false
    /// Its NICs, eth0 first: each a virtio-net device on its tap.
    public var nics: [NICSpec] = []
    /// The instance type's NIC limits (Mbit/s and packets/s, each way), nil: none.
    public var bandwidthMbps: Int? = nil
    public var packetsPerSecond: Int? = nil
    /// Its cloud-init NoCloud seed (`seed.iso`, a read-only disk after the root disk); nil: none.
    public var seed: NoCloudSeed? = nil
    /// Its screen, when it has one: a framebuffer and keyboard, served over VNC on `vncSocket`.
    public var display: (width: Int, height: Int)? = nil
    public struct NICSpec: Sendable, Equatable {
        public var tap: String
        public var mac: String
        public var address: IPv4Address
        public var gateway: IPv4Address
        public var prefix: Int
        public init(tap: String, mac: String, address: IPv4Address, gateway: IPv4Address, prefix: Int) {
            self.tap = tap; self.mac = mac; self.address = address; self.gateway = gateway; self.prefix = prefix
        }
    }
    public init(instanceID: String, workDir: URL, vcpus: Int, memoryMiB: Int, image: Image, affinity: [String?] = []) {
        self.instanceID = instanceID; self.workDir = workDir; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.image = image
        self.affinity = affinity
    }

    public var configPath: URL { workDir.appendingPathComponent("config.json") }
    public var controlSocket: URL { workDir.appendingPathComponent("control.sock") }
    public var consoleLog: URL { workDir.appendingPathComponent("console.log") }
    /// The live console (one client at a time): what `kumo console` reaches through kumod's WebSocket.
    public var consoleSocket: URL { workDir.appendingPathComponent("console.sock") }
    public var vmmLog: URL { workDir.appendingPathComponent("vmm.log") }
    public var seedImage: URL { workDir.appendingPathComponent("seed.iso") }
    /// The screen over VNC (docs/DISPLAY.md): kumod bridges a browser's WebSocket to it.
    public var vncSocket: URL { workDir.appendingPathComponent("vnc.sock") }
    /// kumo-vmm's vsock socket: run-command reaches the guest agent through it (docs/RUNCOMMAND.md).
    public var vsockSocket: URL { workDir.appendingPathComponent("v.sock") }
    /// The console log of the boot before the last guest reboot (kumo-vmm starts console.log afresh).
    public var previousConsoleLog: URL { workDir.appendingPathComponent("console.log.1") }
}

/// A running VMM process: its pid and its start time in clock ticks since boot (field 22 of
/// /proc/PID/stat), which together name it even after the pid number is reused.
public struct VMMProcess: Sendable, Equatable {
    public var pid: Int32
    public var startTicks: UInt64
    public init(pid: Int32, startTicks: UInt64) { self.pid = pid; self.startTicks = startTicks }

    /// SIGKILL, then up to 2 s for the process to be gone: reaped when it is kumod's child, watched in
    /// /proc when it is not (an orphaned VMM, a dnsmasq a previous kumod left). Never another process
    /// that took the pid since.
    public func end() {
        guard ProcessLauncher.startTicks(pid) == startTicks else { return }
        kill(pid, SIGKILL)
        var st: Int32 = 0
        for _ in 0..<200 {
            _ = waitpid(pid, &st, WNOHANG)
            if ProcessLauncher.startTicks(pid) != startTicks || ProcessLauncher.state(pid) == "Z" { return }
            usleep(10_000)
        }
    }
}

/// The protocol in front of the VMM: placement and API logic drive it; the real implementation
/// spawns kumo-vmm.
public protocol VMMLauncher: Sendable {
    /// What may take long before a launch (the root disk's copy): kumod runs it off the supervisor queue.
    func prepare(_ spec: LaunchSpec) throws
    func launch(_ spec: LaunchSpec) throws -> VMMProcess
    /// nil while the process runs; its fate once it is gone.
    func exitStatus(_ p: VMMProcess) -> ExitFate?
    func signal(_ p: VMMProcess, _ sig: Int32)
    /// The running VMM of the instance with this work directory: every operation kumod performs on it.
    func handle(workDir: URL) -> any VMMHandle
    /// The instance's VMM is gone: release what was set up for it (its cgroup).
    func release(instanceID: String)
}

extension VMMLauncher {
    public func release(instanceID: String) {}
    public func prepare(_ spec: LaunchSpec) throws {}
}

/// kumo-vmm's exit status when its guest asked to restart (`on_reboot: exit`; kumo-vmm --help).
public let vmmExitGuestRebooted: Int32 = 3

public enum ExitFate: Sendable, Equatable {
    /// A child of this kumod: the status waitpid gave.
    case exited(Int32)
    case killed(Int32)
    /// Gone while kumod was not its parent (kumod restarted): status unknown.
    case vanished
}

public struct ProcessLauncher: VMMLauncher {
    public let vmmPath: String
    /// Where CPU caps and shares go (nil: the host has no usable cpu cgroup hierarchy).
    public let cgroups: CPUCgroups?
    /// The VMMs' seccomp mode (docs/SANDBOX.md); kumod's --vmm-seccomp.
    public var seccomp: SeccompMode = .enforce
    /// The ids the VMMs' jails take theirs from; nil: no jail (kumod --no-jail, docs/SANDBOX.md).
    public var jail: JailIDs?
    public init(vmmPath: String, cgroups: CPUCgroups? = CPUCgroups.detect(), seccomp: SeccompMode = .enforce, jail: JailIDs? = .standard) {
        self.vmmPath = vmmPath; self.cgroups = cgroups; self.seccomp = seccomp; self.jail = jail
    }

    public func release(instanceID: String) { cgroups?.release(instanceID: instanceID) }

    /// The one network namespace every jailed VMM of this kumod joins (docs/SANDBOX.md): empty, so no
    /// abstract Unix socket of the host's is reachable from a VMM. Made on the first launch, once (joining
    /// one costs the VMM ~10 µs; making one for each would cost it ~5 ms of CPU time).
    static let jailNetworkNamespace: Result<Int32, SysError> = Result { () throws(SysError) in try Namespaces.makeEmptyNetwork() }

    /// The kumo-vmm configuration for `spec` (the contract's VMConfig, written as `kumo-vmm --config` reads it).
    public static func config(_ spec: LaunchSpec) -> VMConfig {
        var c = VMConfig()
        c.kernel = spec.image.kernel
        c.initrd = spec.image.initrd
        c.cmdline = spec.image.cmdline
        c.memoryMiB = spec.memoryMiB
        c.vcpus = spec.vcpus
        c.serial = .file(spec.consoleLog.path)
        c.serialSocket = spec.consoleSocket.path
        c.apiSocket = spec.controlSocket.path
        c.balloon = BalloonConfig()
        c.vsock = VsockConfig(cid: 3, path: spec.vsockSocket.path)
        if let d = spec.display { c.display = DisplayConfig(width: d.width, height: d.height, vncSocket: spec.vncSocket.path) }
        c.memoryDedup = spec.memoryDedup
        if spec.affinity.contains(where: { $0 != nil }) { c.vcpuAffinity = Array(spec.affinity.prefix(spec.vcpus)) }
        if let root = Self.rootDisk(spec) { c.disks = [root] }
        if spec.seed != nil { c.disks.append(DiskConfig(path: spec.seedImage.path, readOnly: true, serial: "cidata")) }
        c.nets = spec.nics.map { NetConfig(tap: $0.tap, mac: MAC.parse($0.mac)) }
        if let limit = nicRateLimit(mbps: spec.bandwidthMbps, pps: spec.packetsPerSecond) {
            for i in c.nets.indices { c.nets[i].rxRateLimit = limit; c.nets[i].txRateLimit = limit }
        }
        // eth0's address without DHCP, for guests with no network configuration of their own (the kernel's
        // IP autoconfiguration; a guest that runs DHCP gets the same address from dnsmasq). An image whose
        // command line names ip= itself keeps it: `ip=off` for one that configures its network from the
        // seed's network-config (cloud-init), where the kernel's address would make ifup fail.
        if let n = spec.nics.first, !c.cmdline.split(separator: " ").contains(where: { $0.hasPrefix("ip=") }) {
            let mask = IPv4Address(IPv4Network.maskValue(n.prefix))
            c.cmdline = [c.cmdline, "ip=\(n.address)::\(n.gateway):\(mask)::eth0:off"].filter { !$0.isEmpty }.joined(separator: " ")
        }
        // A guest that asks to restart ends its VMM (status 3): kumod counts reboots and starts it again.
        c.onReboot = .exit
        return c
    }

    /// kumo-vmm's token buckets for a type's NIC limits: a second's worth of bytes (or packets) refilled
    /// over a second. A second's worth, not less: a bucket smaller than a frame would never pass it (a
    /// GSO frame is up to 64 KiB, and the smallest limit, 1 Mbit/s, is 125,000 bytes a second).
    public static func nicRateLimit(mbps: Int?, pps: Int?) -> RateLimitConfig? {
        guard mbps != nil || pps != nil else { return nil }
        var r = RateLimitConfig()
        if let mbps { r.bandwidth = BucketConfig(size: UInt64(mbps) * 1_000_000 / 8) }
        if let pps { r.ops = BucketConfig(size: UInt64(pps)) }
        return r
    }

    /// The contract version the kumo-vmm at `path` speaks (`kumo-vmm --contract-version`).
    public static func contractVersion(of path: String) throws -> Int {
        let answer: String
        do { answer = try HostCommand.run(path, ["--contract-version"]) } catch {
            throw APIError(code: "internal", message: "\(path) does not answer --contract-version (\(error)): not a kumo-vmm of this release")
        }
        guard let v = Int(answer.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw APIError(code: "internal", message: "\(path) does not answer --contract-version with a number: not a kumo-vmm of this release")
        }
        return v
    }

    public func prepare(_ spec: LaunchSpec) throws {
        let fm = FileManager.default
        try fm.createDirectory(at: spec.workDir, withIntermediateDirectories: true)
        if let disk = spec.image.rootDisk, let root = Self.rootDisk(spec), !fm.fileExists(atPath: root.path) {
            // Each instance boots from a qcow2 overlay on the image's root disk (the image is read, never
            // written: the guest's writes land in the overlay). Made under another name and renamed: an
            // overlay cut short (kumod killed) is never taken for a whole one.
            let part = root.path + ".part"
            try? fm.removeItem(atPath: part)
            let format = DiskFormat(rawValue: spec.image.diskFormat ?? "raw") ?? .raw
            do { try QCow2.createOverlay(at: part, backing: disk, format: format) } catch {
                throw APIError(code: "launch_failed", message: "cannot create the root disk's overlay: \(error)")
            }
            guard rename(part, root.path) == 0 else {
                throw APIError(code: "launch_failed", message: "cannot rename the root disk's overlay: \(String(cString: strerror(errno)))")
            }
        }
        try writeSeed(spec)
    }

    /// What `launch` needs of `prepare` when a wrapping launcher did not forward it: the overlay (made once)
    /// and a seed if there is none yet.
    func ensurePrepared(_ spec: LaunchSpec) throws {
        let fm = FileManager.default
        let diskReady = Self.rootDisk(spec).map { fm.fileExists(atPath: $0.path) } ?? true
        let seedReady = spec.seed == nil || fm.fileExists(atPath: spec.seedImage.path)
        if !diskReady || !seedReady { try prepare(spec) }
    }

    /// Its seed, made afresh at every launch (its NICs' addresses are the store's of now).
    func writeSeed(_ spec: LaunchSpec) throws {
        try spec.seed?.write(to: spec.seedImage)
    }

    /// The instance's root disk: `root.qcow2`, an overlay on the image's; an instance made before overlays
    /// keeps the whole copy it booted from (`root.img`).
    static func rootDisk(_ spec: LaunchSpec) -> DiskConfig? {
        guard spec.image.rootDisk != nil else { return nil }
        let copy = spec.workDir.appendingPathComponent("root.img").path
        if FileManager.default.fileExists(atPath: copy) { return DiskConfig(path: copy) }
        return DiskConfig(path: spec.workDir.appendingPathComponent("root.qcow2").path, format: .qcow2)
    }

    public func launch(_ spec: LaunchSpec) throws -> VMMProcess {
        let fm = FileManager.default
        // Held from before the config is written until the VMM has its own copy (InstanceLock.swift).
        let lock = try InstanceLock.acquire(workDir: spec.workDir, instanceID: spec.instanceID)
        defer { lock.release() }
        // Again, cheaply (nothing is made twice): a launcher that wraps this one may not forward prepare.
        try ensurePrepared(spec)
        var config = Self.config(spec)
        config.seccomp = seccomp
        var inherit = [lock.fd]
        if let ids = jail {
            let netns: Int32
            switch Self.jailNetworkNamespace {
            case let .success(fd): netns = fd
            case let .failure(e): throw APIError(code: "launch_failed", message: "no network namespace for the VMMs' jails: \(e)")
            }
            let id = try ids.allocate(for: spec.instanceID)
            // The namespace as the VMM's descriptor 4 (after the lock's 3), named by path: kumod's own
            // may be gone (restarted) by the time the VMM opens a path of kumod's.
            inherit.append(netns)
            config.jail = JailConfig(uid: id, gid: id, directory: spec.workDir.path, networkNamespace: "/proc/self/fd/4")
        }
        try Data(config.jsonText.utf8).write(to: spec.configPath)
        try? fm.removeItem(at: spec.controlSocket)
        try? fm.removeItem(at: spec.consoleSocket)

        let pid: pid_t
        do {
            pid = try Spawn.detached(vmmPath, ["--config", spec.configPath.path], log: spec.vmmLog.path, inherit: inherit)
        } catch {
            throw APIError(code: "launch_failed", message: "cannot start \(vmmPath): \(error)")
        }
        let ticks = Self.startTicks(pid) ?? 0
        let limited = spec.cpuCapPercent != nil || spec.cpuShares != nil
        if limited || (jail != nil && cgroups != nil) {
            // Into its cgroup before the guest gets going: a jailed VMM always (docs/SANDBOX.md), with its
            // type's limits if it has any. A limit that cannot be applied is a failed launch.
            do {
                guard let cg = cgroups else { throw CPUCgroups.Failure(description: "this host has no cpu cgroup hierarchy") }
                try cg.apply(instanceID: spec.instanceID, pid: pid, vcpus: spec.vcpus, capPercent: spec.cpuCapPercent, shares: spec.cpuShares)
            } catch {
                cgroups?.release(instanceID: spec.instanceID)
                if limited {
                    kill(pid, SIGKILL)
                    var st: Int32 = 0
                    waitpid(pid, &st, 0)
                    throw APIError(code: "launch_failed", message: "cannot apply the instance type's CPU cap/shares: \(error)")
                }
                if let log = FileHandle(forWritingAtPath: spec.vmmLog.path) {
                    log.seekToEndOfFile()
                    log.write(Data("kumod: the VMM stays in kumod's cgroup (its own could not be made: \(error))\n".utf8))
                    try? log.close()
                }
            }
        }
        try? "\(pid) \(ticks)\n".write(to: spec.workDir.appendingPathComponent("vmm.pid"), atomically: true, encoding: .utf8)
        return VMMProcess(pid: pid, startTicks: ticks)
    }

    /// Field 22 of /proc/PID/stat (after the parenthesised command name, which may hold spaces).
    public static func startTicks(_ pid: Int32) -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is the state (field 3), so field 22 is fields[19].
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    static func state(_ pid: Int32) -> Character? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        return text[text.index(after: close)...].split(separator: " ").first?.first
    }

    public func exitStatus(_ p: VMMProcess) -> ExitFate? { Self.fate(of: p) }

    /// nil while `p` runs (reaping it when it is kumod's child and gone); its fate once it is gone.
    public static func fate(of p: VMMProcess) -> ExitFate? {
        var st: Int32 = 0
        let r = waitpid(p.pid, &st, WNOHANG)
        if r == p.pid {
            if st & 0x7f == 0 { return .exited((st >> 8) & 0xff) }
            return .killed(st & 0x7f)
        }
        if r == 0 { return nil }  // our child, still running
        // Not our child (adopted after a kumod restart): alive while /proc shows the same process.
        guard let ticks = Self.startTicks(p.pid), ticks == p.startTicks, Self.state(p.pid) != "Z" else { return .vanished }
        return nil
    }

    public func handle(workDir: URL) -> any VMMHandle {
        ControlClient(path: workDir.appendingPathComponent("control.sock").path)
    }

    public func signal(_ p: VMMProcess, _ sig: Int32) {
        guard Self.startTicks(p.pid) == p.startTicks else { return }  // never signal a reused pid
        kill(p.pid, sig)
    }
}

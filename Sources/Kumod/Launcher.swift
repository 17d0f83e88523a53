// Starting and watching kumo-vmm processes. Each instance is its own kumo-vmm in its own session
// (so that kumod can die and come back without taking VMs with it), with a work directory holding
// its config, console log, VMM log and control socket.
import Foundation
import KumoAPI
import CKumod

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
    /// The console log of the boot before the last guest reboot (kumo-vmm starts console.log afresh).
    public var previousConsoleLog: URL { workDir.appendingPathComponent("console.log.1") }
}

/// A running VMM process: its pid and its start time in clock ticks since boot (field 22 of
/// /proc/PID/stat), which together name it even after the pid number is reused.
public struct VMMProcess: Sendable, Equatable {
    public var pid: Int32
    public var startTicks: UInt64
    public init(pid: Int32, startTicks: UInt64) { self.pid = pid; self.startTicks = startTicks }
}

/// The protocol in front of the VMM: placement and API logic drive it; the real implementation
/// spawns kumo-vmm.
public protocol VMMLauncher: Sendable {
    func launch(_ spec: LaunchSpec) throws -> VMMProcess
    /// nil while the process runs; its fate once it is gone.
    func exitStatus(_ p: VMMProcess) -> ExitFate?
    func signal(_ p: VMMProcess, _ sig: Int32)
    /// Presses the VM's ACPI power button through its control socket; false when the VMM did not take
    /// the request (no control socket, or it answered with an error).
    func pressPowerButton(workDir: URL) -> Bool
    /// The instance's VMM is gone: release what was set up for it (its cgroup).
    func release(instanceID: String)
}

extension VMMLauncher {
    public func release(instanceID: String) {}
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
    public init(vmmPath: String, cgroups: CPUCgroups? = CPUCgroups.detect()) { self.vmmPath = vmmPath; self.cgroups = cgroups }

    public func release(instanceID: String) { cgroups?.release(instanceID: instanceID) }

    /// The kumo-vmm configuration file for `spec` (JSON, the same keys as `kumo-vmm --config`).
    public static func config(_ spec: LaunchSpec) -> [String: Any] {
        var c: [String: Any] = [
            "kernel": spec.image.kernel, "memory_mib": spec.memoryMiB, "vcpus": spec.vcpus,
            "cmdline": spec.image.cmdline, "serial": "file:" + spec.consoleLog.path,
            "serial_socket": spec.consoleSocket.path, "api_socket": spec.controlSocket.path, "balloon": true,
            // A guest that asks to restart ends its VMM (status 3): kumod counts reboots and starts it again.
            "on_reboot": "exit",
        ]
        if let i = spec.image.initrd { c["initrd"] = i }
        if spec.memoryDedup { c["memory_dedup"] = true }
        if spec.affinity.contains(where: { $0 != nil }) {
            c["vcpu_affinity"] = spec.affinity.prefix(spec.vcpus).map { $0.map { $0 as Any } ?? NSNull() }
        }
        if spec.image.rootDisk != nil { c["disks"] = [["path": spec.workDir.appendingPathComponent("root.img").path]] }
        return c
    }

    public func launch(_ spec: LaunchSpec) throws -> VMMProcess {
        let fm = FileManager.default
        try fm.createDirectory(at: spec.workDir, withIntermediateDirectories: true)
        if let disk = spec.image.rootDisk {
            // Each instance boots from its own copy of the image's root disk.
            let dst = spec.workDir.appendingPathComponent("root.img")
            if !fm.fileExists(atPath: dst.path) { try fm.copyItem(atPath: disk, toPath: dst.path) }
        }
        let json = try JSONSerialization.data(withJSONObject: Self.config(spec), options: [.prettyPrinted, .sortedKeys])
        try json.write(to: spec.configPath)
        try? fm.removeItem(at: spec.controlSocket)
        try? fm.removeItem(at: spec.consoleSocket)

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // Its own session: a signal to kumod's process group (Ctrl-C, kill -9 of a service) leaves VMs up.
        // Default signal mask and dispositions: kumod's threads may block signals kumo-vmm relies on.
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(ckumod_spawn_setsid_flag() | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, spec.vmmLog.path, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Nothing else of kumod's crosses over: its listening sockets, event loops and database would
        // otherwise live on in every VMM (and keep kumod's port taken after kumod dies).
        guard ckumod_spawn_addclosefrom(&actions, 3) == 0 else { throw APIError(code: "launch_failed", message: "posix_spawn_file_actions_addclosefrom_np failed") }
        let words = [vmmPath, "--config", spec.configPath.path]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, vmmPath, &actions, &attr, argv, environ)
        guard rc == 0 else { throw APIError(code: "launch_failed", message: "cannot start \(vmmPath): \(String(cString: strerror(rc)))") }
        let ticks = Self.startTicks(pid) ?? 0
        if spec.cpuCapPercent != nil || spec.cpuShares != nil {
            // Into its cgroup before the guest gets going; a limit that cannot be applied is a failed launch.
            do {
                guard let cg = cgroups else { throw CPUCgroups.Failure(description: "this host has no cpu cgroup hierarchy") }
                try cg.apply(instanceID: spec.instanceID, pid: pid, vcpus: spec.vcpus, capPercent: spec.cpuCapPercent, shares: spec.cpuShares)
            } catch {
                kill(pid, SIGKILL)
                var st: Int32 = 0
                waitpid(pid, &st, 0)
                cgroups?.release(instanceID: spec.instanceID)
                throw APIError(code: "launch_failed", message: "cannot apply the instance type's CPU cap/shares: \(error)")
            }
        }
        try? "\(pid) \(ticks)\n".write(to: spec.workDir.appendingPathComponent("vmm.pid"), atomically: true, encoding: .utf8)
        return VMMProcess(pid: pid, startTicks: ticks)
    }

    /// Field 22 of /proc/PID/stat (after the parenthesised command name, which may hold spaces).
    public static func startTicks(_ pid: Int32) -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is the state (field 3), so field 22 is fields[19].
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    static func state(_ pid: Int32) -> Character? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        return text[text.index(after: close)...].split(separator: " ").first?.first
    }

    public func exitStatus(_ p: VMMProcess) -> ExitFate? {
        var st: Int32 = 0
        let r = waitpid(p.pid, &st, WNOHANG)
        if r == p.pid {
            if st & 0x7f == 0 { return .exited((st >> 8) & 0xff) }
            return .killed(st & 0x7f)
        }
        if r == 0 { return nil }   // our child, still running
        // Not our child (adopted after a kumod restart): alive while /proc shows the same process.
        guard let ticks = Self.startTicks(p.pid), ticks == p.startTicks, Self.state(p.pid) != "Z" else { return .vanished }
        return nil
    }

    public func pressPowerButton(workDir: URL) -> Bool {
        guard let reply = try? ControlClient.request(workDir.appendingPathComponent("control.sock").path, #"{"op":"power_button"}"#) else { return false }
        return reply.contains(#""ok":true"#)
    }

    public func signal(_ p: VMMProcess, _ sig: Int32) {
        guard Self.startTicks(p.pid) == p.startTicks else { return }   // never signal a reused pid
        kill(p.pid, sig)
    }
}

/// One request on a VMM's control socket (docs/CONTROL.md): a JSON line out, a JSON line back, with a
/// deadline so that a wedged VMM cannot hold kumod's supervisor.
public enum ControlClient {
    public struct Failure: Error, CustomStringConvertible { public let description: String }

    public static func connect(_ path: String) throws(Failure) -> Int32 {
        guard path.utf8.count < 108 else { throw Failure(description: "\(path): socket path too long") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard rc == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw Failure(description: "\(path): \(e)")
        }
        return fd
    }

    public static func request(_ path: String, _ line: String, timeoutSeconds: Int = 5) throws(Failure) -> String {
        let fd = try connect(path)
        defer { close(fd) }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let out = Array((line + "\n").utf8)
        guard out.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == out.count else {
            throw Failure(description: "\(path): send: \(String(cString: strerror(errno)))")
        }
        var reply: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while !reply.contains(0x0A) {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { throw Failure(description: "\(path): no answer") }
            reply += buf[0..<n]
        }
        return String(decoding: reply.prefix { $0 != 0x0A }, as: UTF8.self)
    }
}

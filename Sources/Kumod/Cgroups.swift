// CPU caps and shares per instance through cgroups: v2 (cpu.max, cpu.weight) where the host has the
// unified hierarchy, v1 (cpu.cfs_quota_us, cpu.shares) where it has only the cpu controller mounted on
// its own, as our machines do. Each instance's kumo-vmm goes into kumo/INSTANCE-ID under the cpu
// hierarchy, with all its threads (cgroup.procs), right after it is spawned.
import Foundation

public struct CPUCgroups: Sendable {
    public enum Version: String, Sendable { case v1, v2 }
    /// The directory holding kumod's groups (…/cpu/kumo on v1, …/kumo on v2), and the hierarchy.
    public let root: String
    public let version: Version

    public init(root: String, version: Version) { self.root = root; self.version = version }

    /// The host's cpu hierarchy, or nil when there is none kumod can use.
    public static func detect(mount: String = "/sys/fs/cgroup") -> CPUCgroups? {
        let fm = FileManager.default
        if fm.fileExists(atPath: mount + "/cgroup.controllers"),
           let c = try? String(contentsOfFile: mount + "/cgroup.controllers", encoding: .utf8), c.split(separator: " ").contains(where: { $0.hasPrefix("cpu") && $0.trimmingCharacters(in: .whitespacesAndNewlines) == "cpu" }) {
            return CPUCgroups(root: mount + "/kumo", version: .v2)
        }
        for dir in ["/cpu", "/cpu,cpuacct", "/cpuacct,cpu"] where fm.fileExists(atPath: mount + dir + "/cpu.shares") {
            return CPUCgroups(root: mount + dir + "/kumo", version: .v1)
        }
        return nil
    }

    public struct Failure: Error, CustomStringConvertible { public let description: String }

    func write(_ path: String, _ value: String) throws(Failure) {
        guard let h = FileHandle(forWritingAtPath: path) else { throw Failure(description: "\(path): cannot open for writing") }
        defer { try? h.close() }
        do { try h.write(contentsOf: Data(value.utf8)) } catch { throw Failure(description: "\(path) ← \(value): \(error.localizedDescription)") }
    }

    public func path(_ instanceID: String) -> String { root + "/" + instanceID }

    /// v2 weight from v1 shares (the kernel's own mapping for cgroup v1 → v2 conversion).
    static func weight(shares: Int) -> Int { 1 + ((shares - 2) * 9999) / 262142 }

    /// Creates (or resets) the instance's group with its limits and moves `pid` (all its threads) in.
    public func apply(instanceID: String, pid: Int32, vcpus: Int, capPercent: Int?, shares: Int?) throws(Failure) {
        let fm = FileManager.default
        do {
            if !fm.fileExists(atPath: root) {
                try fm.createDirectory(atPath: root, withIntermediateDirectories: false)
                if version == .v2 { try write(root + "/cgroup.subtree_control", "+cpu") }
            }
            if !fm.fileExists(atPath: path(instanceID)) { try fm.createDirectory(atPath: path(instanceID), withIntermediateDirectories: false) }
        } catch let f as Failure { throw f } catch { throw Failure(description: "\(path(instanceID)): \(error.localizedDescription)") }
        let dir = path(instanceID)
        let period = 100_000
        switch version {
        case .v1:
            try write(dir + "/cpu.cfs_period_us", "\(period)")
            try write(dir + "/cpu.cfs_quota_us", capPercent.map { "\(period * $0 * vcpus / 100)" } ?? "-1")
            try write(dir + "/cpu.shares", "\(shares ?? 1024)")
        case .v2:
            try write(dir + "/cpu.max", capPercent.map { "\(period * $0 * vcpus / 100) \(period)" } ?? "max \(period)")
            try write(dir + "/cpu.weight", "\(Self.weight(shares: shares ?? 1024))")
        }
        try write(dir + "/cgroup.procs", "\(pid)")
    }

    /// Removes the instance's group once its processes are gone (rmdir of an empty group).
    public func release(instanceID: String) {
        rmdir(path(instanceID))
    }

    /// The group's CPU time so far (ns), for reports and tests.
    public func usageNanos(instanceID: String) -> UInt64? {
        switch version {
        case .v1:
            let acct = root.replacingOccurrences(of: "/cpu/kumo", with: "/cpuacct/kumo") + "/" + instanceID + "/cpuacct.usage"
            for p in [path(instanceID) + "/cpuacct.usage", acct] {
                if let t = try? String(contentsOfFile: p, encoding: .utf8), let v = UInt64(t.trimmingCharacters(in: .whitespacesAndNewlines)) { return v }
            }
            return nil
        case .v2:
            guard let t = try? String(contentsOfFile: path(instanceID) + "/cpu.stat", encoding: .utf8) else { return nil }
            for line in t.split(separator: "\n") where line.hasPrefix("usage_usec ") { return UInt64(line.dropFirst(11)).map { $0 * 1000 } }
            return nil
        }
    }
}

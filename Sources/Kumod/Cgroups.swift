// CPU caps and shares per instance through cgroups: v2 (cpu.max, cpu.weight) where the cpu controller
// is on the unified hierarchy, v1 (cpu.cfs_quota_us, cpu.shares) where it is on a v1 hierarchy of its
// own, as on our machines (found from the mount table either way). Each instance's kumo-vmm goes into
// kumo/INSTANCE-ID under the cpu hierarchy, with all its threads (cgroup.procs), right after it is spawned.
import Foundation

public struct CPUCgroups: Sendable {
    public enum Version: String, Sendable { case v1, v2 }
    /// The directory holding kumod's groups (…/cpu/kumo on v1, …/kumo on v2), and the hierarchy.
    public let root: String
    public let version: Version

    public init(root: String, version: Version) { self.root = root; self.version = version }

    /// The host's cpu hierarchy from its mount table, or nil when there is none kumod can use.
    public static func detect(mountTable: String = "/proc/self/mounts") -> CPUCgroups? {
        guard let text = try? String(contentsOfFile: mountTable, encoding: .utf8) else { return nil }
        return choose(mounts: text) { try? String(contentsOfFile: $0, encoding: .utf8) }
    }

    /// Picks the hierarchy holding the cpu controller: a cgroup2 mount that offers `cpu` in its
    /// cgroup.controllers (a pure v2 host, or a hybrid one whose cpu controller is bound to v2), else
    /// a cgroup v1 mount with the `cpu` option (alone or with cpuacct). A controller is bound to one
    /// hierarchy at a time, so at most one of them can have it.
    public static func choose(mounts: String, read: (String) -> String?) -> CPUCgroups? {
        var v1: String? = nil
        for line in mounts.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count >= 4 else { continue }
            // /proc/mounts escapes spaces and the like in paths as octal (\040).
            let mountpoint = String(f[1]).replacingOccurrences(of: "\\040", with: " ")
            switch f[2] {
            case "cgroup2":
                let controllers = read(mountpoint + "/cgroup.controllers") ?? ""
                if controllers.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("cpu") {
                    return CPUCgroups(root: mountpoint + "/kumo", version: .v2)
                }
            case "cgroup" where v1 == nil && f[3].split(separator: ",").contains("cpu"):
                v1 = mountpoint
            default: break
            }
        }
        return v1.map { CPUCgroups(root: $0 + "/kumo", version: .v1) }
    }

    public struct Failure: Error, CustomStringConvertible { public let description: String }

    func write(_ path: String, _ value: String) throws(Failure) {
        guard let h = FileHandle(forWritingAtPath: path) else { throw Failure(description: "\(path): cannot open for writing") }
        defer { try? h.close() }
        do { try h.write(contentsOf: Data(value.utf8)) } catch { throw Failure(description: "\(path) ← \(value): \(error.localizedDescription)") }
    }

    public func path(_ instanceID: String) -> String { root + "/" + instanceID }

    /// v2 weight from v1 shares (the mapping runc and crun use: 2…262144 onto 1…10000; 1024 → 39).
    public static func weight(shares: Int) -> Int { 1 + ((shares - 2) * 9999) / 262142 }

    /// Creates (or resets) the instance's group with its limits and moves `pid` (all its threads) in.
    public func apply(instanceID: String, pid: Int32, vcpus: Int, capPercent: Int?, shares: Int?) throws(Failure) {
        let fm = FileManager.default
        do {
            if !fm.fileExists(atPath: root) { try fm.createDirectory(atPath: root, withIntermediateDirectories: false) }
            if version == .v2 {
                // v2: the controller reaches kumo's groups only when every level above enables it for its
                // children (the mount's root, then kumo).
                let parent = (root as NSString).deletingLastPathComponent
                for dir in [parent, root] {
                    let enabled = try String(contentsOfFile: dir + "/cgroup.subtree_control", encoding: .utf8)
                    if !enabled.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("cpu") { try write(dir + "/cgroup.subtree_control", "+cpu") }
                }
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

    /// Removes the instance's group once its processes are gone (rmdir of an empty group). A process the VMM
    /// left behind may take a moment to go (a stand-in's `sleep`): up to half a second of retries, then it
    /// stays for the next start's sweep.
    public func release(instanceID: String) {
        for _ in 0..<25 {
            if rmdir(path(instanceID)) == 0 || errno != EBUSY { return }
            usleep(20_000)
        }
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

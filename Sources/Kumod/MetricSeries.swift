// What kumod's monitoring records of an instance, and how each series is worked out from two samples of
// the VMM's counters (no agent in the guest: vCPU threads' CPU time, the host scheduler's wait, the
// VMM's device counters and exits, the balloon's view of guest memory).
import Foundation
import VMMContract

/// One reading of a VMM: its counters as they stand (cumulative where they count).
struct RawSample: Sendable {
    /// CLOCK_MONOTONIC, nanoseconds (rates), and the wall clock in Unix seconds (the archives' time).
    var monotonic: UInt64
    var wall: Int
    var pid: Int32
    var stats: VMStats
    var balloon: BalloonState?

    var vcpuCount: Int { stats.vcpus.count }
    var disks: [VMStats.Device] { stats.devices.filter { $0.kind == "block" } }
    var nics: [VMStats.Device] { stats.devices.filter { $0.kind == "net" } }
}

enum InstanceSeries {
    /// Exit reasons with a series of their own; the rest are counted in `exits.other`.
    static let exitReasons = ["io", "mmio", "hlt", "intr"]
    /// The guest's disk names in device order: the root disk is vda, the cloud-init seed vdb.
    static func diskName(_ i: Int) -> String { "vd" + String(UnicodeScalar(UInt8(97 + min(i, 25)))) }

    /// The series of an instance with these devices (each a name and what it measures, unit in the name).
    static func names(vcpus: Int, disks: Int, nics: Int) -> [String] {
        var s = ["cpu_percent"] + (0..<vcpus).map { "cpu_percent.vcpu\($0)" } + ["cpu_wait_percent"]
        s += [
            "memory.rss_mib", "memory.guest_used_mib", "memory.guest_free_mib", "memory.guest_cached_mib", "memory.balloon_mib",
            "memory.ksm_saved_mib",
        ]
        for d in 0..<disks {
            let n = diskName(d)
            s += ["disk.\(n).read_bytes_per_s", "disk.\(n).write_bytes_per_s", "disk.\(n).read_ops_per_s", "disk.\(n).write_ops_per_s"]
        }
        for i in 0..<nics {
            s += ["net.eth\(i).rx_bytes_per_s", "net.eth\(i).tx_bytes_per_s", "net.eth\(i).rx_packets_per_s", "net.eth\(i).tx_packets_per_s"]
        }
        s += ["exits_per_s"] + exitReasons.map { "exits_per_s.\($0)" } + ["exits_per_s.other"]
        return s
    }

    static func names(for s: RawSample) -> [String] { names(vcpus: s.vcpuCount, disks: s.disks.count, nics: s.nics.count) }

    /// The value of every series of `names` at `cur`: gauges as read, rates over the time since `prev`
    /// (none when there is no earlier sample of the same VMM, or a counter went back).
    static func values(_ names: [String], prev: RawSample?, cur: RawSample) -> [Double?] {
        var v: [String: Double] = [:]
        let mib = 1.0 / 1_048_576
        v["memory.rss_mib"] = Double(cur.stats.memory.rssKiB) / 1024
        if let pages = cur.stats.memory.ksmMergingPages { v["memory.ksm_saved_mib"] = Double(pages) * 4096 * mib }
        if let b = cur.balloon, b.driverReady {
            v["memory.balloon_mib"] = Double(b.actualMiB)
            if let total = b.stats["total_memory"], let free = b.stats["free_memory"] {
                let available = b.stats["available_memory"] ?? free
                v["memory.guest_used_mib"] = Double(total &- min(available, total)) * mib
                v["memory.guest_free_mib"] = Double(free) * mib
            }
            if let cached = b.stats["disk_caches"] { v["memory.guest_cached_mib"] = Double(cached) * mib }
        }
        if let prev, prev.pid == cur.pid, cur.monotonic > prev.monotonic {
            let seconds = Double(cur.monotonic - prev.monotonic) / 1e9
            func rate(_ a: UInt64?, _ b: UInt64?) -> Double? {
                guard let a, let b, b >= a else { return nil }
                return Double(b - a) / seconds
            }
            var cpu = 0.0, wait = 0.0, complete = true
            for (i, c) in cur.stats.vcpus.enumerated() {
                guard i < prev.stats.vcpus.count, let r = rate(prev.stats.vcpus[i].cpuNs, c.cpuNs) else {
                    complete = false
                    continue
                }
                v["cpu_percent.vcpu\(i)"] = r / 1e7  // ns per s → percent of one host CPU
                cpu += r / 1e7
                if let w = rate(prev.stats.vcpus[i].waitNs, c.waitNs) { wait += w / 1e7 }
            }
            if complete {
                v["cpu_percent"] = cpu
                v["cpu_wait_percent"] = wait
            }
            // Exits count this boot: a guest reboot starts them again, and then there is no rate.
            func exits(_ s: RawSample, _ reason: String?) -> UInt64 {
                s.stats.vcpus.reduce(0) { sum, c in sum &+ (reason.map { c.exits[$0] ?? 0 } ?? c.exitsTotal) }
            }
            if prev.stats.vcpus.count == cur.stats.vcpus.count, let total = rate(exits(prev, nil), exits(cur, nil)) {
                v["exits_per_s"] = total
                var named = 0.0
                for r in exitReasons {
                    let x = rate(exits(prev, r), exits(cur, r)) ?? 0
                    v["exits_per_s.\(r)"] = x
                    named += x
                }
                v["exits_per_s.other"] = max(0, total - named)
            }
            func deviceRates(_ before: [VMStats.Device], _ after: [VMStats.Device], _ name: (Int) -> String, _ pairs: [(String, String)]) {
                for (i, d) in after.enumerated() where i < before.count && before[i].name == d.name {
                    for (counter, series) in pairs {
                        if let r = rate(before[i].counters[counter], d.counters[counter]) { v["\(name(i)).\(series)"] = r }
                    }
                }
            }
            deviceRates(
                prev.disks, cur.disks, { "disk.\(diskName($0))" },
                [("read_bytes", "read_bytes_per_s"), ("written_bytes", "write_bytes_per_s"), ("reads", "read_ops_per_s"), ("writes", "write_ops_per_s")])
            deviceRates(
                prev.nics, cur.nics, { "net.eth\($0)" },
                [("rx_bytes", "rx_bytes_per_s"), ("tx_bytes", "tx_bytes_per_s"), ("rx_frames", "rx_packets_per_s"), ("tx_frames", "tx_packets_per_s")])
        }
        return names.map { v[$0] }
    }
}

/// The host's series: CPU, memory, KSM, instances by state.
enum HostSeries {
    static let states = ["pending", "starting", "running", "stopping", "stopped", "error"]
    static let names =
        ["cpu_percent", "memory.used_mib", "memory.available_mib", "memory.ksm_saved_mib", "memory.balloon_reclaimed_mib"]
        + states.map { "instances.\($0)" }

    /// /proc/stat's first line: (busy, total) jiffies of all CPUs.
    static func cpuJiffies(_ stat: String) -> (busy: UInt64, total: UInt64)? {
        guard let line = stat.split(separator: "\n").first, line.hasPrefix("cpu ") else { return nil }
        let f = line.split(separator: " ").dropFirst().compactMap { UInt64($0) }
        guard f.count >= 4 else { return nil }
        let total = f.prefix(8).reduce(0, +)  // user nice system idle iowait irq softirq steal (guest is in user)
        let idle = f[3] + (f.count > 4 ? f[4] : 0)
        return (total - idle, total)
    }

    /// /proc/meminfo's value of `key` in KiB.
    static func meminfo(_ text: String, _ key: String) -> UInt64? {
        for line in text.split(separator: "\n") where line.hasPrefix(key + ":") {
            return line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }
        }
        return nil
    }
}

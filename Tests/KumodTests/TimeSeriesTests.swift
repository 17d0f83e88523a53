import Foundation
import KumoAPI
import Testing
import VMMContract

@testable import Kumod

/// The monitoring store and what goes into it (TimeSeries.swift, MetricSeries.swift, MetricQueries.swift):
/// consolidation into 10 s / 60 s / 1 h buckets, retention, a restart and a torn write, the fixed size; the
/// series worked out from VMM counters; the query's limits.
@Suite struct TimeSeriesTests {
    static func tempFile() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("kumo-tsdb-\(UUID().uuidString)").path
    }

    @Test func bucketsAverageAndMaximumAtEachStep() throws {
        let path = Self.tempFile()
        defer { unlink(path) }
        let f = try TimeSeriesFile(path: path, series: ["a", "b"])
        let t0 = 1_800_000_000 - 1_800_000_000 % 3600  // an hour's start
        // Six samples per minute for two minutes: a = 0, 10, 20 … ; b only in the first minute.
        for i in 0..<12 { f.record(time: t0 + i * 10, [Double(i * 10), i < 6 ? 5 : nil]) }
        let ten = try f.points(series: "a", step: 10, from: t0, to: t0 + 110)
        #expect(ten.map(\.time) == (0..<12).map { t0 + $0 * 10 } && ten.map(\.avg) == (0..<12).map { Double($0 * 10) })
        let minute = try f.points(series: "a", step: 60, from: t0, to: t0 + 119)
        #expect(minute == [MetricPoint(time: t0, avg: 25, max: 50), MetricPoint(time: t0 + 60, avg: 85, max: 110)])
        #expect(try f.points(series: "b", step: 60, from: t0, to: t0 + 119) == [MetricPoint(time: t0, avg: 5, max: 5)], "b had no samples later")
        #expect(try f.points(series: "a", step: 3600, from: t0, to: t0) == [MetricPoint(time: t0, avg: 55, max: 110)])
        #expect(throws: TimeSeriesError.self) { _ = try f.points(series: "c", step: 10, from: t0, to: t0) }
        #expect(throws: TimeSeriesError.self) { _ = try f.points(series: "a", step: 30, from: t0, to: t0) }
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(Int(st.st_size) == TimeSeriesFile.size(series: 2), "created at its full size")
    }

    @Test func retentionRestartAndATornWrite() throws {
        let path = Self.tempFile()
        defer { unlink(path) }
        let t0 = 1_800_000_000 - 1_800_000_000 % 86400
        do {
            let f = try TimeSeriesFile(path: path, series: ["x"])
            f.record(time: t0, [1])
            // 6 h later the 10 s ring has come round: the first point is gone from it, kept at 60 s and 1 h.
            f.record(time: t0 + 6 * 3600, [2])
            #expect(try f.points(series: "x", step: 10, from: t0, to: t0 + 6 * 3600).map(\.avg) == [2])
            #expect(try f.points(series: "x", step: 60, from: t0, to: t0 + 6 * 3600).map(\.avg) == [1, 2])
            f.record(time: t0 + 6 * 3600 + 5, [4])
        }
        // A new kumod carries on with the bucket it finds on disk.
        let g = try TimeSeriesFile(path: path, series: ["x"])
        g.record(time: t0 + 6 * 3600 + 7, [6])
        #expect(try g.points(series: "x", step: 10, from: t0 + 6 * 3600, to: t0 + 6 * 3600) == [MetricPoint(time: t0 + 6 * 3600, avg: 4, max: 6)])
        // A row cut short (a write stopped at a page boundary): that bucket reads as empty, the others stay.
        g.record(time: t0 + 6 * 3600 + 10, [8])
        let offset = g.rowOffset(0, bucket: t0 + 6 * 3600 + 10)
        let fd = open(path, O_WRONLY)
        var junk: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF]
        #expect(pwrite(fd, &junk, 4, off_t(offset + 20)) == 4)
        close(fd)
        let h = try TimeSeriesFile(path: path, series: ["x"])
        #expect(try h.points(series: "x", step: 10, from: t0 + 6 * 3600, to: t0 + 6 * 3600 + 10).map(\.time) == [t0 + 6 * 3600])
        // Other series: the history starts afresh (the file is made again, of the new size).
        let other = try TimeSeriesFile(path: path, series: ["x", "y"])
        #expect(try other.points(series: "x", step: 60, from: t0, to: t0 + 7 * 3600).isEmpty)
        var st = stat()
        #expect(stat(path, &st) == 0 && Int(st.st_size) == TimeSeriesFile.size(series: 2))
    }

    static func sample(at seconds: Double, pid: Int32 = 7, cpuNs: [UInt64], exits: UInt64, io: UInt64, disk: (UInt64, UInt64), net: (UInt64, UInt64))
        -> RawSample
    {
        let vcpus = cpuNs.enumerated().map { i, ns in
            VMStats.VCPU(
                vcpu: i, tid: 1, exits: ["io": io, "hlt": exits - io], exitsTotal: exits, ioIn: 0, ioOut: 0, mmioRead: 0, mmioWrite: 0,
                emulated: [:], cpuNs: ns, waitNs: ns / 10)
        }
        var mem = VMStats.Memory(dedup: false, rssKiB: 204_800, guestResidentKiB: 0)
        mem.ksmMergingPages = 256
        let devices = [
            VMStats.Device(name: "virtio-block0", kind: "block", backend: "kumo-root", counters: ["read_bytes": disk.0, "reads": disk.1]),
            VMStats.Device(name: "virtio-net1", kind: "net", backend: "kt0", counters: ["rx_bytes": net.0, "rx_frames": net.1]),
        ]
        let balloon = BalloonState(
            driverReady: true, targetMiB: 0, actualMiB: 16, targetPages: 0, actualPages: 4096, inflatedPages: 0, deflatedPages: 0, reportedPages: 0,
            statsUpdates: 1, stats: ["total_memory": 256 << 20, "free_memory": 100 << 20, "available_memory": 156 << 20, "disk_caches": 30 << 20],
            rssKiB: 0)
        return RawSample(
            monotonic: UInt64(seconds * 1e9), wall: Int(seconds), pid: pid, stats: VMStats(vcpus: vcpus, memory: mem, devices: devices),
            balloon: balloon)
    }

    @Test func seriesFromTwoSamplesOfTheVMM() {
        let a = Self.sample(at: 100, cpuNs: [1_000_000_000, 0], exits: 1000, io: 400, disk: (0, 0), net: (1000, 10))
        let b = Self.sample(at: 110, cpuNs: [3_000_000_000, 5_000_000_000], exits: 6000, io: 2400, disk: (40960, 10), net: (11000, 30))
        let names = InstanceSeries.names(for: b)
        #expect(names.contains("disk.vda.read_bytes_per_s") && names.contains("net.eth0.rx_packets_per_s") && names.contains("cpu_percent.vcpu1"))
        let v = Dictionary(uniqueKeysWithValues: zip(names, InstanceSeries.values(names, prev: a, cur: b)))
        #expect(v["cpu_percent.vcpu0"] == 20 && v["cpu_percent.vcpu1"] == 50 && v["cpu_percent"] == 70)
        #expect(v["cpu_wait_percent"] == 7)
        #expect(v["exits_per_s"] == 1000 && v["exits_per_s.io"] == 400 && v["exits_per_s.hlt"] == 600 && v["exits_per_s.other"] == 0, "both vCPUs")
        #expect(v["disk.vda.read_bytes_per_s"] == 4096 && v["disk.vda.read_ops_per_s"] == 1)
        #expect(v["net.eth0.rx_bytes_per_s"] == 1000 && v["net.eth0.rx_packets_per_s"] == 2)
        #expect(v["memory.rss_mib"] == 200 && v["memory.ksm_saved_mib"] == 1 && v["memory.balloon_mib"] == 16)
        #expect(v["memory.guest_used_mib"] == 100 && v["memory.guest_free_mib"] == 100 && v["memory.guest_cached_mib"] == 30)
        // No rate from the first sample, from another VMM (a restart), or across a counter that went back.
        let first = Dictionary(uniqueKeysWithValues: zip(names, InstanceSeries.values(names, prev: nil, cur: b)))
        #expect(first["cpu_percent"]! == nil && first["memory.rss_mib"]! == 200)
        let restarted = Self.sample(at: 120, pid: 8, cpuNs: [4_000_000_000, 6_000_000_000], exits: 7000, io: 2500, disk: (50000, 11), net: (12000, 31))
        #expect(InstanceSeries.values(names, prev: b, cur: restarted)[0] == nil)
        let rebooted = Self.sample(at: 120, cpuNs: [4_000_000_000, 6_000_000_000], exits: 10, io: 5, disk: (50000, 11), net: (12000, 31))
        let r = Dictionary(uniqueKeysWithValues: zip(names, InstanceSeries.values(names, prev: b, cur: rebooted)))
        #expect(r["exits_per_s"]! == nil && r["cpu_percent"]! == 20)
    }

    @Test func alarmsFireOnlyWhenTheWholeDurationIsPastTheThreshold() {
        let now = 1_000_000
        func pts(_ values: [Double]) -> [MetricPoint] {
            values.enumerated().map { MetricPoint(time: now - (values.count - 1 - $0.offset) * 10, avg: $0.element, max: $0.element) }
        }
        func judge(_ v: [Double], _ current: String = "ok", _ cmp: String = "above") -> String {
            AlarmRule.judge(comparison: cmp, threshold: 80, duration: 60, points: pts(v), now: now, current: current).state
        }
        #expect(judge([90, 90, 90, 90, 90, 90, 90]) == "firing", "a minute of 10 s points, all above")
        #expect(judge([90, 90, 50, 90, 90, 90, 90]) == "ok", "one point under in the minute")
        #expect(judge([90, 90, 90]) == "ok", "above, but not for the whole minute yet")
        #expect(judge([90, 90, 90, 90, 90, 90, 85], "firing") == "firing")
        #expect(judge([90, 90, 90, 90, 90, 90, 70], "firing") == "ok", "resolved when the newest is not above")
        #expect(judge([10, 10, 10, 10, 10, 10, 10], "ok", "below") == "firing")
        #expect(judge([], "firing") == "insufficient_data")
        let stale = AlarmRule.judge(
            comparison: "above", threshold: 80, duration: 60, points: [MetricPoint(time: now - 300, avg: 99, max: 99)], now: now, current: "firing")
        #expect(stale.state == "insufficient_data", "points that stopped coming")
    }

    @Test func hostSeriesFromProc() {
        #expect(HostSeries.cpuJiffies("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n")! == (150, 1000))
        #expect(HostSeries.meminfo("MemTotal:       24000000 kB\nMemAvailable:   12000000 kB\n", "MemAvailable") == 12_000_000)
    }

    @Test func queriesAreBoundedAndNamed() throws {
        let now = 2_000_000_000
        let d = try MetricQuery.parse([], now: now)
        #expect(d == MetricQuery(metric: nil, period: 10, start: now - 3590, end: now))
        let q = try MetricQuery.parse([("metric", "cpu_percent"), ("period", "3600"), ("start", "2026-11-28T00:00:00Z"), ("end", "1796083200")], now: now)
        #expect(q.period == 3600 && q.start == 1_796_083_200 - 3 * 86400 && q.end == 1_796_083_200)
        func refused(_ p: [(String, String)], _ words: String) {
            do {
                _ = try MetricQuery.parse(p, now: now)
                Issue.record("\(p) was taken")
            } catch { #expect(error.message.contains(words), "\(error.message)") }
        }
        refused([("period", "30")], "one of 10, 60, 3600")
        refused([("period", "10"), ("start", "0")], "at most 1440 points")
        refused([("start", "20"), ("end", "10")], "after end")
        refused([("start", "yesterday")], "RFC 3339")
        refused([("metrics", "cpu")], "unknown query parameter")
        refused([("metric", "a"), ("metric", "b")], "twice")
        refused([("metric", "cpu\u{1}")], "printable")
        #expect(try MetricQuery.parse([("period", "60"), ("start", "\(now - 1439 * 60)")], now: now).start == now - 1439 * 60)
    }
}

// kumod's monitoring: every `interval` (10 s by default) a sample of every running instance, taken from
// its VMM without any agent in the guest, and of the host; each into its time-series file (TimeSeries.swift:
// the instance's in its work directory, so it goes with the instance; the host's under DATA/metrics).
// The last sample of each is kept for the Prometheus exposition. It runs on a thread of its own.
import Foundation
import GRDB
import Synchronization
import SystemKit
import VMMContract

public final class Monitoring: @unchecked Sendable {
    public let interval: Double
    let hostFilePath: String
    /// Per instance: its file (opened at its first sample), the sample before the last, the last one.
    struct Tracked {
        var file: TimeSeriesFile?
        var previous: RawSample?
        var last: RawSample?
        var values: [String: Double]
    }
    let tracked = Mutex<[String: Tracked]>([:])
    let host = Mutex<(file: TimeSeriesFile?, cpu: (busy: UInt64, total: UInt64)?, values: [String: Double])>((nil, nil, [:]))
    let generation = Atomic<Int>(0)
    let samples = Atomic<Int>(0)
    /// What one pass cost (CPU time of this thread, µs) and how many instances it sampled: for make bench.
    public let lastPass = Mutex<(cpuMicros: Double, instances: Int)>((0, 0))

    public init(dataDir: URL, interval: Double = 10) {
        self.interval = interval
        let dir = dataDir.appendingPathComponent("metrics")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        hostFilePath = dir.appendingPathComponent("host.tsdb").path
    }

    static func filePath(workDir: String) -> String { workDir + "/metrics.tsdb" }

    static func monotonicNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// The instance's file for reading (nil when it was never sampled).
    func file(instance id: String, workDir: String) -> TimeSeriesFile? {
        if let f = tracked.withLock({ $0[id]?.file }) { return f }
        let path = Self.filePath(workDir: workDir)
        guard FileManager.default.fileExists(atPath: path), let names = TimeSeriesFile.seriesNames(path: path) else { return nil }
        return try? TimeSeriesFile(path: path, series: names)
    }

    func hostFile() -> TimeSeriesFile? {
        if let f = host.withLock({ $0.file }) { return f }
        let f = try? TimeSeriesFile(path: hostFilePath, series: HostSeries.names)
        host.withLock { $0.file = f }
        return f
    }

    /// Records one sample of an instance's VMM.
    func record(instance id: String, workDir: String, _ cur: RawSample) {
        var t = tracked.withLock { $0[id] } ?? Tracked(values: [:])
        let names = InstanceSeries.names(for: cur)
        if t.file?.series != names {
            t.file = try? TimeSeriesFile(path: Self.filePath(workDir: workDir), series: names)
        }
        let values = InstanceSeries.values(names, prev: t.last, cur: cur)
        t.file?.record(time: cur.wall, values)
        t.previous = t.last
        t.last = cur
        t.values = Dictionary(uniqueKeysWithValues: zip(names, values).compactMap { n, v in v.map { (n, $0) } })
        tracked.withLock { $0[id] = t }
    }

    /// Records the host's sample; `states` counts instances by state.
    func recordHost(time: Int, stat: String?, meminfo: String?, ksmPagesSharing: Int?, balloonMiB: Int, states: [String: Int]) {
        guard let file = hostFile() else { return }
        var v: [String: Double] = [:]
        let cpu = stat.flatMap(HostSeries.cpuJiffies)
        host.withLock { h in
            if let cpu, let before = h.cpu, cpu.total > before.total {
                v["cpu_percent"] = 100 * Double(cpu.busy &- before.busy) / Double(cpu.total - before.total)
            }
            h.cpu = cpu
        }
        if let m = meminfo, let total = HostSeries.meminfo(m, "MemTotal"), let available = HostSeries.meminfo(m, "MemAvailable") {
            v["memory.used_mib"] = Double(total - min(available, total)) / 1024
            v["memory.available_mib"] = Double(available) / 1024
        }
        if let k = ksmPagesSharing { v["memory.ksm_saved_mib"] = Double(k) * 4096 / 1_048_576 }
        v["memory.balloon_reclaimed_mib"] = Double(balloonMiB)
        for s in HostSeries.states { v["instances.\(s)"] = Double(states[s] ?? 0) }
        file.record(time: time, HostSeries.names.map { v[$0] })
        host.withLock { $0.values = v }
    }

    /// Forgets an instance whose VMM is gone (its file stays with its work directory).
    func forget(_ id: String) { _ = tracked.withLock { $0.removeValue(forKey: id) } }

    /// The last sample of each instance still tracked, with the series values it gave.
    func latest() -> [String: (sample: RawSample, values: [String: Double])] {
        tracked.withLock { t in t.compactMapValues { x in x.last.map { ($0, x.values) } } }
    }

    func hostLatest() -> [String: Double] { host.withLock { $0.values } }
}

extension TimeSeriesFile {
    /// The series a file was made for (to read it without knowing the instance's devices).
    static func seriesNames(path: String) -> [String]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return readHeader(fd)?.series
    }
}

extension Service {
    /// One pass: every running instance's VMM, then the host. Blocking reads of control sockets and /proc:
    /// only ever on the monitoring thread.
    public func samplePass() {
        let started = Self.threadCPUMicros()
        let live = processes.withLock { $0 }
        let wall = Int(Date().timeIntervalSince1970)
        let pass = monitoring.samples.add(1, ordering: .relaxed).newValue
        // The guest's memory statistics are fresh when the balloon pass asks for them; otherwise ask
        // about once a minute (the driver answers in its own time, up to 1 s).
        let refreshBalloon = !balloonPolicy().enabled && (pass % max(1, Int(60 / monitoring.interval))) == 1
        var sampled = 0
        for (id, p) in live {
            guard let rec = try? store.instance(id), rec.instance.state == .running || rec.instance.state == .stopping else { continue }
            let vmm = launcher.handle(workDir: URL(fileURLWithPath: rec.workDir))
            guard let stats = try? vmm.stats() else { continue }
            let balloon = try? vmm.balloon(refresh: refreshBalloon)
            monitoring.record(
                instance: id, workDir: rec.workDir,
                RawSample(monotonic: Monitoring.monotonicNanos(), wall: wall, pid: p.pid, stats: stats, balloon: balloon))
            sampled += 1
        }
        for id in monitoring.latest().keys where live[id] == nil { monitoring.forget(id) }
        var states: [String: Int] = [:]
        if let counts = try? store.read({ db in try Row.fetchAll(db, sql: "SELECT state, COUNT(*) AS n FROM instances GROUP BY state") }) {
            for r in counts { states[r["state"] as String] = r["n"] as Int }
        }
        let balloons = balloonState.withLock { $0.seen.reduce(0) { $0 + $1.actualMiB } }
        monitoring.recordHost(
            time: wall, stat: try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
            meminfo: try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8), ksmPagesSharing: ksm.read("pages_sharing"),
            balloonMiB: balloons, states: states)
        monitoring.lastPass.withLock { $0 = (Self.threadCPUMicros() - started, sampled) }
        evaluateAlarms(at: wall)
    }

    /// CPU time of the calling thread in µs.
    static func threadCPUMicros() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) * 1e6 + Double(ts.tv_nsec) / 1e3
    }

    /// Starts sampling on a thread of its own, every `monitoring.interval` seconds, aligned to the wall clock.
    public func startSampling() {
        let generation = monitoring.generation.add(1, ordering: .sequentiallyConsistent).newValue
        let interval = monitoring.interval
        // A named thread of its own (its CPU time is what make bench charges the sampler).
        let body: @Sendable () -> Void = { [weak self] in
            while let s = self, s.monitoring.generation.load(ordering: .sequentiallyConsistent) == generation {
                s.samplePass()
                let now = Date().timeIntervalSince1970
                let next = (now / interval).rounded(.down) * interval + interval
                // Sleep in short steps so that a stop is noticed.
                while let s = self, s.monitoring.generation.load(ordering: .sequentiallyConsistent) == generation,
                    Date().timeIntervalSince1970 < next
                {
                    Thread.sleep(forTimeInterval: min(0.2, next - Date().timeIntervalSince1970))
                }
            }
        }
        if (try? OSThread.spawn(name: "kumod-metrics", body)) == nil {
            FileHandle.standardError.write(Data("kumod: cannot start the metrics thread: monitoring is off\n".utf8))
        }
    }

    public func stopSampling() { monitoring.generation.add(1, ordering: .sequentiallyConsistent) }
}

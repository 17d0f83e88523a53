// KSM for instances that ask for memory dedup, and its trust domain.
//
// KSM merges identical pages across every MADV_MERGEABLE mapping on the host; a merged page is shared
// copy-on-write, so writing to it takes measurably longer, and that difference lets one VM learn what
// another VM's memory holds (the documented KSM side channels). Merging therefore stays inside one
// trust domain: one tenant. kumod offers guest RAM to KSM (kumo-vmm's memory_dedup) only for the
// tenant that holds the host's KSM domain — the tenant of the instances already running with dedup;
// another tenant's instance asking for dedup then runs without it, and its state reason says so.
// The domain frees itself when the last dedup instance stops.
//
// The tuner (as ksmtuned and oVirt MoM do) starts ksmd while dedup instances run and stops it when
// none do, and scans harder when host memory runs low.
import Foundation
import Synchronization
import KumoAPI

public final class KSMTuner: Sendable {
    public let dir: String
    /// pages_to_scan when host memory is plentiful; ten times that (at most 5000) when it is short.
    public let basePagesToScan: Int
    /// Host free memory (MemAvailable / MemTotal) under which the tuner scans harder.
    public let lowMemoryFraction: Double
    /// Whether kumod drives KSM at all (off: it only marks guest RAM and reports).
    public let enabled: Bool

    struct State {
        var active: [String: String] = [:]  // instance id → tenant id
        var turnedOn = false
        var decisions: [String] = []
    }
    let state = Mutex(State())

    public init(dir: String = "/sys/kernel/mm/ksm", basePagesToScan: Int = 100, lowMemoryFraction: Double = 0.2, enabled: Bool = true) {
        self.dir = dir; self.basePagesToScan = basePagesToScan; self.lowMemoryFraction = lowMemoryFraction
        self.enabled = enabled && FileManager.default.fileExists(atPath: dir + "/run")
    }

    /// Whether an instance of `tenant` may merge now: yes when no other tenant's instance runs with dedup.
    public func admit(_ id: String, tenant: String) -> Bool {
        state.withLock { s in
            if let other = s.active.first(where: { $0.key != id && $0.value != tenant }) {
                s.decisions.append("\(Store.now()) \(id): dedup suspended (the KSM domain belongs to tenant \(other.value))")
                return false
            }
            s.active[id] = tenant
            return true
        }
    }

    public func remove(_ id: String) { state.withLock { _ = $0.active.removeValue(forKey: id) } }

    public var activeInstances: [String: String] { state.withLock { $0.active } }

    func read(_ name: String) -> Int? {
        (try? String(contentsOfFile: dir + "/" + name, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    func write(_ name: String, _ v: Int) -> Bool {
        guard let h = FileHandle(forWritingAtPath: dir + "/" + name) else { return false }
        defer { try? h.close() }
        return (try? h.write(contentsOf: Data("\(v)".utf8))) != nil
    }

    /// Host memory available, as a fraction of the total (/proc/meminfo).
    public static func freeFraction() -> Double {
        guard let m = Service.meminfo() else { return 1 }
        return Double(m.available) / Double(m.total)
    }

    /// One pass: ksmd on with settings for the host's free memory while dedup instances run, off when none do.
    public func tune(freeFraction: Double = KSMTuner.freeFraction()) {
        guard enabled else { return }
        let (count, turnedOn) = state.withLock { ($0.active.count, $0.turnedOn) }
        if count > 0 {
            let low = freeFraction < lowMemoryFraction
            let pages = low ? min(basePagesToScan * 10, 5000) : basePagesToScan
            let sleep = low ? 10 : 20
            var changed: [String] = []
            if read("run") != 1, write("run", 1) { changed.append("ksmd started") }
            if read("pages_to_scan") != pages, write("pages_to_scan", pages) { changed.append("pages_to_scan \(pages)") }
            if read("sleep_millisecs") != sleep, write("sleep_millisecs", sleep) { changed.append("sleep_millisecs \(sleep)") }
            state.withLock { s in
                s.turnedOn = true
                if !changed.isEmpty {
                    s.decisions.append(
                        "\(Store.now()) \(count) dedup instance(s), host memory \(Int(freeFraction * 100)) % free\(low ? " (low)" : ""): "
                            + changed.joined(separator: ", "))
                }
            }
        } else if turnedOn {
            _ = write("run", 0)
            state.withLock { s in
                s.turnedOn = false
                s.decisions.append("\(Store.now()) no dedup instance running: ksmd stopped")
            }
        }
        state.withLock { s in if s.decisions.count > 50 { s.decisions.removeFirst(s.decisions.count - 50) } }
    }

    public func report(tenantName: (String) -> String?) -> HostKSM {
        let s = state.withLock { $0 }
        return HostKSM(
            run: read("run") ?? 0, pagesToScan: read("pages_to_scan") ?? 0, sleepMillisecs: read("sleep_millisecs") ?? 0,
            pagesShared: read("pages_shared") ?? 0, pagesSharing: read("pages_sharing") ?? 0,
            generalProfit: read("general_profit").map(Int64.init), domainTenant: s.active.values.first.flatMap(tenantName),
            dedupInstances: s.active.keys.sorted(), decisions: s.decisions)
    }
}

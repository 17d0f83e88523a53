// Memory across the host: the balloon policy and its pass over running instances, KSM's report.
import Foundation
import KumoAPI
import GRDB
import Synchronization
import HostCPUs
import VMMContract

extension Service {
    // MARK: balloon policy

    public func balloonPolicy() -> BalloonPolicy {
        guard let s = try? store.setting("balloon"), let p = try? JSONDecoder().decode(BalloonPolicy.self, from: Data(s.utf8)) else {
            return BalloonPolicy()
        }
        return p
    }

    /// The whole policy at once (under the same lock as partial updates).
    public func setBalloonPolicy(_ p: BalloonPolicy, by who: Store.Principal) throws(APIError) -> BalloonPolicy {
        try updateBalloonPolicy(by: who) { _ in p }
    }

    /// A partial update: `merge` gets the policy in force and returns the new one (the API decodes the
    /// request's fields onto it); validated and stored under one lock.
    public func updateBalloonPolicy(
        by who: Store.Principal,
        _ merge: (BalloonPolicy) throws(APIError) -> BalloonPolicy
    ) throws(APIError) -> BalloonPolicy {
        try requireAdmin(who)
        return try balloonPolicyUpdates.withLock { _ throws(APIError) in
            let v = try merge(balloonPolicy()).validated()
            let data = try! JSONEncoder().encode(v)
            try wrap { try store.setSetting("balloon", String(decoding: data, as: UTF8.self)) }
            return v
        }
    }

    public func hostBalloons() -> HostBalloons {
        let s = balloonState.withLock { $0 }
        return HostBalloons(policy: balloonPolicy(), hostFreePercent: s.free, instances: s.seen, decisions: s.decisions)
    }

    /// One pass: every running instance's balloon and guest statistics, the policy's decisions, applied.
    public func balloonPass(meminfo: (available: Int, total: Int)? = Service.meminfo()) {
        let policy = balloonPolicy()
        var f = Store.Filter()
        f.states = [.running]
        var seen: [Balloons.Observed] = []
        var handles: [String: any VMMHandle] = [:]
        let shares = Dictionary(((try? store.types()) ?? []).map { ($0.name, $0.memoryShares ?? 1024) }, uniquingKeysWith: { a, _ in a })
        for rec in ((try? store.instances(f, limit: 1_000_000).0) ?? []) {
            let vmm = launcher.handle(workDir: URL(fileURLWithPath: rec.workDir))
            guard let b = try? vmm.balloon(refresh: true) else { continue }
            let free = b.stats["free_memory"].map { Int($0 >> 20) }
            seen.append(
                Balloons.Observed(
                    id: rec.instance.id, memoryMiB: rec.instance.memoryMiB, targetMiB: b.targetMiB,
                    actualMiB: b.actualMiB, guestFreeMiB: b.driverReady ? free : nil,
                    shares: shares[rec.instance.type] ?? 1024))
            handles[rec.instance.id] = vmm
        }
        let decisions = meminfo.map { Balloons.decide(policy: policy, hostAvailableMiB: $0.available, hostTotalMiB: $0.total, instances: seen) } ?? []
        var log: [String] = []
        for d in decisions {
            guard let vmm = handles[d.id] else { continue }
            let ok = (try? vmm.setBalloon(targetMiB: d.targetMiB)) != nil
            log.append("\(Store.now()) " + d.why + (ok ? "" : " (the VMM refused)"))
        }
        let free = meminfo.map { 100.0 * Double($0.available) / Double(max($0.total, 1)) }
        balloonState.withLock { s in
            s.seen = seen.map {
                HostBalloons.Seen(instance: $0.id, memoryMiB: $0.memoryMiB, targetMiB: $0.targetMiB, actualMiB: $0.actualMiB, guestFreeMiB: $0.guestFreeMiB)
            }
            s.free = free
            s.decisions += log
            if s.decisions.count > 100 { s.decisions.removeFirst(s.decisions.count - 100) }
        }
        for l in log { FileHandle.standardOutput.write(Data("kumod: balloon: \(l)\n".utf8)) }
    }

    /// (MemAvailable, MemTotal) in MiB.
    public static func meminfo() -> (available: Int, total: Int)? {
        guard let h = FileHandle(forReadingAtPath: "/proc/meminfo") else { return nil }
        defer { try? h.close() }
        var total = 0, avail = 0
        for line in String(decoding: h.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 2, let v = Int(f[1]) else { continue }
            if f[0] == "MemTotal:" { total = v >> 10 } else if f[0] == "MemAvailable:" { avail = v >> 10 }
        }
        return total > 0 ? (avail, total) : nil
    }

    /// The balloon pass every `seconds`, on its own queue, while the monitor's generation holds.
    func startBalloonLoop(every seconds: Double = 5) {
        let generation = monitorGeneration.load(ordering: .sequentiallyConsistent)
        @Sendable func pass(_ service: Service?) {
            guard let service, service.monitorGeneration.load(ordering: .sequentiallyConsistent) == generation else { return }
            if service.balloonPolicy().enabled { service.balloonPass() }
            service.balloonQueue.asyncAfter(deadline: .now() + seconds) { [weak service] in pass(service) }
        }
        balloonQueue.asyncAfter(deadline: .now() + seconds) { [weak self] in pass(self) }
    }

    public func hostKSM() -> HostKSM {
        ksm.report { try? self.store.tenantName($0) }
    }

    /// Per-vCPU statistics of a running instance, from its VMM's control socket (`vm.stats`).
}

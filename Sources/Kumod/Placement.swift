// Placement on one host, Nova's way: capacity = (total − reserved) × allocation ratio, for vCPUs and
// for RAM; an instance holds its type's vCPUs and RAM from RunInstances (pending) until it stops.
// A request that does not fit is refused with a message that says which resource is short, by how
// much, and what uses it.
import Foundation
import KumoAPI

public struct HostResources: Sendable, Equatable {
    public var logicalCPUs: Int
    public var memoryMiB: Int
    public init(logicalCPUs: Int, memoryMiB: Int) { self.logicalCPUs = logicalCPUs; self.memoryMiB = memoryMiB }

    /// This machine: online logical CPUs and MemTotal.
    public static func detect() -> HostResources {
        let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        var mib = 0
        if let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemTotal:") }),
            let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])
        {
            mib = kib / 1024
        }
        return HostResources(logicalCPUs: max(cpus, 1), memoryMiB: mib)
    }
}

public enum Placement {
    public struct Holder: Sendable {
        public var id: String, type: String, vcpus: Int, memoryMiB: Int, tenantID: String
        /// Host CPUs given to this instance alone (a dedicated instance); empty for a shared one.
        public var dedicatedCPUs: [Int]
        public init(id: String, type: String, vcpus: Int, memoryMiB: Int, tenantID: String, dedicatedCPUs: [Int] = []) {
            self.id = id; self.type = type; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.tenantID = tenantID
            self.dedicatedCPUs = dedicatedCPUs
        }
    }

    /// `base × ratio`, rounded down, never negative and never past 2^40 (a policy read back from the
    /// store is not trusted to be sane).
    static func scaled(_ base: Int, _ ratio: Double) -> Int {
        let v = (Double(max(base, 0)) * ratio).rounded(.down)
        guard !v.isNaN, v > 0 else { return 0 }
        return v >= Double(1 << 40) ? 1 << 40 : Int(v)
    }

    public static func capacity(host: HostResources, policy: PlacementPolicy, holders: [Holder]) -> Capacity {
        let placeable = Array(min(max(policy.reservedCPUs, 0), host.logicalCPUs)..<host.logicalCPUs)
        let dedicated = Set(holders.flatMap(\.dedicatedCPUs)).intersection(placeable).sorted()
        let shared = placeable.filter { !dedicated.contains($0) }
        let vcpus = scaled(shared.count, policy.cpuAllocationRatio)
        let mem = scaled(host.memoryMiB - policy.reservedHostMemoryMiB, policy.ramAllocationRatio)
        var c = Capacity(
            vcpusTotal: vcpus, vcpusUsed: holders.filter { $0.dedicatedCPUs.isEmpty }.reduce(0) { $0 + $1.vcpus },
            memoryMiBTotal: mem, memoryMiBUsed: holders.reduce(0) { $0 + $1.memoryMiB },
            logicalCPUs: host.logicalCPUs, hostMemoryMiB: host.memoryMiB, policy: policy)
        c.placeableCPUs = placeable; c.dedicatedCPUs = dedicated; c.sharedCPUs = shared
        c.vcpuOvercommit = shared.isEmpty ? 0 : (Double(c.vcpusUsed) / Double(shared.count) * 100).rounded() / 100
        return c
    }

    /// Fills in how many more of each type fit (shared), with and without the measured savings.
    public static func withFits(_ cap: Capacity, types: [InstanceType], ksmSavedMiB: Int, balloonReclaimedMiB: Int) -> Capacity {
        var c = cap
        c.ksmSavedMiB = ksmSavedMiB; c.balloonReclaimedMiB = balloonReclaimedMiB
        let cpuFree = max(c.vcpusFree, 0), memFree = max(c.memoryMiBFree, 0)
        let bonus = scaled(ksmSavedMiB + balloonReclaimedMiB, c.policy.ramAllocationRatio)
        for t in types where t.vcpus > 0 && t.memoryMiB > 0 {
            c.fits[t.name] = min(cpuFree / t.vcpus, memFree / t.memoryMiB)
            c.fitsWithSavings[t.name] = min(cpuFree / t.vcpus, (memFree + bonus) / t.memoryMiB)
        }
        return c
    }

    /// Host CPUs for `count` dedicated instances of `vcpus` each, taken from the shared set's top
    /// (the lowest-numbered CPUs stay shared, where the host's own work tends to run), or the refusal.
    /// The shared instances must still fit on what stays shared, and keep at least one CPU.
    public static func dedicate(
        type: InstanceType, count: Int, host: HostResources, policy: PlacementPolicy,
        holders: [Holder]
    ) throws(APIError) -> [[Int]] {
        let cap = capacity(host: host, policy: policy, holders: holders)
        let need = type.vcpus * count
        let sharedUse = cap.vcpusUsed
        let keep = sharedUse > 0 ? 1 : 0
        guard need <= cap.sharedCPUs.count - keep else {
            throw APIError(
                code: "insufficient_capacity",
                message: "not enough host CPUs to dedicate — \(count) × \(type.name) (dedicated) need \(need) CPU(s) of their own; "
                    + "\(cap.placeableCPUs.count) placeable (\(host.logicalCPUs) logical − \(policy.reservedCPUs) reserved), "
                    + "\(cap.dedicatedCPUs.count) already dedicated (\(CPUListText(cap.dedicatedCPUs))), "
                    + "\(cap.sharedCPUs.count) shared" + (keep > 0 ? ", of which 1 must stay shared for the \(sharedUse) shared vCPU(s) running" : "")
                    + ". Stop a dedicated instance or run this one shared.")
        }
        let remaining = cap.sharedCPUs.count - need
        guard sharedUse <= scaled(remaining, policy.cpuAllocationRatio) else {
            throw APIError(
                code: "insufficient_capacity",
                message:
                    "dedicating \(need) CPU(s) would leave \(remaining) shared CPU(s): \(scaled(remaining, policy.cpuAllocationRatio)) shared vCPUs "
                    + "under cpu_allocation_ratio \(policy.cpuAllocationRatio), but \(sharedUse) are in use. Stop shared instances or run this one shared."
            )
        }
        let take = Array(cap.sharedCPUs.suffix(need).reversed())
        return (0..<count).map { i in Array(take[(i * type.vcpus)..<((i + 1) * type.vcpus)]).sorted() }
    }

    static func CPUListText(_ cpus: [Int]) -> String { cpus.isEmpty ? "none" : cpus.map(String.init).joined(separator: ",") }

    /// Throws `insufficient_capacity` when `count` instances of `type` do not fit beside `holders`.
    /// Instances of other tenants are counted but not named to `tenantID` (unless `admin`).
    public static func check(
        type: InstanceType, count: Int, host: HostResources, policy: PlacementPolicy,
        holders: [Holder], tenantID: String, admin: Bool, dedicated: Bool = false
    ) throws(APIError) {
        let cap = capacity(host: host, policy: policy, holders: holders)
        let needCPU = dedicated ? 0 : type.vcpus * count, needMem = type.memoryMiB * count
        var short: [String] = []
        if needMem > cap.memoryMiBFree {
            short.append(
                "memory: \(count) × \(type.name) need \(needMem) MiB, \(max(cap.memoryMiBFree, 0)) MiB free, short by "
                    + "\(needMem - max(cap.memoryMiBFree, 0)) MiB "
                    + "(capacity \(cap.memoryMiBTotal) MiB = (\(host.memoryMiB) MiB RAM − \(policy.reservedHostMemoryMiB) MiB reserved) × "
                    + "ram_allocation_ratio \(policy.ramAllocationRatio); \(cap.memoryMiBUsed) MiB in use)"
            )
        }
        if needCPU > cap.vcpusFree {
            short.append(
                "vCPUs: \(count) × \(type.name) need \(needCPU), \(max(cap.vcpusFree, 0)) free, short by \(needCPU - max(cap.vcpusFree, 0)) "
                    + "(capacity \(cap.vcpusTotal) = (\(host.logicalCPUs) logical CPUs − \(policy.reservedCPUs) reserved − "
                    + "\(cap.dedicatedCPUs.count) dedicated) × cpu_allocation_ratio \(policy.cpuAllocationRatio); \(cap.vcpusUsed) in use)"
            )
        }
        guard !short.isEmpty else { return }
        let mine = holders.filter { admin || $0.tenantID == tenantID }
        let others = holders.filter { !(admin || $0.tenantID == tenantID) }
        var users: [String] = mine.sorted { $0.memoryMiB > $1.memoryMiB }.prefix(10).map { "\($0.id) (\($0.type): \($0.vcpus) vCPU, \($0.memoryMiB) MiB)" }
        if mine.count > 10 { users.append("and \(mine.count - 10) more") }
        if !others.isEmpty {
            users.append(
                "\(others.count) instance(s) of other tenants (\(others.reduce(0) { $0 + $1.vcpus }) vCPU, \(others.reduce(0) { $0 + $1.memoryMiB }) MiB)")
        }
        let used = users.isEmpty ? "nothing else runs here" : "in use by " + users.joined(separator: ", ")
        throw APIError(
            code: "insufficient_capacity",
            message: "not enough capacity on this host — " + short.joined(separator: "; ") + "; \(used). "
                + "Stop or delete instances, pick a smaller type, or raise the allocation ratio (admin).")
    }
}

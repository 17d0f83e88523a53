// The host as the REST API shows it: placement and capacity, KSM, balloon reclaim.
import Foundation

/// How much of the host instances may take: the allocation ratios and what is kept back for the host.
public struct PlacementPolicy: Codable, Sendable, Equatable {
    public var cpuAllocationRatio = 4.0
    public var ramAllocationRatio = 1.0
    public var reservedHostMemoryMiB = 512
    public var reservedCPUs = 0
    public init() {}
    enum CodingKeys: String, CodingKey {
        case cpuAllocationRatio = "cpu_allocation_ratio", ramAllocationRatio = "ram_allocation_ratio"
        case reservedHostMemoryMiB = "reserved_host_memory_mib", reservedCPUs = "reserved_cpus"
    }
}

public struct Capacity: Codable, Sendable, Equatable {
    /// Shared vCPU capacity: the shared CPUs × cpu_allocation_ratio, and the shared instances' vCPUs.
    public var vcpusTotal: Int
    public var vcpusUsed: Int
    /// Host CPUs instances may use (logical CPUs less the reserved ones, which are the lowest-numbered),
    /// those given to dedicated instances (never overcommitted), and the rest: the shared set.
    public var placeableCPUs: [Int] = []
    public var dedicatedCPUs: [Int] = []
    public var sharedCPUs: [Int] = []
    /// Shared vCPUs allocated per shared host CPU (the overcommit in force; the ratio is its ceiling).
    public var vcpuOvercommit: Double = 0
    /// Memory the host got back, measured: KSM (pages_sharing) and inflated balloons, in MiB.
    public var ksmSavedMiB: Int = 0
    public var balloonReclaimedMiB: Int = 0
    /// How many more of each instance type fit: by allocation (Nova's way), and counting the measured
    /// savings as memory (an explicit overcommit an operator may choose).
    public var fits: [String: Int] = [:]
    public var fitsWithSavings: [String: Int] = [:]
    public var memoryMiBTotal: Int
    public var memoryMiBUsed: Int
    public var logicalCPUs: Int
    public var hostMemoryMiB: Int
    public var policy: PlacementPolicy
    public init(
        vcpusTotal: Int, vcpusUsed: Int, memoryMiBTotal: Int, memoryMiBUsed: Int, logicalCPUs: Int, hostMemoryMiB: Int,
        policy: PlacementPolicy
    ) {
        self.vcpusTotal = vcpusTotal; self.vcpusUsed = vcpusUsed; self.memoryMiBTotal = memoryMiBTotal
        self.memoryMiBUsed = memoryMiBUsed; self.logicalCPUs = logicalCPUs; self.hostMemoryMiB = hostMemoryMiB; self.policy = policy
    }
    enum CodingKeys: String, CodingKey {
        case vcpusTotal = "vcpus_total", vcpusUsed = "vcpus_used", memoryMiBTotal = "memory_mib_total"
        case memoryMiBUsed = "memory_mib_used", logicalCPUs = "logical_cpus", hostMemoryMiB = "host_memory_mib", policy
        case placeableCPUs = "placeable_cpus", dedicatedCPUs = "dedicated_cpus", sharedCPUs = "shared_cpus"
        case vcpuOvercommit = "vcpu_overcommit", ksmSavedMiB = "ksm_saved_mib", balloonReclaimedMiB = "balloon_reclaimed_mib"
        case fits, fitsWithSavings = "fits_with_savings"
    }
    public var vcpusFree: Int { vcpusTotal - vcpusUsed }
    public var memoryMiBFree: Int { memoryMiBTotal - memoryMiBUsed }
}

/// The host's KSM as kumod runs it: the daemon's settings, host totals, and the trust domain.
public struct HostKSM: Codable, Sendable, Equatable {
    public var run: Int
    public var pagesToScan: Int
    public var sleepMillisecs: Int
    public var pagesShared: Int
    public var pagesSharing: Int
    /// Bytes saved after KSM's own metadata (general_profit), where the kernel reports it.
    public var generalProfit: Int64?
    /// The tenant whose instances may merge on this host now (nil: none running with dedup).
    public var domainTenant: String?
    /// Running instances whose guest RAM is offered to KSM.
    public var dedupInstances: [String]
    /// The tuner's recent decisions, newest last.
    public var decisions: [String]
    public init(
        run: Int, pagesToScan: Int, sleepMillisecs: Int, pagesShared: Int, pagesSharing: Int, generalProfit: Int64?,
        domainTenant: String?, dedupInstances: [String], decisions: [String]
    ) {
        self.run = run; self.pagesToScan = pagesToScan; self.sleepMillisecs = sleepMillisecs; self.pagesShared = pagesShared
        self.pagesSharing = pagesSharing; self.generalProfit = generalProfit; self.domainTenant = domainTenant
        self.dedupInstances = dedupInstances; self.decisions = decisions
    }
    enum CodingKeys: String, CodingKey {
        case run, decisions
        case pagesToScan = "pages_to_scan", sleepMillisecs = "sleep_millisecs", pagesShared = "pages_shared"
        case pagesSharing = "pages_sharing", generalProfit = "general_profit", domainTenant = "domain_tenant"
        case dedupInstances = "dedup_instances"
    }
}

/// kumod's balloon reclaim policy: when host memory runs short it inflates the balloons of the instances
/// with the most idle guest memory, in bounded steps and never below each instance's floor; when the
/// pressure is gone it deflates them (see Kumod's `Balloons.decide`).
public struct BalloonPolicy: Codable, Sendable, Equatable {
    /// Off by default: an operator turns reclaim on (PUT /v1/host/balloon-policy).
    public var enabled = false
    /// Inflate while host MemAvailable is under this percent of MemTotal …
    public var lowFreePercent = 10.0
    /// … and deflate once it is above this one (hysteresis between them).
    public var highFreePercent = 20.0
    /// At most this much per instance per pass.
    public var stepMiB = 64
    /// Never take more than (100 − floor) percent of an instance's RAM: it keeps at least floor percent.
    public var floorPercent = 50.0
    /// Guest free memory left alone in each guest (its page cache and bursts need room).
    public var guestReserveMiB = 64
    public init() {}
    enum CodingKeys: String, CodingKey, CaseIterable {
        case enabled, lowFreePercent = "low_free_percent", highFreePercent = "high_free_percent", stepMiB = "step_mib"
        case floorPercent = "floor_percent", guestReserveMiB = "guest_reserve_mib"
    }

    /// The policy a decoded request starts from (JSONDecoder.userInfo): fields a request leaves out keep
    /// these values (kumod passes the policy in force); without it, the defaults.
    public static let baseKey = CodingUserInfoKey(rawValue: "kumo.balloonPolicy.base")!

    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// Fields left out keep the base's values; an unknown field is an error (a misspelt one would
    /// otherwise be ignored without a word).
    public init(from decoder: any Decoder) throws {
        let known = Set(CodingKeys.allCases.map(\.stringValue))
        if let unknown = try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue).first(where: { !known.contains($0) }) {
            throw DecodingError.dataCorrupted(
                .init(codingPath: [], debugDescription: "unknown field \"\(unknown)\" (known: \(known.sorted().joined(separator: ", ")))"))
        }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = decoder.userInfo[Self.baseKey] as? BalloonPolicy ?? BalloonPolicy()
        enabled = try c.decodeIfPresent(Bool.self, forKey: .enabled) ?? d.enabled
        lowFreePercent = try c.decodeIfPresent(Double.self, forKey: .lowFreePercent) ?? d.lowFreePercent
        highFreePercent = try c.decodeIfPresent(Double.self, forKey: .highFreePercent) ?? d.highFreePercent
        stepMiB = try c.decodeIfPresent(Int.self, forKey: .stepMiB) ?? d.stepMiB
        floorPercent = try c.decodeIfPresent(Double.self, forKey: .floorPercent) ?? d.floorPercent
        guestReserveMiB = try c.decodeIfPresent(Int.self, forKey: .guestReserveMiB) ?? d.guestReserveMiB
    }

    public func validated() throws(APIError) -> BalloonPolicy {
        guard lowFreePercent > 0, lowFreePercent < highFreePercent, highFreePercent < 100, (1...4096).contains(stepMiB),
            floorPercent >= 10, floorPercent <= 100, (0...65536).contains(guestReserveMiB)
        else {
            throw APIError(
                code: "invalid_argument",
                message: "need 0 < low_free_percent < high_free_percent < 100, step_mib 1–4096, floor_percent 10–100, guest_reserve_mib 0–65536")
        }
        return self
    }
}

/// kumod's balloon reclaim: its policy, the instances' balloons as last seen, its decisions.
public struct HostBalloons: Codable, Sendable, Equatable {
    public struct Seen: Codable, Sendable, Equatable {
        public var instance: String
        public var memoryMiB: Int
        public var targetMiB: Int
        public var actualMiB: Int
        public var guestFreeMiB: Int?
        public init(instance: String, memoryMiB: Int, targetMiB: Int, actualMiB: Int, guestFreeMiB: Int?) {
            self.instance = instance; self.memoryMiB = memoryMiB; self.targetMiB = targetMiB; self.actualMiB = actualMiB; self.guestFreeMiB = guestFreeMiB
        }
        enum CodingKeys: String, CodingKey {
            case instance, memoryMiB = "memory_mib", targetMiB = "target_mib", actualMiB = "actual_mib", guestFreeMiB = "guest_free_mib"
        }
    }
    /// The policy in force.
    public var policy: BalloonPolicy
    public var hostFreePercent: Double?
    public var instances: [Seen]
    public var decisions: [String]
    public init(policy: BalloonPolicy, hostFreePercent: Double?, instances: [Seen], decisions: [String]) {
        self.policy = policy; self.hostFreePercent = hostFreePercent; self.instances = instances; self.decisions = decisions
    }
    enum CodingKeys: String, CodingKey { case policy, instances, decisions, hostFreePercent = "host_free_percent" }
}

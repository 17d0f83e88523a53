// The REST resources of kumod, shared by the server and the `kumo` CLI. JSON field names are
// snake_case on the wire (see Sources/Kumod/openapi.yaml, the contract).
import Foundation

/// Lifecycle of an instance. `pending` → `starting` → `running` → `stopping` → `stopped`, plus
/// `error` (the VMM could not start, or died) and `deleted`.
public enum InstanceState: String, Codable, Sendable, CaseIterable {
    case pending, starting, running, stopping, stopped, error, deleted

    /// States whose instance holds host capacity (its vCPUs and RAM are reserved).
    public var holdsCapacity: Bool {
        switch self {
        case .pending, .starting, .running, .stopping: return true
        case .stopped, .error, .deleted: return false
        }
    }
}

public struct InstanceType: Codable, Sendable, Equatable {
    public var name: String
    public var vcpus: Int
    public var memoryMiB: Int
    /// Built-in types (kumo.small/medium/large) cannot be deleted.
    public var builtin: Bool
    /// CPU cap: each vCPU may use at most this percent of one host CPU (a cgroup CPU quota); nil: no cap.
    public var cpuCapPercent: Int?
    /// CPU shares: the instance's weight against others when host CPUs are contended (cgroup
    /// cpu.shares, 1024 being the default; cpu.weight on cgroup v2); nil: the default.
    public var cpuShares: Int?
    /// Memory shares: under host memory pressure, the balloon policy reclaims first from instances whose
    /// idle memory is largest per share (1024 the default); nil: the default.
    public var memoryShares: Int?
    public init(name: String, vcpus: Int, memoryMiB: Int, builtin: Bool = false, cpuCapPercent: Int? = nil, cpuShares: Int? = nil,
                memoryShares: Int? = nil) {
        self.name = name; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.builtin = builtin
        self.cpuCapPercent = cpuCapPercent; self.cpuShares = cpuShares; self.memoryShares = memoryShares
    }
    enum CodingKeys: String, CodingKey {
        case name, vcpus, memoryMiB = "memory_mib", builtin, cpuCapPercent = "cpu_cap_percent", cpuShares = "cpu_shares"
        case memoryShares = "memory_shares"
    }
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        vcpus = try c.decode(Int.self, forKey: .vcpus)
        memoryMiB = try c.decode(Int.self, forKey: .memoryMiB)
        builtin = try c.decodeIfPresent(Bool.self, forKey: .builtin) ?? false
        cpuCapPercent = try c.decodeIfPresent(Int.self, forKey: .cpuCapPercent)
        cpuShares = try c.decodeIfPresent(Int.self, forKey: .cpuShares)
        memoryShares = try c.decodeIfPresent(Int.self, forKey: .memoryShares)
    }

    public static let builtins = [InstanceType(name: "kumo.small", vcpus: 1, memoryMiB: 2048, builtin: true),
                                  InstanceType(name: "kumo.medium", vcpus: 2, memoryMiB: 4096, builtin: true),
                                  InstanceType(name: "kumo.large", vcpus: 4, memoryMiB: 8192, builtin: true)]
}

public struct Image: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var kernel: String
    public var initrd: String?
    public var rootDisk: String?
    /// Kernel command line the instance boots with (console and root are added by kumod).
    public var cmdline: String
    public var kernelFormat: String
    public var createdAt: String
    enum CodingKeys: String, CodingKey {
        case id, name, kernel, initrd, cmdline
        case rootDisk = "root_disk", kernelFormat = "kernel_format", createdAt = "created_at"
    }
    public init(id: String, name: String, kernel: String, initrd: String?, rootDisk: String?, cmdline: String,
                kernelFormat: String, createdAt: String) {
        self.id = id; self.name = name; self.kernel = kernel; self.initrd = initrd; self.rootDisk = rootDisk
        self.cmdline = cmdline; self.kernelFormat = kernelFormat; self.createdAt = createdAt
    }
}

/// One entry of an instance's state history.
public struct StateChange: Codable, Sendable, Equatable {
    public var state: InstanceState
    public var reason: String
    public var at: String
    public init(state: InstanceState, reason: String, at: String) { self.state = state; self.reason = reason; self.at = at }
}

public struct Instance: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var tenant: String
    public var type: String
    public var vcpus: Int
    public var memoryMiB: Int
    public var image: String
    public var state: InstanceState
    public var stateReason: String
    public var createdAt: String
    public var updatedAt: String
    public var launchedAt: String?
    public var reservation: String
    /// The kumo-vmm process while the instance has one.
    public var pid: Int?
    public var history: [StateChange]?
    /// Guest RAM offered to KSM (asked for at RunInstances; kumod may suspend it, see docs/KUMOD.md).
    public var memoryDedup: Bool?
    /// "shared" (vCPUs float over the shared host CPUs, overcommitted by the ratio) or "dedicated"
    /// (a host CPU of its own per vCPU, never shared or overcommitted).
    public var cpuPolicy: String?
    /// The host CPUs of a dedicated instance while it holds them ("3,2").
    public var dedicatedCPUs: String?
    enum CodingKeys: String, CodingKey {
        case id, name, tenant, type, vcpus, image, state, reservation, pid, history
        case memoryDedup = "memory_dedup", cpuPolicy = "cpu_policy", dedicatedCPUs = "dedicated_cpus"
        case memoryMiB = "memory_mib", stateReason = "state_reason", createdAt = "created_at"
        case updatedAt = "updated_at", launchedAt = "launched_at"
    }
    public init(id: String, name: String, tenant: String, type: String, vcpus: Int, memoryMiB: Int, image: String,
                state: InstanceState, stateReason: String, createdAt: String, updatedAt: String, launchedAt: String?,
                reservation: String, pid: Int?, history: [StateChange]? = nil) {
        self.id = id; self.name = name; self.tenant = tenant; self.type = type; self.vcpus = vcpus
        self.memoryMiB = memoryMiB; self.image = image; self.state = state; self.stateReason = stateReason
        self.createdAt = createdAt; self.updatedAt = updatedAt; self.launchedAt = launchedAt
        self.reservation = reservation; self.pid = pid; self.history = history
    }
}

// MARK: requests and responses

public struct RunInstancesRequest: Codable, Sendable, Equatable {
    public var type: String
    public var image: String
    public var count: Int?
    public var name: String?
    /// Stored for later use (cloud-init), base64 in JSON, at most 16 KiB decoded.
    public var userData: String?
    /// Idempotency token: the same token (per tenant) returns the first call's instances.
    public var clientToken: String?
    /// Offer guest RAM to KSM (off by default: merged pages are a timing side channel between VMs).
    public var memoryDedup: Bool?
    /// "shared" (the default) or "dedicated".
    public var cpuPolicy: String?
    enum CodingKeys: String, CodingKey {
        case type, image, count, name
        case userData = "user_data", clientToken = "client_token", memoryDedup = "memory_dedup", cpuPolicy = "cpu_policy"
    }
    public init(type: String, image: String, count: Int? = nil, name: String? = nil, userData: String? = nil, clientToken: String? = nil,
                memoryDedup: Bool? = nil, cpuPolicy: String? = nil) {
        self.type = type; self.image = image; self.count = count; self.name = name; self.userData = userData
        self.clientToken = clientToken; self.memoryDedup = memoryDedup; self.cpuPolicy = cpuPolicy
    }
}

public struct RunInstancesResponse: Codable, Sendable {
    public var reservation: String
    public var instances: [Instance]
    public init(reservation: String, instances: [Instance]) { self.reservation = reservation; self.instances = instances }
}

public struct InstanceList: Codable, Sendable {
    public var instances: [Instance]
    /// Pass back as `next_token` for the next page; absent on the last page.
    public var nextToken: String?
    enum CodingKeys: String, CodingKey { case instances, nextToken = "next_token" }
    public init(instances: [Instance], nextToken: String?) { self.instances = instances; self.nextToken = nextToken }
}

public struct RegisterImageRequest: Codable, Sendable {
    public var name: String
    public var kernel: String
    public var initrd: String?
    public var rootDisk: String?
    public var cmdline: String?
    enum CodingKeys: String, CodingKey { case name, kernel, initrd, cmdline, rootDisk = "root_disk" }
    public init(name: String, kernel: String, initrd: String? = nil, rootDisk: String? = nil, cmdline: String? = nil) {
        self.name = name; self.kernel = kernel; self.initrd = initrd; self.rootDisk = rootDisk; self.cmdline = cmdline
    }
}

/// Every error response: a machine-readable code, and a message that says what to do.
public struct APIError: Codable, Sendable, Error, Equatable {
    public var code: String
    public var message: String
    public init(code: String, message: String) { self.code = code; self.message = message }
}

public struct ErrorBody: Codable, Sendable {
    public var error: APIError
    public init(error: APIError) { self.error = error }
}

/// One vCPU of a running instance: its host thread, the host scheduler's view of it (from
/// /proc/PID/task/TID/schedstat: time on a CPU and time waiting on a run queue, the sign of CPU
/// contention), its VM exits by reason (kumo-vmm's counters, this boot) and KVM's own statistics
/// (KVM_GET_STATS_FD, where the host offers it).
public struct VCPUStats: Codable, Sendable, Equatable {
    public var vcpu: Int
    public var tid: Int
    public var cpusAllowed: String?
    public var cpuNs: UInt64?
    public var waitNs: UInt64?
    public var timeslices: UInt64?
    public var exitsTotal: UInt64
    public var exits: [String: UInt64]
    public var ioIn: UInt64, ioOut: UInt64, mmioRead: UInt64, mmioWrite: UInt64
    /// Instructions kumo-vmm emulated itself (the nested-KVM fallback): int3, fwait, ldmxcsr, stmxcsr.
    public var emulated: [String: UInt64]
    public var kvm: [String: UInt64]?
    public init(vcpu: Int, tid: Int, cpusAllowed: String?, cpuNs: UInt64?, waitNs: UInt64?, timeslices: UInt64?, exitsTotal: UInt64,
                exits: [String: UInt64], ioIn: UInt64, ioOut: UInt64, mmioRead: UInt64, mmioWrite: UInt64, emulated: [String: UInt64],
                kvm: [String: UInt64]?) {
        self.vcpu = vcpu; self.tid = tid; self.cpusAllowed = cpusAllowed; self.cpuNs = cpuNs; self.waitNs = waitNs
        self.timeslices = timeslices; self.exitsTotal = exitsTotal; self.exits = exits; self.ioIn = ioIn; self.ioOut = ioOut
        self.mmioRead = mmioRead; self.mmioWrite = mmioWrite; self.emulated = emulated; self.kvm = kvm
    }
    enum CodingKeys: String, CodingKey {
        case vcpu, tid, exits, emulated, kvm, timeslices
        case cpusAllowed = "cpus_allowed", cpuNs = "cpu_ns", waitNs = "wait_ns", exitsTotal = "exits_total"
        case ioIn = "io_in", ioOut = "io_out", mmioRead = "mmio_read", mmioWrite = "mmio_write"
    }
}

public struct InstanceStats: Codable, Sendable, Equatable {
    /// Guest memory as the host sees it, and KSM's savings on this VMM (/proc/PID/ksm_stat).
    public struct Memory: Codable, Sendable, Equatable {
        public var dedup: Bool
        public var rssKiB: UInt64
        public var guestResidentKiB: UInt64
        public var ksmMergingPages: UInt64?
        public var ksmProcessProfit: Int64?
        public init(dedup: Bool, rssKiB: UInt64, guestResidentKiB: UInt64, ksmMergingPages: UInt64?, ksmProcessProfit: Int64?) {
            self.dedup = dedup; self.rssKiB = rssKiB; self.guestResidentKiB = guestResidentKiB
            self.ksmMergingPages = ksmMergingPages; self.ksmProcessProfit = ksmProcessProfit
        }
        enum CodingKeys: String, CodingKey {
            case dedup, rssKiB = "rss_kib", guestResidentKiB = "guest_resident_kib"
            case ksmMergingPages = "ksm_merging_pages", ksmProcessProfit = "ksm_process_profit"
        }
    }
    public var instance: String
    public var vcpus: [VCPUStats]
    public var memory: Memory?
    public init(instance: String, vcpus: [VCPUStats], memory: Memory? = nil) { self.instance = instance; self.vcpus = vcpus; self.memory = memory }
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
    public init(run: Int, pagesToScan: Int, sleepMillisecs: Int, pagesShared: Int, pagesSharing: Int, generalProfit: Int64?,
                domainTenant: String?, dedupInstances: [String], decisions: [String]) {
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

/// One vCPU's pinning in a request: `cpus` a host CPU list ("0-1,3"), or null to unpin.
public struct VCPUPin: Codable, Sendable, Equatable {
    public var vcpu: Int
    public var cpus: String?
    public init(vcpu: Int, cpus: String?) { self.vcpu = vcpu; self.cpus = cpus }
}

public struct PinRequest: Codable, Sendable, Equatable {
    public var vcpus: [VCPUPin]
    public init(vcpus: [VCPUPin]) { self.vcpus = vcpus }
}

/// Where an instance's vCPUs may run: the pinning asked for, and (while it runs) each vCPU thread's
/// id and the CPUs the host scheduler allows it (Cpus_allowed_list).
public struct InstanceCPUs: Codable, Sendable, Equatable {
    public struct VCPU: Codable, Sendable, Equatable {
        public var vcpu: Int
        public var pinned: String?
        public var tid: Int?
        public var cpusAllowed: String?
        public init(vcpu: Int, pinned: String?, tid: Int?, cpusAllowed: String?) {
            self.vcpu = vcpu; self.pinned = pinned; self.tid = tid; self.cpusAllowed = cpusAllowed
        }
        enum CodingKeys: String, CodingKey { case vcpu, pinned, tid, cpusAllowed = "cpus_allowed" }
    }
    public var instance: String
    public var vcpus: [VCPU]
    public init(instance: String, vcpus: [VCPU]) { self.instance = instance; self.vcpus = vcpus }
}

/// GVA → GPA → HVA → HPA for one vCPU of a running instance (kumo-vmm's `translate`).
public struct AddressTranslation: Codable, Sendable, Equatable {
    public struct Paging: Codable, Sendable, Equatable {
        public var mode, cr0, cr3, cr4, efer: String
        public init(mode: String, cr0: String, cr3: String, cr4: String, efer: String) {
            self.mode = mode; self.cr0 = cr0; self.cr3 = cr3; self.cr4 = cr4; self.efer = efer
        }
    }
    public struct Level: Codable, Sendable, Equatable {
        public var level: Int
        public var table: String
        public var entryGPA: String
        public var entry: String
        public var present, writable, user, leaf: Bool
        public var pageSize: UInt64
        enum CodingKeys: String, CodingKey { case level, table, entry, present, writable, user, leaf, entryGPA = "entry_gpa", pageSize = "page_size" }
        public init(level: Int, table: String, entryGPA: String, entry: String, present: Bool, writable: Bool, user: Bool, leaf: Bool, pageSize: UInt64) {
            self.level = level; self.table = table; self.entryGPA = entryGPA; self.entry = entry; self.present = present
            self.writable = writable; self.user = user; self.leaf = leaf; self.pageSize = pageSize
        }
    }
    public var vcpu: Int
    public var gva: String
    public var rip: String
    public var paging: Paging
    public var hostKVM: String
    public var hostTwoDimensionalPaging: Bool
    public var levels: [Level]
    /// Where the walk stopped (a level not present, a non-canonical address); nothing past it then.
    public var fault: String?
    public var gpa: String?
    public var pageSize: UInt64?
    public var writable, user, executable: Bool?
    public var slot: Int?
    public var slotGPA: String?
    public var hva: String?
    public var hpa: String?
    public var hostPage: String?
    public var note: String?
    public init(vcpu: Int, gva: String, rip: String, paging: Paging, hostKVM: String, hostTwoDimensionalPaging: Bool, levels: [Level]) {
        self.vcpu = vcpu; self.gva = gva; self.rip = rip; self.paging = paging; self.hostKVM = hostKVM
        self.hostTwoDimensionalPaging = hostTwoDimensionalPaging; self.levels = levels
    }
    enum CodingKeys: String, CodingKey {
        case vcpu, gva, rip, paging, levels, fault, gpa, writable, user, executable, slot, hva, hpa, note
        case hostKVM = "host_kvm", hostTwoDimensionalPaging = "host_two_dimensional_paging", pageSize = "page_size"
        case slotGPA = "slot_gpa", hostPage = "host_page"
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
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "unknown field \"\(unknown)\" (known: \(known.sorted().joined(separator: ", ")))"))
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
              floorPercent >= 10, floorPercent <= 100, (0...65536).contains(guestReserveMiB) else {
            throw APIError(code: "invalid_argument", message: "need 0 < low_free_percent < high_free_percent < 100, step_mib 1–4096, floor_percent 10–100, guest_reserve_mib 0–65536")
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

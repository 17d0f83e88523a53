// What the REST API says of a running instance: statistics, pinning, address translation.
import Foundation

/// One vCPU of a running instance: its host thread, the host scheduler's view of it (from
/// /proc/PID/task/TID/schedstat: time on a CPU and time waiting on a run queue, the sign of CPU
/// contention), its VM exits by reason (kumo-vmm's counters, this boot) and KVM's own statistics
/// (KVM_GET_STATS_FD, where the host offers it).
public struct VCPUStats: Codable, Sendable, Equatable {
    public var vcpu: Int
    /// The host thread (admins only: host pids and thread ids are host details).
    public var tid: Int?
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
    public init(
        vcpu: Int, tid: Int?, cpusAllowed: String?, cpuNs: UInt64?, waitNs: UInt64?, timeslices: UInt64?, exitsTotal: UInt64,
        exits: [String: UInt64], ioIn: UInt64, ioOut: UInt64, mmioRead: UInt64, mmioWrite: UInt64, emulated: [String: UInt64],
        kvm: [String: UInt64]?
    ) {
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

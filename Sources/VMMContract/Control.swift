/// kumo-vmm's control socket (docs/CONTROL.md): one JSON object per line each way. Each request below
/// gets a reply `{"ok": true, …fields of its reply type}` or `{"ok": false, "error": "…"}`; the
/// envelope lives here and nowhere else.

/// The version of this contract (the configuration keys, the operations and their replies). kumo-vmm
/// reports it (`vm.info`, `kumo-vmm --contract-version`); kumod refuses a VMM of another version.
public let vmmContractVersion = 8  // 3: disks[].format (qcow2); 4: vsock; 5: vm.stats devices; 6: display; 7: seccomp, jail; 8: jail.network_namespace

public enum ControlRequest: Sendable, Equatable {
    case info
    case stats
    /// Pins vCPU `vcpu`'s thread to host CPUs (a list like "0-1,3"); nil unpins.
    case pin(vcpu: Int, cpus: String?)
    /// Walks vCPU `vcpu`'s page tables for guest-virtual `address`.
    case translate(vcpu: Int, address: UInt64)
    case powerButton
    case balloonSet(targetMiB: Int)
    /// With `refresh`, the guest is first asked for fresh statistics.
    case balloonGet(refresh: Bool)

    public static let ops = ["vm.info", "vm.stats", "vcpu.pin", "translate", "power_button", "balloon.get", "balloon.set"]

    public var json: JSONValue {
        switch self {
        case .info: return .object([("op", .string("vm.info"))])
        case .stats: return .object([("op", .string("vm.stats"))])
        case let .pin(v, cpus): return .object([("op", .string("vcpu.pin")), ("vcpu", .integer(Int64(v))), ("cpus", cpus.map { .string($0) } ?? .null)])
        case let .translate(v, a):
            return .object([("op", .string("translate")), ("vcpu", .integer(Int64(v))), ("address", .string("0x" + String(a, radix: 16)))])
        case .powerButton: return .object([("op", .string("power_button"))])
        case let .balloonSet(mib): return .object([("op", .string("balloon.set")), ("target_mib", .integer(Int64(mib)))])
        case let .balloonGet(refresh): return .object([("op", .string("balloon.get"))] + (refresh ? [("refresh", .bool(true))] : []))
        }
    }

    /// The request a line holds, or why it is not one.
    public static func parse(_ v: JSONValue) -> Result<ControlRequest, ControlFailure> {
        func fail(_ m: String) -> Result<ControlRequest, ControlFailure> { .failure(ControlFailure(m)) }
        func index(_ key: String) -> Int? {
            switch v[key] {
            case let .integer(n)?: return n >= 0 && n < 4096 ? Int(n) : nil
            case let .number(d)?: return d >= 0 && d < 4096 && d == d.rounded() ? Int(d) : nil
            default: return nil
            }
        }
        guard case let .string(op)? = v["op"] else { return fail("a request is {\"op\": …}; ops: " + ops.joined(separator: ", ")) }
        switch op {
        case "vm.info": return .success(.info)
        case "vm.stats": return .success(.stats)
        case "vcpu.pin":
            guard let n = index("vcpu") else { return fail("vcpu.pin needs \"vcpu\": a vCPU index") }
            switch v["cpus"] {
            case .null?: return .success(.pin(vcpu: n, cpus: nil))
            case let .string(s)?: return .success(.pin(vcpu: n, cpus: s))
            default: return fail("vcpu.pin needs \"cpus\": a CPU list like \"0-1,3\", or null to unpin")
            }
        case "translate":
            guard let n = index("vcpu") else { return fail("translate needs \"vcpu\": a vCPU index") }
            switch v["address"] {
            case let .string(s)?:
                let digits = s.hasPrefix("0x") || s.hasPrefix("0X") ? String(s.dropFirst(2)) : s
                guard let a = UInt64(digits.filter { $0 != "_" }, radix: 16) else { return fail("address \"\(s)\" is not a hexadecimal address") }
                return .success(.translate(vcpu: n, address: a))
            case let .integer(a)? where a >= 0: return .success(.translate(vcpu: n, address: UInt64(a)))
            default: return fail("translate needs \"address\": a guest-virtual address (hex string)")
            }
        case "power_button": return .success(.powerButton)
        case "balloon.set":
            switch v["target_mib"] {
            case let .integer(n)? where n >= 0 && n < 1 << 40: return .success(.balloonSet(targetMiB: Int(n)))
            default: return fail("balloon.set needs \"target_mib\": a whole number of MiB")
            }
        case "balloon.get": return .success(.balloonGet(refresh: v["refresh"] == .bool(true)))
        default: return fail("unknown op \"\(op)\"; ops: " + ops.joined(separator: ", "))
        }
    }
}

/// A request the VMM refused or could not serve, with its reason.
public struct ControlFailure: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The one reply format: `{"ok": true, …}` from a reply value, `{"ok": false, "error": …}` from a failure.
public enum ControlEnvelope {
    public static func reply<R: Encodable>(_ r: R) -> JSONValue {
        guard case let .object(fields)? = try? JSONValueEncoder().encode(r) else {
            return failure(ControlFailure("internal error: the reply did not encode"))
        }
        return .object([("ok", .bool(true))] + fields)
    }

    public static func failure(_ f: ControlFailure) -> JSONValue {
        .object([("ok", .bool(false)), ("error", .string(f.description))])
    }

    /// The reply of type R a line holds; a refusal or an unreadable line is a ControlFailure.
    public static func open<R: Decodable>(_ line: String, as type: R.Type) throws(ControlFailure) -> R {
        let v: JSONValue
        do { v = try JSONParser.parse(line) } catch { throw ControlFailure("an answer that is not JSON (\(error))") }
        switch v["ok"] {
        case .bool(true)?:
            do { return try JSONValueDecoder().decode(type, from: v) } catch {
                throw ControlFailure("an answer kumo could not read: \(error)")
            }
        case .bool(false)?:
            if case let .string(e)? = v["error"] { throw ControlFailure(e) }
            throw ControlFailure("refused, with no reason")
        default: throw ControlFailure("an answer without \"ok\"")
        }
    }
}

// MARK: - replies

public struct VMInfo: Codable, Sendable, Equatable {
    public struct PowerButton: Codable, Sendable, Equatable {
        public var raised: UInt64
        public var taken: UInt64
        public init(raised: UInt64, taken: UInt64) { self.raised = raised; self.taken = taken }
    }
    public struct Device: Codable, Sendable, Equatable {
        public var name: String
        public var status: UInt32
        public var statistics: String
        public init(name: String, status: UInt32, statistics: String) { self.name = name; self.status = status; self.statistics = statistics }
    }
    public var contract: Int
    public var vcpus: Int
    public var memoryMiB: Int
    /// The VMM's resident set, and the guest RAM the host holds in memory (by mincore).
    public var rssKiB: UInt64
    public var guestResidentKiB: UInt64
    public var powerButton: PowerButton
    public var devices: [Device]
    /// Guest boots in this VMM so far (a guest reset starts another), and how the last one ended.
    public var boots: Int
    public var lastReset: String?
    enum CodingKeys: String, CodingKey {
        case contract, vcpus, devices, boots
        case memoryMiB = "memory_mib", rssKiB = "rss_kib", guestResidentKiB = "guest_resident_kib", powerButton = "power_button"
        case lastReset = "last_reset"
    }
    public init(
        contract: Int = vmmContractVersion, vcpus: Int, memoryMiB: Int, rssKiB: UInt64, guestResidentKiB: UInt64,
        powerButton: PowerButton, devices: [Device], boots: Int, lastReset: String?
    ) {
        self.contract = contract; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.rssKiB = rssKiB
        self.guestResidentKiB = guestResidentKiB; self.powerButton = powerButton; self.devices = devices
        self.boots = boots; self.lastReset = lastReset
    }
}

public struct VMStats: Codable, Sendable, Equatable {
    public struct VCPU: Codable, Sendable, Equatable {
        public var vcpu: Int
        /// The vCPU's host thread (0 before it runs).
        public var tid: Int32
        /// Exits by reason this boot, their total, port and MMIO accesses.
        public var exits: [String: UInt64]
        public var exitsTotal: UInt64
        public var ioIn: UInt64, ioOut: UInt64, mmioRead: UInt64, mmioWrite: UInt64
        /// Instructions kumo-vmm's fallback ran (int3, fwait, ldmxcsr, stmxcsr).
        public var emulated: [String: UInt64]
        /// From /proc/self/task/TID/schedstat: on a CPU, runnable but waiting, timeslices.
        public var cpuNs: UInt64?, waitNs: UInt64?, timeslices: UInt64?
        public var cpusAllowed: String?
        public var pinned: String?
        /// KVM's own counters (binary stats fd), where the host has them.
        public var kvm: [String: UInt64]?
        enum CodingKeys: String, CodingKey {
            case vcpu, tid, exits, emulated, kvm, timeslices, pinned
            case exitsTotal = "exits_total", ioIn = "io_in", ioOut = "io_out", mmioRead = "mmio_read", mmioWrite = "mmio_write"
            case cpuNs = "cpu_ns", waitNs = "wait_ns", cpusAllowed = "cpus_allowed"
        }
        public init(
            vcpu: Int, tid: Int32, exits: [String: UInt64], exitsTotal: UInt64, ioIn: UInt64, ioOut: UInt64, mmioRead: UInt64,
            mmioWrite: UInt64, emulated: [String: UInt64], cpuNs: UInt64? = nil, waitNs: UInt64? = nil, timeslices: UInt64? = nil,
            cpusAllowed: String? = nil, pinned: String? = nil, kvm: [String: UInt64]? = nil
        ) {
            self.vcpu = vcpu; self.tid = tid; self.exits = exits; self.exitsTotal = exitsTotal; self.ioIn = ioIn; self.ioOut = ioOut
            self.mmioRead = mmioRead; self.mmioWrite = mmioWrite; self.emulated = emulated; self.cpuNs = cpuNs; self.waitNs = waitNs
            self.timeslices = timeslices; self.cpusAllowed = cpusAllowed; self.pinned = pinned; self.kvm = kvm
        }
    }
    /// Guest memory as the host sees it, and KSM's work on this VMM (/proc/self/ksm_stat).
    public struct Memory: Codable, Sendable, Equatable {
        public var dedup: Bool
        public var rssKiB: UInt64
        public var guestResidentKiB: UInt64
        public var ksmRmapItems: UInt64?, ksmMergingPages: UInt64?, ksmZeroPages: UInt64?
        public var ksmProcessProfit: Int64?
        enum CodingKeys: String, CodingKey {
            case dedup, rssKiB = "rss_kib", guestResidentKiB = "guest_resident_kib", ksmRmapItems = "ksm_rmap_items"
            case ksmMergingPages = "ksm_merging_pages", ksmZeroPages = "ksm_zero_pages", ksmProcessProfit = "ksm_process_profit"
        }
        public init(dedup: Bool, rssKiB: UInt64, guestResidentKiB: UInt64) {
            self.dedup = dedup; self.rssKiB = rssKiB; self.guestResidentKiB = guestResidentKiB
        }
    }
    /// A virtio device's counters (monotonic while the VM runs: a guest reboot keeps them), by name:
    /// block `reads`, `writes`, `flushes`, `errors`, `read_bytes`, `written_bytes`; net `rx_frames`,
    /// `rx_bytes`, `tx_frames`, `tx_bytes`, `rx_dropped`, `tx_dropped`; vsock `connections`, `rx_bytes`, ….
    public struct Device: Codable, Sendable, Equatable {
        /// `virtio-block0`, `virtio-net2`, …: kind and transport index.
        public var name: String
        public var kind: String
        /// What it serves as the VM's user names it: a disk's serial, a NIC's tap.
        public var backend: String?
        public var counters: [String: UInt64]
        public init(name: String, kind: String, backend: String?, counters: [String: UInt64]) {
            self.name = name; self.kind = kind; self.backend = backend; self.counters = counters
        }
    }
    public var vcpus: [VCPU]
    public var memory: Memory
    public var devices: [Device]
    public init(vcpus: [VCPU], memory: Memory, devices: [Device] = []) { self.vcpus = vcpus; self.memory = memory; self.devices = devices }
}

public struct PinReply: Codable, Sendable, Equatable {
    public var vcpu: Int
    /// As stored (nil: not pinned), and the thread's Cpus_allowed_list after the change.
    public var cpus: String?
    public var cpusAllowed: String
    enum CodingKeys: String, CodingKey { case vcpu, cpus, cpusAllowed = "cpus_allowed" }
    public init(vcpu: Int, cpus: String?, cpusAllowed: String) { self.vcpu = vcpu; self.cpus = cpus; self.cpusAllowed = cpusAllowed }
}

/// GVA → GPA (every level of the guest's page tables) → HVA (the memory slot) → HPA (pagemap).
public struct TranslateReply: Codable, Sendable, Equatable {
    public struct Paging: Codable, Sendable, Equatable {
        public var mode: String
        public var cr0: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64
        public init(mode: String, cr0: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64) {
            self.mode = mode; self.cr0 = cr0; self.cr3 = cr3; self.cr4 = cr4; self.efer = efer
        }
    }
    public struct Level: Codable, Sendable, Equatable {
        public var level: Int
        public var table: String
        public var entryGPA: UInt64
        public var entry: UInt64
        public var present: Bool, writable: Bool, user: Bool, leaf: Bool
        public var pageSize: UInt64
        enum CodingKeys: String, CodingKey { case level, table, entry, present, writable, user, leaf, entryGPA = "entry_gpa", pageSize = "page_size" }
        public init(level: Int, table: String, entryGPA: UInt64, entry: UInt64, present: Bool, writable: Bool, user: Bool, leaf: Bool, pageSize: UInt64) {
            self.level = level; self.table = table; self.entryGPA = entryGPA; self.entry = entry; self.present = present
            self.writable = writable; self.user = user; self.leaf = leaf; self.pageSize = pageSize
        }
    }
    public var vcpu: Int
    public var gva: UInt64
    public var rip: UInt64
    public var paging: Paging
    /// The host's KVM, and whether it pages in two dimensions (EPT/NPT) or shadows the guest's tables.
    public var hostKVM: String
    public var hostTwoDimensionalPaging: Bool
    public var levels: [Level]
    /// Where the walk stopped (not present, non-canonical), when it did: the rest is then absent.
    public var fault: String?
    public var gpa: UInt64?
    public var pageSize: UInt64?
    public var writable: Bool?, user: Bool?, executable: Bool?
    public var slot: Int?
    public var slotGPA: UInt64?
    public var hva: UInt64?
    public var hpa: UInt64?
    /// Whether the host page is resident, or why its frame is not shown; or why there is no HVA.
    public var hostPage: String?
    public var note: String?
    enum CodingKeys: String, CodingKey {
        case vcpu, gva, rip, paging, levels, fault, gpa, writable, user, executable, slot, hva, hpa, note
        case hostKVM = "host_kvm", hostTwoDimensionalPaging = "host_two_dimensional_paging", pageSize = "page_size"
        case slotGPA = "slot_gpa", hostPage = "host_page"
    }
    public init(vcpu: Int, gva: UInt64, rip: UInt64, paging: Paging, hostKVM: String, hostTwoDimensionalPaging: Bool, levels: [Level] = []) {
        self.vcpu = vcpu; self.gva = gva; self.rip = rip; self.paging = paging; self.hostKVM = hostKVM
        self.hostTwoDimensionalPaging = hostTwoDimensionalPaging; self.levels = levels
    }
}

public struct PowerButtonReply: Codable, Sendable, Equatable {
    public var raised: UInt64
    public var taken: UInt64
    public init(raised: UInt64, taken: UInt64) { self.raised = raised; self.taken = taken }
}

public struct BalloonSetReply: Codable, Sendable, Equatable {
    public var targetMiB: Int
    enum CodingKeys: String, CodingKey { case targetMiB = "target_mib" }
    public init(targetMiB: Int) { self.targetMiB = targetMiB }
}

public struct BalloonState: Codable, Sendable, Equatable {
    public var driverReady: Bool
    public var targetMiB: Int, actualMiB: Int
    public var targetPages: UInt64, actualPages: UInt64
    public var inflatedPages: UInt64, deflatedPages: UInt64, reportedPages: UInt64
    public var statsUpdates: UInt64
    /// The guest's last statistics (virtio's names: free_memory, available_memory, total_memory, …).
    public var stats: [String: UInt64]
    public var rssKiB: UInt64
    enum CodingKeys: String, CodingKey {
        case stats, driverReady = "driver_ready", targetMiB = "target_mib", actualMiB = "actual_mib", targetPages = "target_pages"
        case actualPages = "actual_pages", inflatedPages = "inflated_pages", deflatedPages = "deflated_pages"
        case reportedPages = "reported_pages", statsUpdates = "stats_updates", rssKiB = "rss_kib"
    }
    public init(
        driverReady: Bool, targetMiB: Int, actualMiB: Int, targetPages: UInt64, actualPages: UInt64, inflatedPages: UInt64,
        deflatedPages: UInt64, reportedPages: UInt64, statsUpdates: UInt64, stats: [String: UInt64], rssKiB: UInt64
    ) {
        self.driverReady = driverReady; self.targetMiB = targetMiB; self.actualMiB = actualMiB; self.targetPages = targetPages
        self.actualPages = actualPages; self.inflatedPages = inflatedPages; self.deflatedPages = deflatedPages
        self.reportedPages = reportedPages; self.statsUpdates = statsUpdates; self.stats = stats; self.rssKiB = rssKiB
    }
}

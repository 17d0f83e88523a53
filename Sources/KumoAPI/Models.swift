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
    /// Each NIC's bandwidth, each way (Mbit/s; ECS sells bandwidth per type); nil: not limited.
    public var bandwidthMbps: Int?
    /// Each NIC's packets per second, each way; nil: not limited.
    public var packetsPerSecond: Int?
    public init(
        name: String, vcpus: Int, memoryMiB: Int, builtin: Bool = false, cpuCapPercent: Int? = nil, cpuShares: Int? = nil,
        memoryShares: Int? = nil, bandwidthMbps: Int? = nil, packetsPerSecond: Int? = nil
    ) {
        self.name = name; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.builtin = builtin
        self.cpuCapPercent = cpuCapPercent; self.cpuShares = cpuShares; self.memoryShares = memoryShares
        self.bandwidthMbps = bandwidthMbps; self.packetsPerSecond = packetsPerSecond
    }
    enum CodingKeys: String, CodingKey {
        case name, vcpus, memoryMiB = "memory_mib", builtin, cpuCapPercent = "cpu_cap_percent", cpuShares = "cpu_shares"
        case memoryShares = "memory_shares", bandwidthMbps = "bandwidth_mbps", packetsPerSecond = "packets_per_second"
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
        bandwidthMbps = try c.decodeIfPresent(Int.self, forKey: .bandwidthMbps)
        packetsPerSecond = try c.decodeIfPresent(Int.self, forKey: .packetsPerSecond)
    }

    public static let builtins = [
        InstanceType(name: "kumo.small", vcpus: 1, memoryMiB: 2048, builtin: true),
        InstanceType(name: "kumo.medium", vcpus: 2, memoryMiB: 4096, builtin: true),
        InstanceType(name: "kumo.large", vcpus: 4, memoryMiB: 8192, builtin: true),
    ]
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
    /// The tenant a private image belongs to (imported or made from an instance); nil: public, for everyone.
    public var tenant: String?
    /// The root disk's format: "raw" or "qcow2" (nil without a root disk).
    public var diskFormat: String?
    /// "registered" (files an admin put in the images directory), "imported" (uploaded, converted by
    /// kumod) or "instance i-…" (a stopped instance's disk, flattened).
    public var source: String
    /// The root disk's virtual size in bytes (what a guest sees).
    public var sizeBytes: Int64?
    /// "sha256:…" of the root disk file (as registered, or as kumod made it).
    public var checksum: String?
    enum CodingKeys: String, CodingKey {
        case id, name, kernel, initrd, cmdline, tenant, source, checksum
        case rootDisk = "root_disk", kernelFormat = "kernel_format", createdAt = "created_at"
        case diskFormat = "disk_format", sizeBytes = "size_bytes"
    }
    public init(
        id: String, name: String, kernel: String, initrd: String?, rootDisk: String?, cmdline: String,
        kernelFormat: String, createdAt: String, tenant: String? = nil, diskFormat: String? = nil, source: String = "registered",
        sizeBytes: Int64? = nil, checksum: String? = nil
    ) {
        self.id = id; self.name = name; self.kernel = kernel; self.initrd = initrd; self.rootDisk = rootDisk
        self.cmdline = cmdline; self.kernelFormat = kernelFormat; self.createdAt = createdAt
        self.tenant = tenant; self.diskFormat = diskFormat ?? (rootDisk == nil ? nil : "raw"); self.source = source
        self.sizeBytes = sizeBytes; self.checksum = checksum
    }
    /// Public (every tenant's to use) or a tenant's own.
    public var visibility: String { tenant == nil ? "public" : "private" }
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
    /// Its network interfaces (eth0 first); released when the instance is deleted.
    public var nics: [NIC]?
    /// The key pair whose public key its cloud-init meta-data carries.
    public var keyPair: String?
    /// Its screen ("1024x768"), when it has one: a framebuffer and keyboard served over VNC (docs/DISPLAY.md).
    public var display: String?
    enum CodingKeys: String, CodingKey {
        case id, name, tenant, type, vcpus, image, state, reservation, pid, history, nics, display
        case keyPair = "key_pair"
        case memoryDedup = "memory_dedup", cpuPolicy = "cpu_policy", dedicatedCPUs = "dedicated_cpus"
        case memoryMiB = "memory_mib", stateReason = "state_reason", createdAt = "created_at"
        case updatedAt = "updated_at", launchedAt = "launched_at"
    }
    public init(
        id: String, name: String, tenant: String, type: String, vcpus: Int, memoryMiB: Int, image: String,
        state: InstanceState, stateReason: String, createdAt: String, updatedAt: String, launchedAt: String?,
        reservation: String, pid: Int?, history: [StateChange]? = nil
    ) {
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
    /// The networks (ids or names, the caller's own) of its NICs, eth0 first; absent: the tenant's
    /// default network (made when the tenant has none); empty: no NIC.
    public var networks: [String]?
    /// The security groups (ids or names, the caller's own) of every NIC; absent: the tenant's default
    /// group (made when the tenant has none).
    public var securityGroups: [String]?
    /// A key pair of the caller's (name or id): its public key goes into the instance's meta-data.
    public var keyPair: String?
    /// A screen, "WIDTHxHEIGHT" (320x200 to 2560x1600): a framebuffer and keyboard, seen over VNC.
    public var display: String?
    enum CodingKeys: String, CodingKey {
        case type, image, count, name, networks, display
        case keyPair = "key_pair"
        case userData = "user_data", clientToken = "client_token", memoryDedup = "memory_dedup", cpuPolicy = "cpu_policy"
        case securityGroups = "security_groups"
    }
    public init(
        type: String, image: String, count: Int? = nil, name: String? = nil, userData: String? = nil, clientToken: String? = nil,
        memoryDedup: Bool? = nil, cpuPolicy: String? = nil, networks: [String]? = nil, securityGroups: [String]? = nil,
        keyPair: String? = nil, display: String? = nil
    ) {
        self.keyPair = keyPair
        self.display = display
        self.type = type; self.image = image; self.count = count; self.name = name; self.userData = userData
        self.clientToken = clientToken; self.memoryDedup = memoryDedup; self.cpuPolicy = cpuPolicy; self.networks = networks
        self.securityGroups = securityGroups
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
    /// The root disk's format, "raw" (the default) or "qcow2": named, never probed.
    public var diskFormat: String?
    enum CodingKeys: String, CodingKey { case name, kernel, initrd, cmdline, rootDisk = "root_disk", diskFormat = "disk_format" }
    public init(name: String, kernel: String, initrd: String? = nil, rootDisk: String? = nil, cmdline: String? = nil, diskFormat: String? = nil) {
        self.name = name; self.kernel = kernel; self.initrd = initrd; self.rootDisk = rootDisk; self.cmdline = cmdline
        self.diskFormat = diskFormat
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

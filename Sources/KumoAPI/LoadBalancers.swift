// Layer-4 load balancers (as SLB/CLB, docs/LB.md): an address (one of the host's, or one from a network
// of the tenant's), listeners on it (TCP or UDP, a port, a scheduler), each sending new connections to
// a backend server group of instance NICs and ports, which health checks keep in or out of rotation.

public struct LoadBalancer: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var tenant: String
    public var address: String
    /// The network the address is from; absent: an address of the host.
    public var network: String?
    public var listeners: [Listener]
    public var backendGroups: [BackendGroup]
    public var createdAt: String
    public init(
        id: String, name: String, tenant: String, address: String, network: String?, listeners: [Listener], backendGroups: [BackendGroup],
        createdAt: String
    ) {
        self.id = id; self.name = name; self.tenant = tenant; self.address = address; self.network = network; self.listeners = listeners
        self.backendGroups = backendGroups; self.createdAt = createdAt
    }
    enum CodingKeys: String, CodingKey {
        case id, name, tenant, address, network, listeners
        case backendGroups = "backend_groups", createdAt = "created_at"
    }

    public struct Listener: Codable, Sendable, Equatable {
        public var id: String
        public var `protocol`: String
        public var port: Int
        /// "rr", "wrr", "wlc" or "sh".
        public var scheduler: String
        /// Seconds a client keeps its backend (by source address); absent: no persistence.
        public var persistenceSeconds: Int?
        /// Seconds a removed backend keeps its established connections.
        public var drainSeconds: Int
        public var backendGroup: String
        public var healthCheck: HealthCheckSpec
        /// The group's backends as this listener sees them.
        public var backends: [BackendStatus]
        public init(
            id: String, protocol: String, port: Int, scheduler: String, persistenceSeconds: Int?, drainSeconds: Int, backendGroup: String,
            healthCheck: HealthCheckSpec, backends: [BackendStatus]
        ) {
            self.id = id; self.protocol = `protocol`; self.port = port; self.scheduler = scheduler; self.persistenceSeconds = persistenceSeconds
            self.drainSeconds = drainSeconds; self.backendGroup = backendGroup; self.healthCheck = healthCheck; self.backends = backends
        }
        enum CodingKeys: String, CodingKey {
            case id, `protocol`, port, scheduler, backends
            case persistenceSeconds = "persistence_seconds", drainSeconds = "drain_seconds", backendGroup = "backend_group"
            case healthCheck = "health_check"
        }
    }

    public struct BackendStatus: Codable, Sendable, Equatable {
        public var backend: String
        public var address: String
        public var port: Int
        public var weight: Int
        /// "healthy" (in rotation), "unhealthy", or "unknown" (not probed yet: out of rotation).
        public var health: String
        /// Why the last probe failed.
        public var reason: String?
        public var since: String?
        public init(backend: String, address: String, port: Int, weight: Int, health: String, reason: String?, since: String?) {
            self.backend = backend; self.address = address; self.port = port; self.weight = weight; self.health = health; self.reason = reason
            self.since = since
        }
    }
}

public struct BackendGroup: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var backends: [Backend]
    public init(id: String, name: String, backends: [Backend]) { self.id = id; self.name = name; self.backends = backends }

    public struct Backend: Codable, Sendable, Equatable {
        public var id: String
        public var instance: String
        public var nic: Int
        public var address: String
        public var port: Int
        public var weight: Int
        public init(id: String, instance: String, nic: Int, address: String, port: Int, weight: Int) {
            self.id = id; self.instance = instance; self.nic = nic; self.address = address; self.port = port; self.weight = weight
        }
    }
}

/// A listener's health check. `type` "none" keeps every backend in rotation (UDP listeners have no other).
public struct HealthCheckSpec: Codable, Sendable, Equatable {
    /// "tcp", "http" or "none".
    public var type: String
    public var path: String?
    /// Expected HTTP status codes, "200" or "200-399".
    public var codes: String?
    public var intervalSeconds: Int
    public var timeoutSeconds: Int
    public var healthyThreshold: Int
    public var unhealthyThreshold: Int
    public init(
        type: String, path: String? = nil, codes: String? = nil, intervalSeconds: Int = 2, timeoutSeconds: Int = 1, healthyThreshold: Int = 3,
        unhealthyThreshold: Int = 3
    ) {
        self.type = type; self.path = path; self.codes = codes; self.intervalSeconds = intervalSeconds; self.timeoutSeconds = timeoutSeconds
        self.healthyThreshold = healthyThreshold; self.unhealthyThreshold = unhealthyThreshold
    }
    enum CodingKeys: String, CodingKey {
        case type, path, codes
        case intervalSeconds = "interval_seconds", timeoutSeconds = "timeout_seconds", healthyThreshold = "healthy_threshold"
        case unhealthyThreshold = "unhealthy_threshold"
    }
}

public struct LoadBalancerList: Codable, Sendable {
    public var loadBalancers: [LoadBalancer]
    public init(loadBalancers: [LoadBalancer]) { self.loadBalancers = loadBalancers }
    enum CodingKeys: String, CodingKey { case loadBalancers = "load_balancers" }
}

public struct CreateLoadBalancerRequest: Codable, Sendable, Equatable {
    public var name: String
    /// An address from this network of the caller's (the highest free one) …
    public var network: String?
    /// … or this address of the host's.
    public var hostAddress: String?
    public init(name: String, network: String? = nil, hostAddress: String? = nil) {
        self.name = name; self.network = network; self.hostAddress = hostAddress
    }
    enum CodingKeys: String, CodingKey { case name, network, hostAddress = "host_address" }
}

public struct CreateListenerRequest: Codable, Sendable, Equatable {
    public var `protocol`: String?
    public var port: Int
    public var scheduler: String?
    public var persistenceSeconds: Int?
    public var drainSeconds: Int?
    /// The backend group (id or name) of the same load balancer.
    public var backendGroup: String
    public var healthCheck: HealthCheckRequest?
    public init(
        protocol: String? = nil, port: Int, scheduler: String? = nil, persistenceSeconds: Int? = nil, drainSeconds: Int? = nil, backendGroup: String,
        healthCheck: HealthCheckRequest? = nil
    ) {
        self.protocol = `protocol`; self.port = port; self.scheduler = scheduler; self.persistenceSeconds = persistenceSeconds
        self.drainSeconds = drainSeconds; self.backendGroup = backendGroup; self.healthCheck = healthCheck
    }
    enum CodingKeys: String, CodingKey {
        case `protocol`, port, scheduler
        case persistenceSeconds = "persistence_seconds", drainSeconds = "drain_seconds", backendGroup = "backend_group"
        case healthCheck = "health_check"
    }
}

public struct HealthCheckRequest: Codable, Sendable, Equatable {
    public var type: String
    public var path: String?
    public var codes: String?
    public var intervalSeconds: Int?
    public var timeoutSeconds: Int?
    public var healthyThreshold: Int?
    public var unhealthyThreshold: Int?
    public init(
        type: String, path: String? = nil, codes: String? = nil, intervalSeconds: Int? = nil, timeoutSeconds: Int? = nil, healthyThreshold: Int? = nil,
        unhealthyThreshold: Int? = nil
    ) {
        self.type = type; self.path = path; self.codes = codes; self.intervalSeconds = intervalSeconds; self.timeoutSeconds = timeoutSeconds
        self.healthyThreshold = healthyThreshold; self.unhealthyThreshold = unhealthyThreshold
    }
    typealias CodingKeys = HealthCheckSpec.CodingKeys
}

public struct CreateBackendGroupRequest: Codable, Sendable, Equatable {
    public var name: String
    public init(name: String) { self.name = name }
}

public struct AddBackendRequest: Codable, Sendable, Equatable {
    /// An instance of the load balancer's tenant.
    public var instance: String
    /// Its NIC's index (default 0).
    public var nic: Int?
    public var port: Int
    /// 1 to 100 (default 1).
    public var weight: Int?
    public init(instance: String, nic: Int? = nil, port: Int, weight: Int? = nil) {
        self.instance = instance; self.nic = nic; self.port = port; self.weight = weight
    }
}

public struct LoadBalancerEvent: Codable, Sendable, Equatable {
    public var at: String
    public var listener: String?
    public var backend: String?
    public var message: String
    public init(at: String, listener: String?, backend: String?, message: String) {
        self.at = at; self.listener = listener; self.backend = backend; self.message = message
    }
}

public struct LoadBalancerEventList: Codable, Sendable {
    public var events: [LoadBalancerEvent]
    public init(events: [LoadBalancerEvent]) { self.events = events }
}

extension LoadBalancer {
    public static let schedulers = ["rr", "wrr", "wlc", "sh"]
    public static let maxPerTenant = 20
    public static let maxListeners = 10
    public static let maxGroups = 10
    public static let maxBackendsPerGroup = 100
    public static let weights = 1...100
    public static let persistenceSeconds = 1...3600
    public static let drainSeconds = 0...3600

    /// "200" → 200...200, "200-399" → 200...399, within 100...599.
    public static func codes(_ text: String) throws(APIError) -> ClosedRange<Int> {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        func code(_ s: Substring) -> Int? {
            guard s.utf8.count == 3, s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let c = Int(s), (100...599).contains(c) else { return nil }
            return c
        }
        guard (1...2).contains(parts.count), let from = code(parts[0]), let to = code(parts[parts.count - 1]), from <= to else {
            throw APIError(code: "invalid_argument", message: "codes '\(Validate.escaped(text))': an HTTP status (100-599) or a range like 200-399")
        }
        return from...to
    }
}

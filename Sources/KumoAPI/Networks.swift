// Tenant networks (a one-host VPC with its vSwitch): a private IPv4 range, a gateway on the host,
// DHCP and DNS, NAT egress. See docs/NETWORK.md.

public struct Network: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var tenant: String
    /// "10.10.0.0/24".
    public var cidr: String
    /// The host's address in the network (the first one), the guests' router and DNS server.
    public var gateway: String
    /// The tenant's default network: the one instances join when they name none.
    public var isDefault: Bool
    /// NICs in the network.
    public var nics: Int
    public var createdAt: String
    /// The host bridge (admins only: a host detail).
    public var bridge: String?
    public init(
        id: String, name: String, tenant: String, cidr: String, gateway: String, isDefault: Bool, nics: Int, createdAt: String,
        bridge: String? = nil
    ) {
        self.id = id; self.name = name; self.tenant = tenant; self.cidr = cidr; self.gateway = gateway
        self.isDefault = isDefault; self.nics = nics; self.createdAt = createdAt; self.bridge = bridge
    }
    enum CodingKeys: String, CodingKey {
        case id, name, tenant, cidr, gateway, nics, bridge
        case isDefault = "default", createdAt = "created_at"
    }
}

public struct CreateNetworkRequest: Codable, Sendable, Equatable {
    public var name: String
    /// A private range (RFC 1918), /16 to /28; kumod picks a free /24 in 10.0.0.0/8 when absent.
    public var cidr: String?
    /// Make it the tenant's default network.
    public var isDefault: Bool?
    public init(name: String, cidr: String? = nil, isDefault: Bool? = nil) { self.name = name; self.cidr = cidr; self.isDefault = isDefault }
    enum CodingKeys: String, CodingKey { case name, cidr, isDefault = "default" }
}

public struct NetworkList: Codable, Sendable {
    public var networks: [Network]
    public init(networks: [Network]) { self.networks = networks }
}

/// An instance's network interface: a virtio-net device on a tap in its network's bridge.
public struct NIC: Codable, Sendable, Equatable {
    /// 0 for eth0, 1 for eth1, …
    public var index: Int
    public var network: String
    public var networkName: String
    /// Stable for the instance's life ("52:54:00:…", locally administered).
    public var mac: String
    public var address: String
    /// Its security groups' ids (ingress denied but for what they allow).
    public var securityGroups: [String]
    /// Host ports forwarded to it (the one-host stand-in for a public address).
    public var portForwards: [PortForward]
    /// The host tap (admins only).
    public var tap: String?
    public init(
        index: Int, network: String, networkName: String, mac: String, address: String, securityGroups: [String] = [],
        portForwards: [PortForward] = [], tap: String? = nil
    ) {
        self.index = index; self.network = network; self.networkName = networkName; self.mac = mac; self.address = address
        self.securityGroups = securityGroups; self.portForwards = portForwards; self.tap = tap
    }
    enum CodingKeys: String, CodingKey {
        case index, network, mac, address, tap, networkName = "network_name", securityGroups = "security_groups", portForwards = "port_forwards"
    }
}

/// A host port whose traffic goes to a NIC's port (DNAT): how the outside reaches an instance on one
/// host, as an EIP would. Its security groups still decide who gets in.
public struct PortForward: Codable, Sendable, Equatable {
    public var id: String
    /// "tcp" or "udp".
    public var `protocol`: String
    /// One of the host's addresses; absent: every address of the host.
    public var hostAddress: String?
    public var hostPort: Int
    /// The port on the NIC's address.
    public var port: Int
    public var createdAt: String
    public init(id: String, protocol: String, hostAddress: String?, hostPort: Int, port: Int, createdAt: String) {
        self.id = id; self.protocol = `protocol`; self.hostAddress = hostAddress; self.hostPort = hostPort; self.port = port; self.createdAt = createdAt
    }
    enum CodingKeys: String, CodingKey {
        case id, `protocol`, port, hostAddress = "host_address", hostPort = "host_port", createdAt = "created_at"
    }
}

public struct CreatePortForwardRequest: Codable, Sendable, Equatable {
    /// "tcp" (the default) or "udp".
    public var `protocol`: String?
    public var hostPort: Int
    public var port: Int
    public var hostAddress: String?
    public init(protocol: String? = nil, hostPort: Int, port: Int, hostAddress: String? = nil) {
        self.protocol = `protocol`; self.hostPort = hostPort; self.port = port; self.hostAddress = hostAddress
    }
    enum CodingKeys: String, CodingKey { case `protocol`, port, hostPort = "host_port", hostAddress = "host_address" }
}

extension PortForward {
    /// Host ports below 1024 are the host's own services' (ssh among them); a forward never takes one.
    public static let hostPorts = 1024...65535
    public static let maxPerNIC = 16
}

extension Network {
    /// What a request's CIDR must be: a private range, /16 to /28 (an ECS vSwitch's sizes, near enough).
    public static let prefixes = 16...28

    public static func validCIDR(_ text: String) throws(APIError) -> IPv4Network {
        guard let n = IPv4Network(text) else {
            throw APIError(code: "invalid_argument", message: "cidr '\(Validate.escaped(text))' is not an IPv4 network like 10.10.0.0/24 (host bits zero)")
        }
        guard prefixes.contains(n.prefix) else {
            throw APIError(code: "invalid_argument", message: "cidr \(n) must be a /\(prefixes.lowerBound) to /\(prefixes.upperBound)")
        }
        guard n.isPrivate else {
            throw APIError(code: "invalid_argument", message: "cidr \(n) is not in a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)")
        }
        return n
    }
}

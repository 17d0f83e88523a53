// Security groups (as an ECS security group): stateful allow rules attached to NICs. Ingress is denied
// unless a rule of one of the NIC's groups allows it; egress is allowed by a new group's rule for
// everything, which can be removed. Answers to allowed traffic always pass. See docs/NETWORK.md.

public struct SecurityGroupRule: Codable, Sendable, Equatable {
    public var id: String
    /// "ingress" (to the NIC) or "egress" (from it).
    public var direction: String
    /// "tcp", "udp", "icmp" or "all".
    public var `protocol`: String
    /// "80" or "8000-8100" (tcp and udp only); absent: every port.
    public var ports: String?
    /// The other end: a range ("0.0.0.0/0" for anywhere) …
    public var cidr: String?
    /// … or the NICs of a group of the same tenant (its id).
    public var group: String?
    public var description: String?
    public init(id: String, direction: String, protocol: String, ports: String?, cidr: String?, group: String?, description: String?) {
        self.id = id; self.direction = direction; self.protocol = `protocol`; self.ports = ports; self.cidr = cidr; self.group = group
        self.description = description
    }
}

public struct SecurityGroup: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var tenant: String
    public var description: String?
    public var isDefault: Bool
    public var rules: [SecurityGroupRule]
    /// NICs the group is attached to.
    public var nics: Int
    public var createdAt: String
    public init(
        id: String, name: String, tenant: String, description: String?, isDefault: Bool, rules: [SecurityGroupRule], nics: Int, createdAt: String
    ) {
        self.id = id; self.name = name; self.tenant = tenant; self.description = description; self.isDefault = isDefault
        self.rules = rules; self.nics = nics; self.createdAt = createdAt
    }
    enum CodingKeys: String, CodingKey {
        case id, name, tenant, description, rules, nics
        case isDefault = "default", createdAt = "created_at"
    }
}

public struct SecurityGroupList: Codable, Sendable {
    public var securityGroups: [SecurityGroup]
    public init(securityGroups: [SecurityGroup]) { self.securityGroups = securityGroups }
    enum CodingKeys: String, CodingKey { case securityGroups = "security_groups" }
}

public struct CreateSecurityGroupRequest: Codable, Sendable, Equatable {
    public var name: String
    public var description: String?
    public init(name: String, description: String? = nil) { self.name = name; self.description = description }
}

public struct AddSecurityGroupRuleRequest: Codable, Sendable, Equatable {
    public var direction: String
    public var `protocol`: String
    public var ports: String?
    public var cidr: String?
    public var group: String?
    public var description: String?
    public init(direction: String, protocol: String, ports: String? = nil, cidr: String? = nil, group: String? = nil, description: String? = nil) {
        self.direction = direction; self.protocol = `protocol`; self.ports = ports; self.cidr = cidr; self.group = group
        self.description = description
    }
}

/// The groups of one NIC, replacing the ones it had (the instance may be running).
public struct SetSecurityGroupsRequest: Codable, Sendable, Equatable {
    public var securityGroups: [String]
    public init(securityGroups: [String]) { self.securityGroups = securityGroups }
    enum CodingKeys: String, CodingKey { case securityGroups = "security_groups" }
}

extension SecurityGroupRule {
    public static let directions = ["ingress", "egress"]
    public static let protocols = ["tcp", "udp", "icmp", "all"]
    /// At most this many groups on a NIC and rules in a group (ECS: 5 and 200).
    public static let maxGroupsPerNIC = 5
    public static let maxRulesPerGroup = 100

    /// "80" → 80...80, "8000-8100" → 8000...8100; ports 1 to 65535, the first not above the last.
    public static func portRange(_ text: String) throws(APIError) -> ClosedRange<Int> {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        func port(_ s: Substring) -> Int? {
            guard (1...5).contains(s.utf8.count), s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), s.first != "0", let p = Int(s), p <= 65535 else {
                return nil
            }
            return p
        }
        guard (1...2).contains(parts.count), let from = port(parts[0]), let to = port(parts[parts.count - 1]) else {
            throw APIError(
                code: "invalid_argument", message: "ports '\(Validate.escaped(text))': a port (1-65535) or a range like 8000-8100")
        }
        guard from <= to else { throw APIError(code: "invalid_argument", message: "ports \(text): the first port is above the last") }
        return from...to
    }
}

// Security groups through the API (docs/NETWORK.md): a tenant's own groups, their rules, and the groups
// of each NIC. Every change is recorded, then the firewall is rebuilt from the store and applied in one
// transaction; when the host refuses it the store change is undone, so nothing is left half-made.
import Foundation
import KumoAPI

extension Service {
    /// The tenant's group made on first need: its members reach each other, nothing else gets in, and
    /// everything may go out (as ECS's and AWS's default groups).
    static let defaultGroupRules = [
        Store.RuleRecord(direction: "ingress", proto: "all", remoteGroup: Store.RuleRecord.selfGroup, description: "from this group's own NICs"),
        Store.RuleRecord(direction: "egress", proto: "all", cidr: IPv4Network("0.0.0.0/0")!, description: "anywhere"),
    ]
    /// A new group's: everything may go out.
    static let newGroupRules = [Store.RuleRecord(direction: "egress", proto: "all", cidr: IPv4Network("0.0.0.0/0")!, description: "anywhere")]

    public func listSecurityGroups(by who: Store.Principal) throws(APIError) -> [SecurityGroup] {
        try wrap { who.admin ? try store.allSecurityGroups() : try store.securityGroups(tenant: who.tenantID) }.map(\.resource)
    }

    /// A group the caller may see (a tenant: its own, by id or name; an admin: any, by id).
    func securityGroupRecord(_ ref: String, by who: Store.Principal) throws(APIError) -> Store.GroupRecord {
        let found = try wrap { () throws -> Store.GroupRecord? in
            if let own = try store.securityGroup(ref, tenant: who.tenantID) { return own }
            return who.admin ? try store.securityGroup(ref, tenant: nil) : nil
        }
        guard let g = found else {
            throw APIError(code: "not_found", message: "no security group \(Validate.escaped(ref)) (`kumo security-group list`)")
        }
        return g
    }

    public func describeSecurityGroup(_ ref: String, by who: Store.Principal) throws(APIError) -> SecurityGroup {
        try securityGroupRecord(ref, by: who).resource
    }

    public func createSecurityGroup(_ r: CreateSecurityGroupRequest, by who: Store.Principal) throws(APIError) -> SecurityGroup {
        try Validate.identifier(r.name, field: "security group name", punctuation: "-_.")
        guard !r.name.hasPrefix("sg-") else {
            throw APIError(code: "invalid_argument", message: "security group name \(r.name): sg- starts group ids, not names")
        }
        if let d = r.description { try Validate.text(d, field: "description", maxBytes: 255) }
        return try makeGroup(tenant: who.tenantID, name: r.name, description: r.description, isDefault: false, rules: Self.newGroupRules).resource
    }

    func makeGroup(tenant: String, name: String, description: String?, isDefault: Bool, rules: [Store.RuleRecord]) throws(APIError) -> Store.GroupRecord {
        let created = try wrap {
            try store.createSecurityGroup(id: Store.newID("sg"), tenantID: tenant, name: name, description: description, isDefault: isDefault, rules: rules)
        }
        switch created {
        case let .created(g): return g  // no NIC has it yet: the firewall is unchanged
        case .nameTaken: throw APIError(code: "conflict", message: "you have a security group named \(name)")
        case let .tooMany(n): throw APIError(code: "invalid_argument", message: "at most \(n) security groups per tenant")
        }
    }

    public func deleteSecurityGroup(_ ref: String, by who: Store.Principal) throws(APIError) {
        let g = try securityGroupRecord(ref, by: who)
        switch try wrap({ try store.deleteSecurityGroup(g.id) }) {
        case .deleted: break  // on no NIC and named by no other rule: the firewall is unchanged
        case .missing: throw APIError(code: "not_found", message: "no security group \(Validate.escaped(ref))")
        case let .attached(n):
            throw APIError(code: "conflict", message: "security group \(g.name) is on \(n) NIC(s): give them other groups or terminate them first")
        case let .referenced(other):
            throw APIError(code: "conflict", message: "security group \(g.name) is named by a rule of group \(other): delete that rule first")
        }
    }

    /// A request's rule, checked: direction, protocol, ports only for tcp and udp, exactly one of a
    /// range and a group (the caller's own, as the rule's group is).
    func newRule(_ r: AddSecurityGroupRuleRequest, group: Store.GroupRecord) throws(APIError) -> Store.RuleRecord {
        guard SecurityGroupRule.directions.contains(r.direction) else {
            throw APIError(code: "invalid_argument", message: "direction must be ingress or egress, not \"\(Validate.escaped(r.direction))\"")
        }
        guard SecurityGroupRule.protocols.contains(r.protocol) else {
            throw APIError(code: "invalid_argument", message: "protocol must be tcp, udp, icmp or all, not \"\(Validate.escaped(r.protocol))\"")
        }
        var ports: ClosedRange<Int>? = nil
        if let p = r.ports {
            guard r.protocol == "tcp" || r.protocol == "udp" else {
                throw APIError(code: "invalid_argument", message: "ports are for tcp and udp rules, not \(r.protocol)")
            }
            ports = try SecurityGroupRule.portRange(p)
            if ports == 1...65535 { ports = nil }
        }
        if let d = r.description { try Validate.text(d, field: "description", maxBytes: 255) }
        switch (r.cidr, r.group) {
        case let (c?, nil):
            guard let n = IPv4Network(c) else {
                throw APIError(
                    code: "invalid_argument", message: "cidr '\(Validate.escaped(c))' is not an IPv4 network like 10.0.0.0/24 or 0.0.0.0/0 (host bits zero)")
            }
            return Store.RuleRecord(direction: r.direction, proto: r.protocol, ports: ports, cidr: n, description: r.description)
        case let (nil, g?):
            try Validate.text(g, field: "group", maxBytes: 255)
            guard let other = try wrap({ try store.securityGroup(g, tenant: group.tenantID) }) else {
                throw APIError(code: "not_found", message: "no security group \(Validate.escaped(g)) of the group's tenant")
            }
            return Store.RuleRecord(direction: r.direction, proto: r.protocol, ports: ports, remoteGroup: other.id, description: r.description)
        default:
            throw APIError(code: "invalid_argument", message: "a rule names exactly one of cidr (a range, 0.0.0.0/0 for anywhere) and group")
        }
    }

    public func addSecurityGroupRule(_ ref: String, _ r: AddSecurityGroupRuleRequest, by who: Store.Principal) throws(APIError) -> SecurityGroupRule {
        let g = try securityGroupRecord(ref, by: who)
        let rule = try newRule(r, group: g)
        return try withFirewall { () throws(APIError) in
            switch try wrap({ try store.addSecurityGroupRule(group: g.id, rule) }) {
            case let .added(added):
                try applyOrUndo { try? store.deleteSecurityGroupRule(group: g.id, rule: added.id) }
                return added.resource
            case .missing: throw APIError(code: "not_found", message: "no security group \(Validate.escaped(ref))")
            case let .duplicate(id): throw APIError(code: "conflict", message: "security group \(g.name) has that rule already (\(id))")
            case let .tooMany(n): throw APIError(code: "invalid_argument", message: "at most \(n) rules per security group")
            }
        }
    }

    public func deleteSecurityGroupRule(_ ref: String, rule: String, by who: Store.Principal) throws(APIError) {
        let g = try securityGroupRecord(ref, by: who)
        guard let old = g.rules.first(where: { $0.id == rule }) else {
            throw APIError(code: "not_found", message: "security group \(g.name) has no rule \(Validate.escaped(rule))")
        }
        try withFirewall { () throws(APIError) in
            guard try wrap({ try store.deleteSecurityGroupRule(group: g.id, rule: rule) }) else {
                throw APIError(code: "not_found", message: "security group \(g.name) has no rule \(Validate.escaped(rule))")
            }
            try applyOrUndo { try? store.restoreSecurityGroupRule(group: g.id, old) }
        }
    }

    /// The groups (ids) of NICs at a launch: the caller's own, named (1 to 5); named none, its default
    /// group, made when it has none. None at all when the instance gets no NIC.
    func groupsForLaunch(_ refs: [String]?, nics: Int, by who: Store.Principal) throws(APIError) -> [String] {
        guard let refs else { return nics == 0 ? [] : [try defaultGroup(of: who.tenantID).id] }
        guard nics > 0 else {
            throw APIError(code: "invalid_argument", message: "security groups are for NICs, and the instance gets none")
        }
        return try ownGroups(refs, tenant: who.tenantID)
    }

    func ownGroups(_ refs: [String], tenant: String) throws(APIError) -> [String] {
        guard (1...SecurityGroupRule.maxGroupsPerNIC).contains(refs.count) else {
            throw APIError(code: "invalid_argument", message: "a NIC has 1 to \(SecurityGroupRule.maxGroupsPerNIC) security groups, not \(refs.count)")
        }
        var ids: [String] = []
        for ref in refs {
            try Validate.text(ref, field: "security group", maxBytes: 255)
            guard let g = try wrap({ try store.securityGroup(ref, tenant: tenant) }) else {
                throw APIError(code: "not_found", message: "you have no security group \(Validate.escaped(ref)) (`kumo security-group list`)")
            }
            guard !ids.contains(g.id) else { throw APIError(code: "invalid_argument", message: "security group \(g.name) is named twice") }
            ids.append(g.id)
        }
        return ids
    }

    func defaultGroup(of tenant: String) throws(APIError) -> Store.GroupRecord {
        if let g = try wrap({ try store.securityGroups(tenant: tenant) }).first(where: \.isDefault) { return g }
        do {
            return try makeGroup(
                tenant: tenant, name: "default", description: "made for the tenant's first NIC", isDefault: true, rules: Self.defaultGroupRules)
        } catch  where error.code == "conflict" {
            // Made by a request beside this one (or a group of the tenant's own is named "default").
            guard let g = try wrap({ try store.securityGroup("default", tenant: tenant) }) else { throw error }
            return g
        }
    }

    /// Replaces the groups of the instance's NIC `index`; a running instance keeps the flows they allow.
    public func setSecurityGroups(_ id: String, nic index: Int, _ r: SetSecurityGroupsRequest, by who: Store.Principal) throws(APIError) -> NIC {
        let rec = try record(id, by: who)
        guard rec.instance.state != .deleted, let old = rec.instance.nics?.first(where: { $0.index == index }) else {
            throw APIError(code: "not_found", message: "instance \(id) has no NIC \(index)")
        }
        // The instance's tenant's groups (an admin changes a tenant's NIC with that tenant's groups).
        let ids = try ownGroups(r.securityGroups, tenant: rec.tenantID)
        return try withFirewall { () throws(APIError) in
            guard try wrap({ try store.setSecurityGroups(instance: id, index: index, groups: ids) }) else {
                throw APIError(code: "not_found", message: "instance \(id) has no NIC \(index)")
            }
            try applyOrUndo { _ = try? store.setSecurityGroups(instance: id, index: index, groups: old.securityGroups) }
            guard let nic = try show(id, by: who).nics?.first(where: { $0.index == index }) else {
                throw APIError(code: "not_found", message: "instance \(id) has no NIC \(index)")
            }
            return nic
        }
    }
}

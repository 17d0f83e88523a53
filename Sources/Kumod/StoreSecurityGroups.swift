// Security groups, their rules and their NICs in the store. Limits and duplicate checks run inside the
// write transaction that records the change, so two requests at once cannot pass them together.
import Foundation
import GRDB
import KumoAPI

extension Store {
    public struct RuleRecord: Sendable, Equatable {
        /// Empty in a rule not recorded yet.
        public var id: String
        public var direction: String
        public var proto: String
        public var ports: ClosedRange<Int>?
        public var cidr: IPv4Network?
        /// A group id of the same tenant; `selfGroup` in a new group's own rules for itself.
        public var remoteGroup: String?
        public var description: String?
        public static let selfGroup = "self"

        public init(
            id: String = "", direction: String, proto: String, ports: ClosedRange<Int>? = nil, cidr: IPv4Network? = nil, remoteGroup: String? = nil,
            description: String? = nil
        ) {
            self.id = id; self.direction = direction; self.proto = proto; self.ports = ports; self.cidr = cidr; self.remoteGroup = remoteGroup
            self.description = description
        }

        public var resource: SecurityGroupRule {
            SecurityGroupRule(
                id: id, direction: direction, protocol: proto, ports: ports.map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" },
                cidr: cidr?.description, group: remoteGroup, description: description)
        }

        /// The same rule, whatever its id and description say.
        func sameEffect(_ o: RuleRecord) -> Bool {
            direction == o.direction && proto == o.proto && ports == o.ports && cidr == o.cidr && remoteGroup == o.remoteGroup
        }
    }

    public struct GroupRecord: Sendable, Equatable {
        public var id: String
        public var tenantID: String
        public var tenantName: String
        public var name: String
        public var description: String?
        public var isDefault: Bool
        public var createdAt: String
        public var nics: Int
        public var rules: [RuleRecord]

        public var resource: SecurityGroup {
            SecurityGroup(
                id: id, name: name, tenant: tenantName, description: description, isDefault: isDefault, rules: rules.map(\.resource), nics: nics,
                createdAt: createdAt)
        }
    }

    static let groupColumns = """
        SELECT g.id, g.tenant_id, t.name, g.name, g.description, g.is_default, g.created_at,
            (SELECT count(*) FROM nic_security_groups WHERE group_id = g.id)
        FROM security_groups g JOIN tenants t ON t.id = g.tenant_id
        """

    static func rules(_ db: Database, groups ids: [String]) throws -> [String: [RuleRecord]] {
        guard !ids.isEmpty else { return [:] }
        let marks = ids.map { _ in "?" }.joined(separator: ",")
        let rows = try Row.fetchAll(
            db,
            sql: """
                SELECT group_id, id, direction, protocol, port_from, port_to, cidr, remote_group_id, description FROM security_group_rules
                WHERE group_id IN (\(marks)) ORDER BY created_at, id
                """, arguments: StatementArguments(ids))
        var out: [String: [RuleRecord]] = [:]
        for r in rows {
            let from: Int? = r[4], to: Int? = r[5]
            out[r[0], default: []].append(
                RuleRecord(
                    id: r[1], direction: r[2], proto: r[3], ports: from.flatMap { f in to.map { f...$0 } }, cidr: (r[6] as String?).flatMap(IPv4Network.init),
                    remoteGroup: r[7], description: r[8]))
        }
        return out
    }

    static func groups(_ db: Database, where clause: String, _ args: StatementArguments) throws -> [GroupRecord] {
        let rows = try Row.fetchAll(db, sql: groupColumns + " " + clause, arguments: args)
        let rules = try Self.rules(db, groups: rows.map { $0[0] })
        return rows.map { r in
            GroupRecord(
                id: r[0], tenantID: r[1], tenantName: r[2], name: r[3], description: r[4], isDefault: r[5], createdAt: r[6], nics: r[7],
                rules: rules[r[0] as String] ?? [])
        }
    }

    public func allSecurityGroups() throws -> [GroupRecord] {
        try db.read { try Self.groups($0, where: "ORDER BY g.created_at, g.id", []) }
    }

    public func securityGroups(tenant: String) throws -> [GroupRecord] {
        try db.read { try Self.groups($0, where: "WHERE g.tenant_id = ? ORDER BY g.created_at, g.id", [tenant]) }
    }

    /// A tenant's group by id or name (nil tenant: any tenant's, by id).
    public func securityGroup(_ ref: String, tenant: String?) throws -> GroupRecord? {
        try db.read { db in
            if let tenant {
                return try Self.groups(db, where: "WHERE g.tenant_id = ? AND (g.id = ? OR g.name = ?)", [tenant, ref, ref]).first
            }
            return try Self.groups(db, where: "WHERE g.id = ?", [ref]).first
        }
    }

    /// Records `r` in `group` (a fresh id unless it has one; a remote group of `selfGroup` is `group`).
    static func insertRule(_ db: Database, group: String, _ r: RuleRecord) throws -> String {
        let id = r.id.isEmpty ? newID("sgr") : r.id
        try db.execute(
            sql: """
                INSERT INTO security_group_rules (id, group_id, direction, protocol, port_from, port_to, cidr, remote_group_id, description, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [
                id, group, r.direction, r.proto, r.ports?.lowerBound, r.ports?.upperBound, r.cidr?.description,
                r.remoteGroup == RuleRecord.selfGroup ? group : r.remoteGroup, r.description, now(),
            ])
        return id
    }

    public enum GroupCreation: Sendable, Equatable {
        case created(GroupRecord)
        case nameTaken
        case tooMany(Int)
    }

    /// At most this many groups per tenant.
    public static let maxGroupsPerTenant = 100

    public func createSecurityGroup(
        id: String, tenantID: String, name: String, description: String?, isDefault: Bool, rules: [RuleRecord]
    ) throws -> GroupCreation {
        try db.write { db in
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM security_groups WHERE tenant_id = ? AND name = ?", arguments: [tenantID, name]) ?? 0 > 0 {
                return .nameTaken
            }
            let count = try Int.fetchOne(db, sql: "SELECT count(*) FROM security_groups WHERE tenant_id = ?", arguments: [tenantID]) ?? 0
            if count >= Self.maxGroupsPerTenant { return .tooMany(Self.maxGroupsPerTenant) }
            try db.execute(
                sql: "INSERT INTO security_groups (id, tenant_id, name, description, is_default, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [id, tenantID, name, description, isDefault, Self.now()])
            for r in rules { _ = try Self.insertRule(db, group: id, r) }
            return .created(try Self.groups(db, where: "WHERE g.id = ?", [id]).first!)
        }
    }

    public enum RuleAddition: Sendable, Equatable {
        case added(RuleRecord)
        case missing
        case duplicate(String)
        case tooMany(Int)
    }

    public func addSecurityGroupRule(group: String, _ r: RuleRecord) throws -> RuleAddition {
        try db.write { db in
            guard let g = try Self.groups(db, where: "WHERE g.id = ?", [group]).first else { return .missing }
            if let same = g.rules.first(where: { $0.sameEffect(r) }) { return .duplicate(same.id) }
            if g.rules.count >= SecurityGroupRule.maxRulesPerGroup { return .tooMany(SecurityGroupRule.maxRulesPerGroup) }
            let id = try Self.insertRule(db, group: group, r)
            return .added(try Self.rules(db, groups: [group])[group]!.first { $0.id == id }!)
        }
    }

    /// Whether the rule was there (and is gone).
    public func deleteSecurityGroupRule(group: String, rule: String) throws -> Bool {
        try db.write { db in
            try db.execute(sql: "DELETE FROM security_group_rules WHERE group_id = ? AND id = ?", arguments: [group, rule])
            return db.changesCount > 0
        }
    }

    /// Puts back a rule just deleted (same id), when the host refused the firewall without it.
    public func restoreSecurityGroupRule(group: String, _ r: RuleRecord) throws {
        try db.write { db in _ = try Self.insertRule(db, group: group, r) }
    }

    public enum GroupDeletion: Sendable, Equatable {
        case deleted
        case missing
        case attached(Int)
        /// Another group's rule names it (that group's name).
        case referenced(String)
    }

    public func deleteSecurityGroup(_ id: String) throws -> GroupDeletion {
        try db.write { db in
            guard try String.fetchOne(db, sql: "SELECT id FROM security_groups WHERE id = ?", arguments: [id]) != nil else { return .missing }
            let nics = try Int.fetchOne(db, sql: "SELECT count(*) FROM nic_security_groups WHERE group_id = ?", arguments: [id]) ?? 0
            if nics > 0 { return .attached(nics) }
            if let other = try String.fetchOne(
                db,
                sql: """
                    SELECT g.name FROM security_group_rules r JOIN security_groups g ON g.id = r.group_id
                    WHERE r.remote_group_id = ? AND r.group_id != ? LIMIT 1
                    """, arguments: [id, id])
            {
                return .referenced(other)
            }
            try db.execute(sql: "DELETE FROM security_groups WHERE id = ?", arguments: [id])
            return .deleted
        }
    }

    /// Replaces a NIC's groups, inside the caller's write transaction.
    static func setGroups(_ db: Database, nic: String, groups: [String]) throws {
        try db.execute(sql: "DELETE FROM nic_security_groups WHERE nic_id = ?", arguments: [nic])
        for (i, g) in groups.enumerated() {
            try db.execute(sql: "INSERT INTO nic_security_groups (nic_id, group_id, position) VALUES (?, ?, ?)", arguments: [nic, g, i])
        }
    }

    /// Replaces the groups of the instance's NIC `index`; false when it has no such NIC.
    public func setSecurityGroups(instance: String, index: Int, groups: [String]) throws -> Bool {
        try db.write { db in
            guard let nic = try String.fetchOne(db, sql: "SELECT id FROM nics WHERE instance_id = ? AND idx = ?", arguments: [instance, index]) else {
                return false
            }
            try Self.setGroups(db, nic: nic, groups: groups)
            return true
        }
    }
}

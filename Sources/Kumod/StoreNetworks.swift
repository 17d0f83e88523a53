// Networks and NICs in the store, with IPAM: the overlap checks and the address choice happen inside
// the write transaction that records them, so two requests at once can never take the same range or
// the same address (and the UNIQUE constraints say so again).
import Foundation
import GRDB
import KumoAPI

extension Store {
    public struct NetworkRecord: Sendable, Equatable {
        public var id: String
        public var tenantID: String
        public var tenantName: String
        public var name: String
        public var cidr: IPv4Network
        public var gateway: IPv4Address
        public var bridge: String
        public var isDefault: Bool
        public var createdAt: String
        public var nics: Int

        public var resource: Network {
            Network(
                id: id, name: name, tenant: tenantName, cidr: cidr.description, gateway: gateway.description, isDefault: isDefault, nics: nics,
                createdAt: createdAt, bridge: bridge)
        }
    }

    static let networkColumns = """
        SELECT n.id, n.tenant_id, t.name, n.name, n.cidr, n.gateway, n.bridge, n.is_default, n.created_at,
            (SELECT count(*) FROM nics WHERE network_id = n.id)
        FROM networks n JOIN tenants t ON t.id = n.tenant_id
        """

    static func networkRecord(_ r: Row) -> NetworkRecord {
        NetworkRecord(
            id: r[0], tenantID: r[1], tenantName: r[2], name: r[3], cidr: IPv4Network(r[4] as String)!, gateway: IPv4Address(r[5] as String)!,
            bridge: r[6], isDefault: r[7], createdAt: r[8], nics: r[9])
    }

    /// Every network on the host (all tenants'), oldest first.
    public func allNetworks() throws -> [NetworkRecord] {
        try db.read { try Row.fetchAll($0, sql: Self.networkColumns + " ORDER BY n.created_at, n.id").map(Self.networkRecord) }
    }

    public func networks(tenant: String) throws -> [NetworkRecord] {
        try db.read { db in
            try Row.fetchAll(db, sql: Self.networkColumns + " WHERE n.tenant_id = ? ORDER BY n.created_at, n.id", arguments: [tenant])
                .map(Self.networkRecord)
        }
    }

    /// A tenant's network by id or name (nil tenant: any tenant's, by id).
    public func network(_ ref: String, tenant: String?) throws -> NetworkRecord? {
        try db.read { db in
            if let tenant {
                return try Row.fetchOne(
                    db, sql: Self.networkColumns + " WHERE n.tenant_id = ? AND (n.id = ? OR n.name = ?)", arguments: [tenant, ref, ref]
                ).map(Self.networkRecord)
            }
            return try Row.fetchOne(db, sql: Self.networkColumns + " WHERE n.id = ?", arguments: [ref]).map(Self.networkRecord)
        }
    }

    public enum NetworkCreation: Sendable, Equatable {
        case created(NetworkRecord)
        case nameTaken
        /// Overlaps the tenant's own network (named) or another tenant's (unnamed: not theirs to know).
        case overlapsOwn(String)
        case overlapsOther
        /// No free /24 left to pick in 10.0.0.0/8.
        case exhausted
    }

    /// Records a network. `cidr` nil: the lowest /24 in 10.0.0.0/8 that overlaps neither a network on
    /// this host nor `reserved` (the host's own ranges). A new default replaces the tenant's old one.
    public func createNetwork(
        id: String, tenantID: String, name: String, cidr: IPv4Network?, reserved: [IPv4Network], bridge: String, isDefault: Bool
    ) throws -> NetworkCreation {
        try db.write { db in
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM networks WHERE tenant_id = ? AND name = ?", arguments: [tenantID, name]) ?? 0 > 0 {
                return .nameTaken
            }
            let existing = try Row.fetchAll(db, sql: "SELECT tenant_id, name, cidr FROM networks").map {
                (tenant: $0[0] as String, name: $0[1] as String, cidr: IPv4Network($0[2] as String)!)
            }
            let chosen: IPv4Network
            if let cidr {
                if let own = existing.first(where: { $0.tenant == tenantID && $0.cidr.overlaps(cidr) }) { return .overlapsOwn(own.name) }
                if existing.contains(where: { $0.cidr.overlaps(cidr) }) { return .overlapsOther }
                chosen = cidr
            } else {
                let taken = existing.map(\.cidr) + reserved
                // 10.0.0.0/24 is left out: it is many routers' and cloud defaults' range.
                guard
                    let free = (1..<65536).lazy.compactMap({ IPv4Network(address: IPv4Address(0x0A00_0000 | UInt32($0) << 8), prefix: 24) })
                        .first(where: { n in !taken.contains { $0.overlaps(n) } })
                else { return .exhausted }
                chosen = free
            }
            let gateway = chosen.address(at: 1)!
            if isDefault { try db.execute(sql: "UPDATE networks SET is_default = 0 WHERE tenant_id = ?", arguments: [tenantID]) }
            try db.execute(
                sql: "INSERT INTO networks (id, tenant_id, name, cidr, gateway, bridge, is_default, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                arguments: [id, tenantID, name, chosen.description, gateway.description, bridge, isDefault, Self.now()])
            return .created(try Row.fetchOne(db, sql: Self.networkColumns + " WHERE n.id = ?", arguments: [id]).map(Self.networkRecord)!)
        }
    }

    public enum NetworkDeletion: Sendable, Equatable { case deleted, missing, inUse(Int), hasLoadBalancers(Int) }

    public func deleteNetwork(_ id: String) throws -> NetworkDeletion {
        try db.write { db in
            guard try String.fetchOne(db, sql: "SELECT id FROM networks WHERE id = ?", arguments: [id]) != nil else { return .missing }
            let nics = try Int.fetchOne(db, sql: "SELECT count(*) FROM nics WHERE network_id = ?", arguments: [id]) ?? 0
            if nics > 0 { return .inUse(nics) }
            let balancers = try Int.fetchOne(db, sql: "SELECT count(*) FROM load_balancers WHERE network_id = ?", arguments: [id]) ?? 0
            if balancers > 0 { return .hasLoadBalancers(balancers) }
            try db.execute(sql: "DELETE FROM networks WHERE id = ?", arguments: [id])
            return .deleted
        }
    }

    /// The kumod id that tags this host's links (made once, kept in settings).
    public func kumodID() throws -> String {
        try db.write { db in
            if let id = try String.fetchOne(db, sql: "SELECT value FROM settings WHERE key = 'kumod_id'") { return id }
            let id = String(Self.newID("k").dropFirst(2).prefix(12))
            try db.execute(sql: "INSERT INTO settings (key, value) VALUES ('kumod_id', ?)", arguments: [id])
            return id
        }
    }
}

// MARK: NICs and IPAM

extension Store {
    public struct NICRecord: Sendable, Equatable {
        public var id: String
        public var instanceID: String
        public var index: Int
        public var networkID: String
        public var networkName: String
        public var bridge: String
        public var mac: String
        public var address: IPv4Address
        public var cidr: IPv4Network
        public var gateway: IPv4Address
        public var tap: String
        /// Security group ids, in the order they were given.
        public var securityGroups: [String]
        /// Filled where the NIC is shown (`Store.nics(_:instances:)`).
        public var forwards: [ForwardRecord] = []

        public var resource: NIC {
            NIC(
                index: index, network: networkID, networkName: networkName, mac: mac, address: address.description, securityGroups: securityGroups,
                portForwards: forwards.map(\.resource), tap: tap)
        }
    }

    static let nicColumns = """
        SELECT c.id, c.instance_id, c.idx, c.network_id, n.name, n.bridge, c.mac, c.address, n.cidr, n.gateway, c.tap,
            (SELECT group_concat(group_id, ',') FROM (SELECT group_id FROM nic_security_groups WHERE nic_id = c.id ORDER BY position))
        FROM nics c JOIN networks n ON n.id = c.network_id
        """

    static func nicRecord(_ r: Row) -> NICRecord {
        NICRecord(
            id: r[0], instanceID: r[1], index: r[2], networkID: r[3], networkName: r[4], bridge: r[5], mac: r[6],
            address: IPv4Address(r[7] as String)!, cidr: IPv4Network(r[8] as String)!, gateway: IPv4Address(r[9] as String)!, tap: r[10],
            securityGroups: (r[11] as String?)?.split(separator: ",").map(String.init) ?? [])
    }

    static func nics(_ db: Database, instances ids: [String]) throws -> [String: [NICRecord]] {
        guard !ids.isEmpty else { return [:] }
        let marks = ids.map { _ in "?" }.joined(separator: ",")
        let rows = try Row.fetchAll(db, sql: nicColumns + " WHERE c.instance_id IN (\(marks)) ORDER BY c.idx", arguments: StatementArguments(ids))
        var nics = rows.map(nicRecord)
        let forwards = try Self.forwards(db, nics: nics.map(\.id))
        for i in nics.indices { nics[i].forwards = forwards[nics[i].id] ?? [] }
        return Dictionary(grouping: nics, by: \.instanceID)
    }

    public func nics(instance id: String) throws -> [NICRecord] {
        try db.read { try Self.nics($0, instances: [id])[id] ?? [] }
    }

    public func nics(network id: String) throws -> [NICRecord] {
        try db.read { try Row.fetchAll($0, sql: Self.nicColumns + " WHERE c.network_id = ? ORDER BY c.address", arguments: [id]).map(Self.nicRecord) }
    }

    public func allNICs() throws -> [NICRecord] {
        try db.read { try Row.fetchAll($0, sql: Self.nicColumns).map(Self.nicRecord) }
    }

    /// The addresses of a network that are taken: its NICs' and its load balancers'.
    static func takenAddresses(_ db: Database, network: String) throws -> Set<IPv4Address> {
        Set(
            try String.fetchAll(
                db, sql: "SELECT address FROM nics WHERE network_id = ? UNION SELECT address FROM load_balancers WHERE network_id = ?",
                arguments: [network, network]
            ).compactMap(IPv4Address.init))
    }

    /// A NIC for `instance` in `network`, inside the caller's write transaction: the lowest free address
    /// (after the gateway, before the broadcast address), a fresh locally administered MAC, a tap name.
    static func allocateNIC(_ db: Database, instance: String, index: Int, network: String, groups: [String]) throws {
        guard let row = try Row.fetchOne(db, sql: "SELECT name, cidr FROM networks WHERE id = ?", arguments: [network]),
            let cidr = IPv4Network(row[1] as String)
        else { throw APIError(code: "not_found", message: "no network \(network)") }
        let used = try takenAddresses(db, network: network)
        guard let address = (2..<(cidr.size - 1)).lazy.compactMap({ cidr.address(at: $0) }).first(where: { !used.contains($0) }) else {
            throw APIError(code: "insufficient_capacity", message: "network \(row[0] as String) (\(cidr)) has no free address left")
        }
        var g = SystemRandomNumberGenerator()
        var mac = ""
        repeat {
            mac = "52:54:00:" + (0..<3).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }.joined(separator: ":")
        } while try Int.fetchOne(db, sql: "SELECT count(*) FROM nics WHERE mac = ?", arguments: [mac]) ?? 0 > 0
        let id = newID("nic")
        try db.execute(
            sql: "INSERT INTO nics (id, instance_id, idx, network_id, mac, address, tap) VALUES (?, ?, ?, ?, ?, ?, ?)",
            arguments: [id, instance, index, network, mac, address.description, "kt" + id.dropFirst(4).prefix(12)])
        try setGroups(db, nic: id, groups: groups)
    }

    /// Releases the instance's NICs (its addresses are free again); returns what they were.
    public func releaseNICs(instance id: String) throws -> [NICRecord] {
        try db.write { db in
            let gone = try Self.nics(db, instances: [id])[id] ?? []
            try db.execute(sql: "DELETE FROM nics WHERE instance_id = ?", arguments: [id])
            return gone
        }
    }
}

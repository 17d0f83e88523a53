// Load balancers in the store (docs/LB.md): balancers, backend groups, backends, listeners, each
// backend's health per listener (kept, so a restarted kumod writes the same rules at once), the drains
// under way and the events. Every check that two requests could race on (a name, an address, a port)
// happens inside the write that records the change, and the UNIQUE constraints say so again.
import Foundation
import GRDB
import KumoAPI

extension Store {
    public struct BackendRecord: Sendable, Equatable {
        public var id: String
        public var groupID: String
        public var nicID: String
        public var instanceID: String
        public var nicIndex: Int
        public var networkID: String
        public var address: IPv4Address
        public var port: Int
        public var weight: Int

        public var resource: BackendGroup.Backend {
            .init(id: id, instance: instanceID, nic: nicIndex, address: address.description, port: port, weight: weight)
        }
    }

    public struct LBGroupRecord: Sendable, Equatable {
        public var id: String
        public var name: String
        public var backends: [BackendRecord]
        public var resource: BackendGroup { BackendGroup(id: id, name: name, backends: backends.map(\.resource)) }
    }

    public struct ListenerRecord: Sendable, Equatable {
        public var id: String
        public var lbID: String
        public var proto: String
        public var address: IPv4Address
        public var port: Int
        public var scheduler: String
        public var persistence: Int?
        public var drain: Int
        public var groupID: String
        public var health: HealthCheckSpec
    }

    public struct HealthRecord: Sendable, Equatable {
        public var healthy: Bool
        public var reason: String?
        public var since: String
    }

    public struct LBRecord: Sendable, Equatable {
        public var id: String
        public var tenantID: String
        public var tenantName: String
        public var name: String
        public var address: IPv4Address
        public var networkID: String?
        public var createdAt: String
        public var listeners: [ListenerRecord]
        public var groups: [LBGroupRecord]
        /// Health by listener id, then backend id.
        public var health: [String: [String: HealthRecord]]

        public func group(_ id: String) -> LBGroupRecord? { groups.first { $0.id == id } }

        public var resource: LoadBalancer {
            LoadBalancer(
                id: id, name: name, tenant: tenantName, address: address.description, network: networkID,
                listeners: listeners.map { l in
                    let backends = (group(l.groupID)?.backends ?? []).map { b in
                        let h = health[l.id]?[b.id]
                        let state = l.health.type == "none" ? "healthy" : h.map { $0.healthy ? "healthy" : "unhealthy" } ?? "unknown"
                        return LoadBalancer.BackendStatus(
                            backend: b.id, address: b.address.description, port: b.port, weight: b.weight, health: state, reason: h?.reason,
                            since: h?.since)
                    }
                    return LoadBalancer.Listener(
                        id: l.id, protocol: l.proto, port: l.port, scheduler: l.scheduler, persistenceSeconds: l.persistence, drainSeconds: l.drain,
                        backendGroup: l.groupID, healthCheck: l.health, backends: backends)
                },
                backendGroups: groups.map(\.resource), createdAt: createdAt)
        }
    }

    /// A drain under way: a backend out of a listener's rules whose established flows end at `endsAt`.
    public struct DrainRecord: Sendable, Equatable {
        public var seq: Int64 = 0
        public var lbID: String
        public var listenerID: String
        public var proto: String
        public var address: IPv4Address
        public var port: Int
        public var backendAddress: IPv4Address
        public var backendPort: Int
        /// Seconds since 1970.
        public var endsAt: Double
    }

    static let healthCodec: (JSONEncoder, JSONDecoder) = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return (e, JSONDecoder())
    }()

    static func loadBalancers(_ db: Database, where clause: String, _ args: StatementArguments) throws -> [LBRecord] {
        let rows = try Row.fetchAll(
            db,
            sql: """
                SELECT b.id, b.tenant_id, t.name, b.name, b.address, b.network_id, b.created_at
                FROM load_balancers b JOIN tenants t ON t.id = b.tenant_id \(clause) ORDER BY b.created_at, b.id
                """, arguments: args)
        return try rows.map { r in
            let id: String = r[0]
            let backends = try Row.fetchAll(
                db,
                sql: """
                    SELECT e.id, e.group_id, e.nic_id, c.instance_id, c.idx, c.network_id, c.address, e.port, e.weight
                    FROM lb_backends e JOIN lb_groups g ON g.id = e.group_id JOIN nics c ON c.id = e.nic_id
                    WHERE g.lb_id = ? ORDER BY e.created_at, e.id
                    """, arguments: [id]
            ).map {
                BackendRecord(
                    id: $0[0], groupID: $0[1], nicID: $0[2], instanceID: $0[3], nicIndex: $0[4], networkID: $0[5], address: IPv4Address($0[6] as String)!,
                    port: $0[7], weight: $0[8])
            }
            let groups = try Row.fetchAll(db, sql: "SELECT id, name FROM lb_groups WHERE lb_id = ? ORDER BY created_at, id", arguments: [id]).map { g in
                LBGroupRecord(id: g[0], name: g[1], backends: backends.filter { $0.groupID == g[0] as String })
            }
            let listeners = try Row.fetchAll(
                db,
                sql: """
                    SELECT id, protocol, address, port, scheduler, persistence_seconds, drain_seconds, group_id, health_check
                    FROM lb_listeners WHERE lb_id = ? ORDER BY port, protocol
                    """, arguments: [id]
            ).map { l in
                ListenerRecord(
                    id: l[0], lbID: id, proto: l[1], address: IPv4Address(l[2] as String)!, port: l[3], scheduler: l[4], persistence: l[5], drain: l[6],
                    groupID: l[7], health: try healthCodec.1.decode(HealthCheckSpec.self, from: Data((l[8] as String).utf8)))
            }
            var health: [String: [String: HealthRecord]] = [:]
            for h in try Row.fetchAll(
                db,
                sql: """
                    SELECT h.listener_id, h.backend_id, h.state, h.reason, h.since FROM lb_health h JOIN lb_listeners l ON l.id = h.listener_id
                    WHERE l.lb_id = ?
                    """, arguments: [id])
            {
                health[h[0], default: [:]][h[1]] = HealthRecord(healthy: (h[2] as String) == "healthy", reason: h[3], since: h[4])
            }
            return LBRecord(
                id: id, tenantID: r[1], tenantName: r[2], name: r[3], address: IPv4Address(r[4] as String)!, networkID: r[5], createdAt: r[6],
                listeners: listeners, groups: groups, health: health)
        }
    }

    public func allLoadBalancers() throws -> [LBRecord] {
        try db.read { try Self.loadBalancers($0, where: "", []) }
    }

    public func loadBalancers(tenant: String) throws -> [LBRecord] {
        try db.read { try Self.loadBalancers($0, where: "WHERE b.tenant_id = ?", [tenant]) }
    }

    /// A tenant's balancer by id or name (nil tenant: any tenant's, by id).
    public func loadBalancer(_ ref: String, tenant: String?) throws -> LBRecord? {
        try db.read { db in
            if let tenant { return try Self.loadBalancers(db, where: "WHERE b.tenant_id = ? AND (b.id = ? OR b.name = ?)", [tenant, ref, ref]).first }
            return try Self.loadBalancers(db, where: "WHERE b.id = ?", [ref]).first
        }
    }

    public enum LBChange: Sendable, Equatable {
        case done(String)
        case nameTaken
        case tooMany(Int)
        /// The address (a listener's address, protocol and port) is in use; by whom is not said.
        case taken
        case noAddress
        case missing
        case inUse(String)
    }

    /// A balancer on `hostAddress`, or on the highest free address of `network` (NICs take the lowest).
    public func createLoadBalancer(tenant: String, name: String, hostAddress: IPv4Address?, network: (id: String, cidr: IPv4Network)?) throws -> LBChange {
        try db.write { db in
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM load_balancers WHERE tenant_id = ? AND name = ?", arguments: [tenant, name]) ?? 0 > 0 {
                return .nameTaken
            }
            let count = try Int.fetchOne(db, sql: "SELECT count(*) FROM load_balancers WHERE tenant_id = ?", arguments: [tenant]) ?? 0
            if count >= LoadBalancer.maxPerTenant { return .tooMany(LoadBalancer.maxPerTenant) }
            var address = hostAddress
            if let n = network {
                let used = try Self.takenAddresses(db, network: n.id)
                address = (2..<(n.cidr.size - 1)).reversed().lazy.compactMap { n.cidr.address(at: $0) }.first { !used.contains($0) }
                if address == nil { return .noAddress }
            }
            let id = Self.newID("lb")
            try db.execute(
                sql: "INSERT INTO load_balancers (id, tenant_id, name, address, network_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [id, tenant, name, address!.description, network?.id, Self.now()])
            return .done(id)
        }
    }

    public func createBackendGroup(lb: String, name: String) throws -> LBChange {
        try db.write { db in
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM lb_groups WHERE lb_id = ? AND name = ?", arguments: [lb, name]) ?? 0 > 0 { return .nameTaken }
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM lb_groups WHERE lb_id = ?", arguments: [lb]) ?? 0 >= LoadBalancer.maxGroups {
                return .tooMany(LoadBalancer.maxGroups)
            }
            let id = Self.newID("bg")
            try db.execute(sql: "INSERT INTO lb_groups (id, lb_id, name, created_at) VALUES (?, ?, ?, ?)", arguments: [id, lb, name, Self.now()])
            return .done(id)
        }
    }

    public func addBackend(group: String, nic: String, port: Int, weight: Int) throws -> LBChange {
        try db.write { db in
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM lb_backends WHERE group_id = ? AND nic_id = ? AND port = ?", arguments: [group, nic, port])
                ?? 0 > 0
            {
                return .taken
            }
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM lb_backends WHERE group_id = ?", arguments: [group]) ?? 0 >= LoadBalancer.maxBackendsPerGroup {
                return .tooMany(LoadBalancer.maxBackendsPerGroup)
            }
            let id = Self.newID("be")
            try db.execute(
                sql: "INSERT INTO lb_backends (id, group_id, nic_id, port, weight, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [id, group, nic, port, weight, Self.now()])
            return .done(id)
        }
    }

    /// A listener; on a host address its protocol and port must be free of port forwards too.
    public func createListener(_ l: ListenerRecord, hostAddress: Bool) throws -> LBChange {
        try db.write { db in
            if try Int.fetchOne(
                db, sql: "SELECT count(*) FROM lb_listeners WHERE address = ? AND protocol = ? AND port = ?",
                arguments: [l.address.description, l.proto, l.port]) ?? 0 > 0
            {
                return .taken
            }
            if hostAddress,
                try Int.fetchOne(
                    db, sql: "SELECT count(*) FROM port_forwards WHERE protocol = ? AND host_port = ? AND (host_address IS NULL OR host_address = ?)",
                    arguments: [l.proto, l.port, l.address.description]) ?? 0 > 0
            {
                return .taken
            }
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM lb_listeners WHERE lb_id = ?", arguments: [l.lbID]) ?? 0 >= LoadBalancer.maxListeners {
                return .tooMany(LoadBalancer.maxListeners)
            }
            let id = Self.newID("lsn")
            let health = String(decoding: try Self.healthCodec.0.encode(l.health), as: UTF8.self)
            try db.execute(
                sql: """
                    INSERT INTO lb_listeners (id, lb_id, protocol, address, port, scheduler, persistence_seconds, drain_seconds, group_id,
                        health_check, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [id, l.lbID, l.proto, l.address.description, l.port, l.scheduler, l.persistence, l.drain, l.groupID, health, Self.now()])
            return .done(id)
        }
    }

    /// Whether a host port forward may take `proto`/`port` on `address` (nil: every address): no listener has it.
    static func listenerHolds(_ db: Database, proto: String, port: Int, address: IPv4Address?) throws -> Bool {
        if let address {
            return try Int.fetchOne(
                db, sql: "SELECT count(*) FROM lb_listeners WHERE protocol = ? AND port = ? AND address = ?",
                arguments: [proto, port, address.description]) ?? 0 > 0
        }
        return try Int.fetchOne(
            db,
            sql: """
                SELECT count(*) FROM lb_listeners l JOIN load_balancers b ON b.id = l.lb_id
                WHERE l.protocol = ? AND l.port = ? AND b.network_id IS NULL
                """, arguments: [proto, port]) ?? 0 > 0
    }

    /// What of a balancer a deletion names (the table it is in).
    public enum LBPart: String, Sendable { case balancer = "load_balancers", group = "lb_groups", backend = "lb_backends", listener = "lb_listeners" }

    /// Deletes a part of balancer `lb` (the balancer itself, a group, a backend or a listener), recording
    /// `drains` in the same transaction. A group that listeners use is not deleted.
    public func deleteLB(_ part: LBPart, id: String, lb: String, drains: [DrainRecord]) throws -> LBChange {
        let table = part.rawValue
        return try db.write { db in
            let owner: String? =
                switch table {
                case "load_balancers": try String.fetchOne(db, sql: "SELECT id FROM load_balancers WHERE id = ?", arguments: [id])
                case "lb_backends":
                    try String.fetchOne(
                        db, sql: "SELECT g.lb_id FROM lb_backends e JOIN lb_groups g ON g.id = e.group_id WHERE e.id = ?", arguments: [id])
                default: try String.fetchOne(db, sql: "SELECT lb_id FROM \(table) WHERE id = ?", arguments: [id])
                }
            guard owner == lb else { return .missing }
            if table == "lb_groups", let l = try String.fetchOne(db, sql: "SELECT id FROM lb_listeners WHERE group_id = ?", arguments: [id]) {
                return .inUse(l)
            }
            if table == "load_balancers" {
                // Its listeners name its groups: they go first.
                try db.execute(sql: "DELETE FROM lb_listeners WHERE lb_id = ?", arguments: [id])
            }
            try db.execute(sql: "DELETE FROM \(table) WHERE id = ?", arguments: [id])
            for d in drains { try Self.insertDrain(db, d) }
            return .done(id)
        }
    }

    static func insertDrain(_ db: Database, _ d: DrainRecord) throws {
        try db.execute(
            sql: """
                INSERT INTO lb_drains (lb_id, listener_id, protocol, address, port, backend_address, backend_port, ends_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [d.lbID, d.listenerID, d.proto, d.address.description, d.port, d.backendAddress.description, d.backendPort, d.endsAt])
    }

    public func drains() throws -> [DrainRecord] {
        try db.read { db in
            try Row.fetchAll(
                db, sql: "SELECT seq, lb_id, listener_id, protocol, address, port, backend_address, backend_port, ends_at FROM lb_drains ORDER BY ends_at"
            ).map {
                DrainRecord(
                    seq: $0[0], lbID: $0[1], listenerID: $0[2], proto: $0[3], address: IPv4Address($0[4] as String)!, port: $0[5],
                    backendAddress: IPv4Address($0[6] as String)!, backendPort: $0[7], endsAt: $0[8])
            }
        }
    }

    public func endDrain(_ seq: Int64) throws {
        try db.write { try $0.execute(sql: "DELETE FROM lb_drains WHERE seq = ?", arguments: [seq]) }
    }

    /// Records a backend's health for a listener, with an event when it is news; false when the listener
    /// or the backend is gone meanwhile.
    @discardableResult
    public func setHealth(lb: String, listener: String, backend: String, healthy: Bool, reason: String?, event: String?) throws -> Bool {
        try db.write { db in
            guard try Int.fetchOne(db, sql: "SELECT count(*) FROM lb_listeners WHERE id = ?", arguments: [listener]) ?? 0 > 0,
                try Int.fetchOne(db, sql: "SELECT count(*) FROM lb_backends WHERE id = ?", arguments: [backend]) ?? 0 > 0
            else { return false }
            let now = Self.now()
            try db.execute(
                sql: """
                    INSERT INTO lb_health (listener_id, backend_id, state, reason, since) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (listener_id, backend_id) DO UPDATE SET reason = excluded.reason,
                        since = CASE WHEN state = excluded.state THEN since ELSE excluded.since END, state = excluded.state
                    """, arguments: [listener, backend, healthy ? "healthy" : "unhealthy", reason, now])
            if let event { try Self.insertEvent(db, lb: lb, listener: listener, backend: backend, message: event, at: now) }
            return true
        }
    }

    static func insertEvent(_ db: Database, lb: String, listener: String?, backend: String?, message: String, at: String) throws {
        try db.execute(
            sql: "INSERT INTO lb_events (lb_id, listener_id, backend_id, message, at) VALUES (?, ?, ?, ?, ?)",
            arguments: [lb, listener, backend, message, at])
        // The newest 1000 per balancer.
        try db.execute(
            sql: "DELETE FROM lb_events WHERE lb_id = ? AND seq <= (SELECT max(seq) - 1000 FROM lb_events WHERE lb_id = ?)", arguments: [lb, lb])
    }

    public func addLBEvent(lb: String, listener: String? = nil, backend: String? = nil, message: String) throws {
        try db.write { db in
            guard try Int.fetchOne(db, sql: "SELECT count(*) FROM load_balancers WHERE id = ?", arguments: [lb]) ?? 0 > 0 else { return }
            try Self.insertEvent(db, lb: lb, listener: listener, backend: backend, message: message, at: Self.now())
        }
    }

    public func lbEvents(lb: String, limit: Int = 100) throws -> [LoadBalancerEvent] {
        try db.read { db in
            try Row.fetchAll(
                db, sql: "SELECT at, listener_id, backend_id, message FROM lb_events WHERE lb_id = ? ORDER BY seq DESC LIMIT ?", arguments: [lb, limit]
            ).reversed().map { LoadBalancerEvent(at: $0[0], listener: $0[1], backend: $0[2], message: $0[3]) }
        }
    }
}

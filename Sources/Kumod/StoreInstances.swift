// Instances in the store: their records, queries with filters and pages, reservations checked against
// capacity inside one transaction, and state transitions that append to the history.
import Foundation
import GRDB
import KumoAPI

extension Store {
    // MARK: instances

    /// What kumod keeps about an instance beyond its API view.
    public struct InstanceRecord: Sendable {
        public var instance: Instance
        public var tenantID: String
        public var imageID: String
        public var userData: Data?
        /// The public key its meta-data carries (the key pair's at RunInstances), one authorized_keys line.
        public var publicKey: String?
        public var pidStartTicks: UInt64?
        public var workDir: String
        public var seq: Int64
        /// Pinning per vCPU (a host CPU list, or nil), as stored.
        public var affinity: [String?]
    }

    static let instanceColumns = """
        i.seq, i.id, i.name, i.tenant_id, n.name AS tenant_name, i.reservation_id, i.type, i.vcpus, i.memory_mib,
        i.image_id, m.name AS image_name, i.user_data, i.state, i.state_reason, i.created_at, i.updated_at,
        i.launched_at, i.pid, i.pid_start_ticks, i.work_dir, i.vcpu_affinity, i.memory_dedup, i.cpu_policy, i.dedicated_cpus,
        i.key_pair, i.public_key, i.display
        """
    static let instanceFrom = "FROM instances i JOIN tenants n ON n.id = i.tenant_id JOIN images m ON m.id = i.image_id"

    static func record(_ r: Row) -> InstanceRecord {
        let state = InstanceState(rawValue: r["state"]) ?? .error
        var inst = Instance(
            id: r["id"], name: r["name"], tenant: r["tenant_name"], type: r["type"], vcpus: r["vcpus"],
            memoryMiB: r["memory_mib"], image: r["image_name"], state: state, stateReason: r["state_reason"],
            createdAt: r["created_at"], updatedAt: r["updated_at"], launchedAt: r["launched_at"],
            reservation: r["reservation_id"], pid: r["pid"])
        inst.memoryDedup = (r["memory_dedup"] as Int?) == 1
        inst.cpuPolicy = r["cpu_policy"]
        inst.keyPair = r["key_pair"]
        inst.display = r["display"]
        let dedicated: String? = r["dedicated_cpus"]
        inst.dedicatedCPUs = state.holdsCapacity ? dedicated : nil
        let ticks: Int64? = r["pid_start_ticks"]
        return InstanceRecord(
            instance: inst, tenantID: r["tenant_id"], imageID: r["image_id"], userData: r["user_data"],
            publicKey: r["public_key"], pidStartTicks: ticks.map { UInt64($0) }, workDir: r["work_dir"], seq: r["seq"],
            affinity: decodeAffinity(r["vcpu_affinity"]))
    }

    static func decodeAffinity(_ text: String?) -> [String?] {
        guard let text, let a = try? JSONDecoder().decode([String?].self, from: Data(text.utf8)) else { return [] }
        return a
    }

    /// Stores an instance's pinning (one entry per vCPU; all nil clears it).
    public func setAffinity(_ id: String, _ a: [String?]) throws {
        let text = a.allSatisfy({ $0 == nil }) ? nil : String(decoding: try JSONEncoder().encode(a), as: UTF8.self)
        try db.write { try $0.execute(sql: "UPDATE instances SET vcpu_affinity = ? WHERE id = ?", arguments: [text, id]) }
    }

    public func instance(_ id: String) throws -> InstanceRecord? {
        try db.read { db in
            guard
                var rec = try Row.fetchOne(
                    db, sql: "SELECT \(Self.instanceColumns) \(Self.instanceFrom) WHERE i.id = ?",
                    arguments: [id]
                ).map(Self.record)
            else { return nil }
            rec.instance.history = try Row.fetchAll(
                db, sql: "SELECT state, reason, at FROM instance_history WHERE instance_id = ? ORDER BY rowid",
                arguments: [id]
            )
            .map { StateChange(state: InstanceState(rawValue: $0[0]) ?? .error, reason: $0[1], at: $0[2]) }
            if let nics = try Self.nics(db, instances: [id])[id] { rec.instance.nics = nics.map(\.resource) }
            return rec
        }
    }

    public struct Filter: Sendable {
        public var tenantID: String?
        public var states: [InstanceState] = []
        public var names: [String] = []
        public var ids: [String] = []
        public var types: [String] = []
        public var includeDeleted = false
        public init(tenantID: String? = nil) { self.tenantID = tenantID }
    }

    /// A page of instances in creation order, after `afterSeq`; returns the page and whether more follow.
    public func instances(_ f: Filter, afterSeq: Int64 = 0, limit: Int = 1000) throws -> ([InstanceRecord], Bool) {
        var sql = "SELECT \(Self.instanceColumns) \(Self.instanceFrom) WHERE i.seq > ?"
        var args: [any DatabaseValueConvertible] = [afterSeq]
        if let t = f.tenantID { sql += " AND i.tenant_id = ?"; args.append(t) }
        func inList(_ column: String, _ values: [String]) {
            guard !values.isEmpty else { return }
            sql += " AND \(column) IN (\(values.map { _ in "?" }.joined(separator: ",")))"
            args.append(contentsOf: values)
        }
        inList("i.state", f.states.map(\.rawValue))
        inList("i.name", f.names)
        inList("i.id", f.ids)
        inList("i.type", f.types)
        if !f.includeDeleted && !f.states.contains(.deleted) { sql += " AND i.state != 'deleted'" }
        sql += " ORDER BY i.seq LIMIT ?"
        args.append(limit + 1)
        return try db.read { db in
            let rows = try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)!)
            var recs = rows.prefix(limit).map(Self.record)
            let nics = try Self.nics(db, instances: recs.map(\.instance.id))
            for i in recs.indices { recs[i].instance.nics = nics[recs[i].instance.id]?.map(\.resource) }
            return (recs, rows.count > limit)
        }
    }

    /// Instances holding host capacity (for placement), read inside the caller's transaction.
    public static func capacityHolders(_ db: Database) throws -> [Placement.Holder] {
        let states = InstanceState.allCases.filter(\.holdsCapacity).map { "'\($0.rawValue)'" }.joined(separator: ",")
        return try Row.fetchAll(db, sql: "SELECT id, type, vcpus, memory_mib, tenant_id, cpu_policy, dedicated_cpus FROM instances WHERE state IN (\(states))")
            .map {
                Placement.Holder(
                    id: $0[0], type: $0[1], vcpus: $0[2], memoryMiB: $0[3], tenantID: $0[4],
                    dedicatedCPUs: ($0[5] as String) == "dedicated" ? cpus($0[6]) : [])
            }
    }

    static func cpuText(_ cpus: [Int]) -> String { cpus.map(String.init).joined(separator: ",") }
    static func cpus(_ text: String?) -> [Int] { (text ?? "").split(separator: ",").compactMap { Int($0) } }

    /// Records the host CPUs given to a dedicated instance (inside a transaction, at Start).
    public static func setDedicatedCPUs(_ db: Database, _ id: String, _ cpus: [Int]) throws {
        try db.execute(sql: "UPDATE instances SET dedicated_cpus = ? WHERE id = ?", arguments: [cpuText(cpus), id])
    }

    public func read<T>(_ body: (Database) throws -> T) throws -> T { try db.read(body) }

    public struct NewInstance: Sendable {
        public var id: String
        public var name: String
        public var type: InstanceType
        public var imageID: String
        public var userData: Data?
        /// Its key pair's name and public key line.
        public var keyPair: (name: String, publicKey: String)? = nil
        public var workDir: String
        public var memoryDedup: Bool = false
        public var dedicated = false
        /// Its screen ("1024x768"), when it has one.
        public var display: String? = nil
        /// Network ids of its NICs, eth0 first.
        public var networks: [String] = []
        /// Security group ids every NIC gets.
        public var securityGroups: [String] = []
    }

    /// Outcome of a RunInstances write.
    public enum Reserved: Sendable {
        case created(reservation: String, ids: [String])
        /// The client token was used before: the first call's reservation, and whether its request matches.
        case replay(reservation: String, ids: [String], sameRequest: Bool)
    }

    /// Records a reservation and its instances in `pending`, in one transaction. `check` runs inside the
    /// transaction, after the idempotency lookup, so that placement sees every committed reservation.
    /// `check` returns the host CPUs dedicated to each new instance (empty for shared ones).
    public func reserve(
        tenantID: String, clientToken: String?, request: String, instances new: [NewInstance],
        check: (Database) throws -> [[Int]]
    ) throws -> Reserved {
        try db.write { db in
            if let token = clientToken,
                let row = try Row.fetchOne(
                    db, sql: "SELECT id, request FROM reservations WHERE tenant_id = ? AND client_token = ?",
                    arguments: [tenantID, token])
            {
                let rid: String = row[0]
                let ids = try String.fetchAll(db, sql: "SELECT id FROM instances WHERE reservation_id = ? ORDER BY seq", arguments: [rid])
                return .replay(reservation: rid, ids: ids, sameRequest: (row[1] as String) == request)
            }
            let cpus = try check(db)
            let rid = Self.newID("r")
            let now = Self.now()
            try db.execute(
                sql: "INSERT INTO reservations (id, tenant_id, client_token, request, created_at) VALUES (?, ?, ?, ?, ?)",
                arguments: [rid, tenantID, clientToken, request, now])
            for (i, n) in new.enumerated() {
                try db.execute(
                    sql: """
                        INSERT INTO instances (id, name, tenant_id, reservation_id, type, vcpus, memory_mib, image_id, user_data,
                                               state, state_reason, created_at, updated_at, work_dir, memory_dedup, cpu_policy, dedicated_cpus,
                                               key_pair, public_key, display)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        n.id, n.name, tenantID, rid, n.type.name, n.type.vcpus, n.type.memoryMiB, n.imageID,
                        n.userData, "RunInstances", now, now, n.workDir, n.memoryDedup ? 1 : 0,
                        n.dedicated ? "dedicated" : "shared", i < cpus.count ? Self.cpuText(cpus[i]) : nil,
                        n.keyPair?.name, n.keyPair?.publicKey, n.display,
                    ])
                try db.execute(
                    sql: "INSERT INTO instance_history (instance_id, state, reason, at) VALUES (?, 'pending', 'RunInstances', ?)",
                    arguments: [n.id, now])
                for (idx, network) in n.networks.enumerated() {
                    try Self.allocateNIC(db, instance: n.id, index: idx, network: network, groups: n.securityGroups)
                }
            }
            return .created(reservation: rid, ids: new.map(\.id))
        }
    }

    /// Moves an instance to `state` with `reason` when its current state is one of `from` (nil: any).
    /// Returns false (and changes nothing) otherwise. `pid` is set when given; `.some(nil)` clears it.
    @discardableResult
    public func transition(
        _ id: String, to state: InstanceState, reason: String, from: [InstanceState]? = nil,
        pid: (Int, UInt64)?? = nil, check: ((Database) throws -> Void)? = nil
    ) throws -> Bool {
        try db.write { db in
            guard let cur = try String.fetchOne(db, sql: "SELECT state FROM instances WHERE id = ?", arguments: [id]),
                let curState = InstanceState(rawValue: cur)
            else { return false }
            if let from, !from.contains(curState) { return false }
            try check?(db)
            let now = Self.now()
            var sql = "UPDATE instances SET state = ?, state_reason = ?, updated_at = ?"
            var args: [any DatabaseValueConvertible] = [state.rawValue, reason, now]
            if state == .running { sql += ", launched_at = ?"; args.append(now) }
            if let pid {
                sql += ", pid = ?, pid_start_ticks = ?"
                if let (p, t) = pid { args.append(p); args.append(Int64(t)) } else { args.append(Optional<Int>.none); args.append(Optional<Int64>.none) }
            }
            sql += " WHERE id = ?"
            args.append(id)
            try db.execute(sql: sql, arguments: StatementArguments(args)!)
            try db.execute(
                sql: "INSERT INTO instance_history (instance_id, state, reason, at) VALUES (?, ?, ?, ?)",
                arguments: [id, state.rawValue, reason, now])
            return true
        }
    }

    /// Records the VMM just spawned for an instance, whatever its state: a kumod that dies from here on
    /// finds it at restart (recover) instead of launching a second one.
    public func recordVMM(_ id: String, pid: Int, startTicks: UInt64) throws {
        try db.write { db in
            try db.execute(sql: "UPDATE instances SET pid = ?, pid_start_ticks = ? WHERE id = ?", arguments: [pid, Int64(startTicks), id])
        }
    }

    /// Runs `body` in a write transaction (placement checks that must see a consistent picture).
    public func write<T>(_ body: (Database) throws -> T) throws -> T { try db.write(body) }
}

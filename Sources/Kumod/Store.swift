// kumod's state: SQLite through GRDB, in WAL mode (a DatabasePool: readers never wait for the writer),
// with numbered migrations. Every write that changes an instance's state also appends to its history.
import Foundation
import GRDB
import Crypto
import KumoAPI

public final class Store: Sendable {
    let db: DatabasePool

    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    public init(path: String) throws {
        var config = Configuration()
        config.foreignKeysEnabled = true
        config.busyMode = .timeout(5)
        db = try DatabasePool(path: path, configuration: config)
        try Self.migrator.migrate(db)
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1: tenants, tokens, types, images, instances") { db in
            try db.execute(
                sql: """
                    CREATE TABLE tenants (
                        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
                    CREATE TABLE tokens (
                        id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE,
                        tenant_id TEXT NOT NULL REFERENCES tenants(id), admin INTEGER NOT NULL,
                        description TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL);
                    CREATE TABLE instance_types (
                        name TEXT PRIMARY KEY, vcpus INTEGER NOT NULL CHECK (vcpus > 0),
                        memory_mib INTEGER NOT NULL CHECK (memory_mib > 0), builtin INTEGER NOT NULL DEFAULT 0);
                    CREATE TABLE images (
                        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, kernel TEXT NOT NULL, initrd TEXT,
                        root_disk TEXT, cmdline TEXT NOT NULL, kernel_format TEXT NOT NULL, created_at TEXT NOT NULL);
                    CREATE TABLE reservations (
                        id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id), client_token TEXT,
                        request TEXT NOT NULL, created_at TEXT NOT NULL);
                    CREATE UNIQUE INDEX reservations_token ON reservations(tenant_id, client_token)
                        WHERE client_token IS NOT NULL;
                    CREATE TABLE instances (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
                        tenant_id TEXT NOT NULL REFERENCES tenants(id),
                        reservation_id TEXT NOT NULL REFERENCES reservations(id),
                        type TEXT NOT NULL, vcpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL,
                        image_id TEXT NOT NULL REFERENCES images(id), user_data BLOB,
                        state TEXT NOT NULL, state_reason TEXT NOT NULL,
                        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, launched_at TEXT,
                        pid INTEGER, pid_start_ticks INTEGER, work_dir TEXT NOT NULL);
                    CREATE INDEX instances_tenant_state ON instances(tenant_id, state);
                    CREATE TABLE instance_history (
                        instance_id TEXT NOT NULL REFERENCES instances(id), state TEXT NOT NULL,
                        reason TEXT NOT NULL, at TEXT NOT NULL);
                    CREATE INDEX instance_history_id ON instance_history(instance_id);
                    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                    """)
            for t in InstanceType.builtins {
                try db.execute(
                    sql: "INSERT INTO instance_types (name, vcpus, memory_mib, builtin) VALUES (?, ?, ?, 1)",
                    arguments: [t.name, t.vcpus, t.memoryMiB])
            }
        }
        m.registerMigration("v2: vCPU pinning") { db in
            // A JSON array with a host CPU list ("0-1") or null per vCPU; NULL: no pinning.
            try db.execute(sql: "ALTER TABLE instances ADD COLUMN vcpu_affinity TEXT")
        }
        m.registerMigration("v3: CPU caps and shares per instance type") { db in
            try db.execute(
                sql: """
                    ALTER TABLE instance_types ADD COLUMN cpu_cap_percent INTEGER CHECK (cpu_cap_percent BETWEEN 1 AND 100);
                    ALTER TABLE instance_types ADD COLUMN cpu_shares INTEGER CHECK (cpu_shares BETWEEN 2 AND 262144);
                    """)
        }
        m.registerMigration("v4: memory dedup per instance") { db in
            try db.execute(sql: "ALTER TABLE instances ADD COLUMN memory_dedup INTEGER NOT NULL DEFAULT 0")
        }
        m.registerMigration("v5: CPU policy (shared or dedicated)") { db in
            try db.execute(
                sql: """
                    ALTER TABLE instances ADD COLUMN cpu_policy TEXT NOT NULL DEFAULT 'shared' CHECK (cpu_policy IN ('shared', 'dedicated'));
                    ALTER TABLE instances ADD COLUMN dedicated_cpus TEXT;
                    """)
        }
        m.registerMigration("v6: memory shares per instance type") { db in
            try db.execute(sql: "ALTER TABLE instance_types ADD COLUMN memory_shares INTEGER CHECK (memory_shares BETWEEN 2 AND 262144)")
        }
        return m
    }

    /// The journal mode in force (WAL for a pool).
    public func journalMode() throws -> String {
        try db.read { try String.fetchOne($0, sql: "PRAGMA journal_mode") ?? "" }
    }

    public func appliedMigrations() throws -> [String] {
        try db.read { try Self.migrator.appliedMigrations($0) }
    }

    // MARK: time and identifiers

    /// RFC 3339 UTC with milliseconds: sortable as text.
    public static func now() -> String { timestamp(Date()) }

    public static func timestamp(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt))
    }

    /// `prefix` + 17 hex digits from the system's CSPRNG (EC2-style identifiers).
    public static func newID(_ prefix: String) -> String {
        var g = SystemRandomNumberGenerator()
        let hex = (0..<17).map { _ in String(UInt8.random(in: 0..<16, using: &g), radix: 16) }.joined()
        return prefix + "-" + hex
    }

    // MARK: tenants and tokens

    public struct Principal: Sendable, Equatable {
        public let tenantID: String
        public let tenantName: String
        public let admin: Bool
    }

    static func hash(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// Creates a tenant (or returns the one with that name).
    @discardableResult
    public func ensureTenant(_ name: String) throws -> String {
        try db.write { db in
            if let id = try String.fetchOne(db, sql: "SELECT id FROM tenants WHERE name = ?", arguments: [name]) { return id }
            let id = Self.newID("t")
            try db.execute(sql: "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)", arguments: [id, name, Self.now()])
            return id
        }
    }

    /// A new API token for `tenant`: returned once in the clear, kept only as its SHA-256.
    public func issueToken(tenant: String, admin: Bool, description: String = "") throws -> String {
        var g = SystemRandomNumberGenerator()
        let secret = "kumo_" + (0..<32).map { _ in String(UInt8.random(in: 0..<16, using: &g), radix: 16) }.joined()
        let tenantID = try ensureTenant(tenant)
        try db.write { db in
            try db.execute(
                sql: "INSERT INTO tokens (id, hash, tenant_id, admin, description, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [Self.newID("tok"), Self.hash(secret), tenantID, admin, description, Self.now()])
        }
        return secret
    }

    public func principal(token: String) throws -> Principal? {
        try db.read { db in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT t.tenant_id, n.name, t.admin FROM tokens t JOIN tenants n ON n.id = t.tenant_id WHERE t.hash = ?
                        """, arguments: [Self.hash(token)])
            else { return nil }
            return Principal(tenantID: row[0], tenantName: row[1], admin: row[2])
        }
    }

    public func tenantName(_ id: String) throws -> String? {
        try db.read { try String.fetchOne($0, sql: "SELECT name FROM tenants WHERE id = ?", arguments: [id]) }
    }

    public func tokenCount() throws -> Int { try db.read { try Int.fetchOne($0, sql: "SELECT count(*) FROM tokens") ?? 0 } }

    // MARK: settings

    public func setting(_ key: String) throws -> String? {
        try db.read { try String.fetchOne($0, sql: "SELECT value FROM settings WHERE key = ?", arguments: [key]) }
    }

    public func setSetting(_ key: String, _ value: String) throws {
        try db.write {
            try $0.execute(
                sql: "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                arguments: [key, value])
        }
    }

    // MARK: instance types

    public func types() throws -> [InstanceType] {
        try db.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT name, vcpus, memory_mib, builtin, cpu_cap_percent, cpu_shares, memory_shares FROM instance_types ORDER BY vcpus, memory_mib, name"
            )
            .map { InstanceType(name: $0[0], vcpus: $0[1], memoryMiB: $0[2], builtin: $0[3], cpuCapPercent: $0[4], cpuShares: $0[5], memoryShares: $0[6]) }
        }
    }

    public func type(_ name: String) throws -> InstanceType? { try types().first { $0.name == name } }

    public func addType(_ t: InstanceType) throws {
        try db.write { db in
            try db.execute(
                sql: "INSERT INTO instance_types (name, vcpus, memory_mib, builtin, cpu_cap_percent, cpu_shares, memory_shares) VALUES (?, ?, ?, 0, ?, ?, ?)",
                arguments: [t.name, t.vcpus, t.memoryMiB, t.cpuCapPercent, t.cpuShares, t.memoryShares])
        }
    }

    /// Deletes an admin-defined type; returns false when it does not exist. Built-in types and types in
    /// use by instances that are not deleted are refused by the caller.
    public func deleteType(_ name: String) throws -> Bool {
        try db.write { db in
            try db.execute(sql: "DELETE FROM instance_types WHERE name = ? AND builtin = 0", arguments: [name])
            return db.changesCount > 0
        }
    }

    // MARK: images

    static func image(_ r: Row) -> Image {
        Image(
            id: r["id"], name: r["name"], kernel: r["kernel"], initrd: r["initrd"], rootDisk: r["root_disk"],
            cmdline: r["cmdline"], kernelFormat: r["kernel_format"], createdAt: r["created_at"])
    }

    public func images() throws -> [Image] {
        try db.read { try Row.fetchAll($0, sql: "SELECT * FROM images ORDER BY created_at, name").map(Self.image) }
    }

    /// By id or by name.
    public func image(_ ref: String) throws -> Image? {
        try db.read { try Row.fetchOne($0, sql: "SELECT * FROM images WHERE id = ? OR name = ?", arguments: [ref, ref]).map(Self.image) }
    }

    public func addImage(_ i: Image) throws {
        try db.write { db in
            try db.execute(
                sql: """
                    INSERT INTO images (id, name, kernel, initrd, root_disk, cmdline, kernel_format, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [i.id, i.name, i.kernel, i.initrd, i.rootDisk, i.cmdline, i.kernelFormat, i.createdAt])
        }
    }

    // MARK: instances

    /// What kumod keeps about an instance beyond its API view.
    public struct InstanceRecord: Sendable {
        public var instance: Instance
        public var tenantID: String
        public var imageID: String
        public var userData: Data?
        public var pidStartTicks: UInt64?
        public var workDir: String
        public var seq: Int64
        /// Pinning per vCPU (a host CPU list, or nil), as stored.
        public var affinity: [String?]
    }

    static let instanceColumns = """
        i.seq, i.id, i.name, i.tenant_id, n.name AS tenant_name, i.reservation_id, i.type, i.vcpus, i.memory_mib,
        i.image_id, m.name AS image_name, i.user_data, i.state, i.state_reason, i.created_at, i.updated_at,
        i.launched_at, i.pid, i.pid_start_ticks, i.work_dir, i.vcpu_affinity, i.memory_dedup, i.cpu_policy, i.dedicated_cpus
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
        let dedicated: String? = r["dedicated_cpus"]
        inst.dedicatedCPUs = state.holdsCapacity ? dedicated : nil
        let ticks: Int64? = r["pid_start_ticks"]
        return InstanceRecord(
            instance: inst, tenantID: r["tenant_id"], imageID: r["image_id"], userData: r["user_data"],
            pidStartTicks: ticks.map { UInt64($0) }, workDir: r["work_dir"], seq: r["seq"],
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
        let rows = try db.read { try Row.fetchAll($0, sql: sql, arguments: StatementArguments(args)!) }
        let recs = rows.prefix(limit).map(Self.record)
        return (Array(recs), rows.count > limit)
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
        public var workDir: String
        public var memoryDedup: Bool = false
        public var dedicated = false
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
                                               state, state_reason, created_at, updated_at, work_dir, memory_dedup, cpu_policy, dedicated_cpus)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        n.id, n.name, tenantID, rid, n.type.name, n.type.vcpus, n.type.memoryMiB, n.imageID,
                        n.userData, "RunInstances", now, now, n.workDir, n.memoryDedup ? 1 : 0,
                        n.dedicated ? "dedicated" : "shared", i < cpus.count ? Self.cpuText(cpus[i]) : nil,
                    ])
                try db.execute(
                    sql: "INSERT INTO instance_history (instance_id, state, reason, at) VALUES (?, 'pending', 'RunInstances', ?)",
                    arguments: [n.id, now])
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

    /// Runs `body` in a write transaction (placement checks that must see a consistent picture).
    public func write<T>(_ body: (Database) throws -> T) throws -> T { try db.write(body) }
}

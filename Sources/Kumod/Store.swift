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
}

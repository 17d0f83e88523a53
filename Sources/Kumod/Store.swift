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

    /// A new API token for `tenant` (by name, created if needed): returned once in the clear, kept only as its SHA-256.
    public func issueToken(tenant: String, admin: Bool, description: String = "") throws -> String {
        try issueToken(tenantID: try ensureTenant(tenant), admin: admin, description: description).secret!
    }

    public func issueToken(tenantID: String, admin: Bool, description: String) throws -> Token {
        var g = SystemRandomNumberGenerator()
        let secret = "kumo_" + (0..<32).map { _ in String(UInt8.random(in: 0..<16, using: &g), radix: 16) }.joined()
        let id = Self.newID("tok"), now = Self.now()
        try db.write { db in
            try db.execute(
                sql: "INSERT INTO tokens (id, hash, tenant_id, admin, description, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [id, Self.hash(secret), tenantID, admin, description, now])
        }
        return Token(id: id, tenant: try tenantName(tenantID) ?? tenantID, admin: admin, description: description, createdAt: now, secret: secret)
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

    public func tenants() throws -> [Tenant] {
        try db.read { db in
            try Row.fetchAll(db, sql: "SELECT id, name, created_at FROM tenants WHERE name NOT LIKE 'deleted:%' ORDER BY created_at, name").map {
                Tenant(id: $0[0], name: $0[1], createdAt: $0[2])
            }
        }
    }

    /// By id or by name.
    public func tenant(_ ref: String) throws -> Tenant? { try tenants().first { $0.id == ref || $0.name == ref } }

    /// A new tenant; nil if the name is taken.
    public func createTenant(_ name: String) throws -> Tenant? {
        try db.write { db in
            if try String.fetchOne(db, sql: "SELECT id FROM tenants WHERE name = ?", arguments: [name]) != nil { return nil }
            let t = Tenant(id: Self.newID("t"), name: name, createdAt: Self.now())
            try db.execute(sql: "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)", arguments: [t.id, t.name, t.createdAt])
            return t
        }
    }

    public enum TenantDeletion: Sendable { case deleted, inUse(Int), hasNetworks(Int), hasLoadBalancers(Int), missing }

    /// Deletes a tenant, its tokens, security groups and key pairs, in one transaction, unless it has instances that are not deleted.
    /// Its deleted instances' rows (and reservations) stay for their history, under the tenant id.
    public func deleteTenant(_ id: String) throws -> TenantDeletion {
        try db.write { db in
            guard try String.fetchOne(db, sql: "SELECT id FROM tenants WHERE id = ?", arguments: [id]) != nil else { return .missing }
            let live = try Int.fetchOne(db, sql: "SELECT count(*) FROM instances WHERE tenant_id = ? AND state != 'deleted'", arguments: [id]) ?? 0
            if live > 0 { return .inUse(live) }
            let networks = try Int.fetchOne(db, sql: "SELECT count(*) FROM networks WHERE tenant_id = ?", arguments: [id]) ?? 0
            if networks > 0 { return .hasNetworks(networks) }
            let balancers = try Int.fetchOne(db, sql: "SELECT count(*) FROM load_balancers WHERE tenant_id = ?", arguments: [id]) ?? 0
            if balancers > 0 { return .hasLoadBalancers(balancers) }
            try db.execute(sql: "DELETE FROM tokens WHERE tenant_id = ?", arguments: [id])
            // Its security groups (on no NIC now: its instances are gone) and their rules.
            try db.execute(
                sql: "DELETE FROM security_group_rules WHERE group_id IN (SELECT id FROM security_groups WHERE tenant_id = ?)", arguments: [id])
            try db.execute(sql: "DELETE FROM security_groups WHERE tenant_id = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM key_pairs WHERE tenant_id = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM alarms WHERE tenant_id = ?", arguments: [id])
            let kept = try Int.fetchOne(db, sql: "SELECT count(*) FROM reservations WHERE tenant_id = ?", arguments: [id]) ?? 0
            // Rows that name it (its deleted instances' reservations) keep it, renamed out of the way.
            if kept == 0 {
                try db.execute(sql: "DELETE FROM tenants WHERE id = ?", arguments: [id])
            } else {
                try db.execute(sql: "UPDATE tenants SET name = ? WHERE id = ?", arguments: ["deleted:" + id, id])
            }
            return .deleted
        }
    }

    public func tokens(tenant: String) throws -> [Token] {
        try db.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT t.id, n.name, t.admin, t.description, t.created_at FROM tokens t JOIN tenants n ON n.id = t.tenant_id
                    WHERE t.tenant_id = ? ORDER BY t.created_at
                    """,
                arguments: [tenant]
            ).map { Token(id: $0[0], tenant: $0[1], admin: $0[2], description: $0[3], createdAt: $0[4]) }
        }
    }

    public enum Revocation: Sendable { case revoked, lastAdmin, missing }

    /// Revokes a token of `tenant`; the last admin token is kept (nobody could manage kumod after it).
    public func revokeToken(_ id: String, tenant: String) throws -> Revocation {
        try db.write { db in
            guard let admin = try Bool.fetchOne(db, sql: "SELECT admin FROM tokens WHERE id = ? AND tenant_id = ?", arguments: [id, tenant]) else {
                return .missing
            }
            if admin, (try Int.fetchOne(db, sql: "SELECT count(*) FROM tokens WHERE admin = 1") ?? 0) <= 1 { return .lastAdmin }
            try db.execute(sql: "DELETE FROM tokens WHERE id = ?", arguments: [id])
            return .revoked
        }
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
                sql: """
                    SELECT name, vcpus, memory_mib, builtin, cpu_cap_percent, cpu_shares, memory_shares, bandwidth_mbps, packets_per_second
                    FROM instance_types ORDER BY vcpus, memory_mib, name
                    """
            )
            .map {
                InstanceType(
                    name: $0[0], vcpus: $0[1], memoryMiB: $0[2], builtin: $0[3], cpuCapPercent: $0[4], cpuShares: $0[5], memoryShares: $0[6],
                    bandwidthMbps: $0[7], packetsPerSecond: $0[8])
            }
        }
    }

    public func type(_ name: String) throws -> InstanceType? { try types().first { $0.name == name } }

    public func addType(_ t: InstanceType) throws {
        try db.write { db in
            try db.execute(
                sql: """
                    INSERT INTO instance_types (name, vcpus, memory_mib, builtin, cpu_cap_percent, cpu_shares, memory_shares, bandwidth_mbps,
                        packets_per_second) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?)
                    """,
                arguments: [t.name, t.vcpus, t.memoryMiB, t.cpuCapPercent, t.cpuShares, t.memoryShares, t.bandwidthMbps, t.packetsPerSecond])
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
            cmdline: r["cmdline"], kernelFormat: r["kernel_format"], createdAt: r["created_at"], tenant: r["tenant_name"],
            diskFormat: (r["root_disk"] as String?) == nil ? nil : r["disk_format"], source: r["source"], sizeBytes: r["size_bytes"],
            checksum: r["checksum"])
    }

    static let imageSelect = "SELECT m.*, t.name AS tenant_name FROM images m LEFT JOIN tenants t ON t.id = m.tenant_id"
    static let liveImage = "m.name NOT LIKE 'deleted:%'"

    /// The public images and `tenant`'s own, or every image (nil).
    public func images(visibleTo tenant: String?) throws -> [Image] {
        try db.read { db in
            let rows =
                try tenant.map {
                    try Row.fetchAll(
                        db, sql: Self.imageSelect + " WHERE \(Self.liveImage) AND (m.tenant_id IS NULL OR m.tenant_id = ?) ORDER BY m.created_at, m.name",
                        arguments: [$0])
                } ?? Row.fetchAll(db, sql: Self.imageSelect + " WHERE \(Self.liveImage) ORDER BY m.created_at, m.name")
            return rows.map(Self.image)
        }
    }

    public func images() throws -> [Image] { try images(visibleTo: nil) }

    /// By id, or by name (the tenant's own first, then a public one), among what `tenant` sees; nil: any image by id or
    /// a public one by name.
    public func image(_ ref: String, visibleTo tenant: String?) throws -> Image? {
        try db.read { db in
            if let tenant {
                return try Row.fetchOne(
                    db,
                    sql: Self.imageSelect + """
                         WHERE \(Self.liveImage) AND (m.tenant_id IS NULL OR m.tenant_id = ?) AND (m.id = ? OR m.name = ?)
                        ORDER BY m.id = ? DESC, m.tenant_id IS NULL LIMIT 1
                        """, arguments: [tenant, ref, ref, ref]
                ).map(Self.image)
            }
            return try Row.fetchOne(
                db, sql: Self.imageSelect + " WHERE \(Self.liveImage) AND (m.id = ? OR (m.name = ? AND m.tenant_id IS NULL)) ORDER BY m.id = ? DESC LIMIT 1",
                arguments: [ref, ref, ref]
            ).map(Self.image)
        }
    }

    /// By id or public name (what admin tools and tests used before images had tenants).
    public func image(_ ref: String) throws -> Image? { try image(ref, visibleTo: nil) }

    /// The image's tenant id (nil: public) and whether kumod made its root disk file (and removes it).
    public func imageOwnership(_ id: String) throws -> (tenantID: String?, ownsFile: Bool)? {
        try db.read { db in
            try Row.fetchOne(db, sql: "SELECT tenant_id, owns_file FROM images WHERE id = ?", arguments: [id]).map {
                ($0["tenant_id"], ($0["owns_file"] as Int) == 1)
            }
        }
    }

    public enum ImageDeletion: Sendable { case deleted, inUse(Int), missing }

    /// Deletes an image's record, unless instances that are not deleted use it.
    public func deleteImage(id: String) throws -> ImageDeletion {
        try db.write { db in
            guard try String.fetchOne(db, sql: "SELECT id FROM images m WHERE id = ? AND \(Self.liveImage)", arguments: [id]) != nil else { return .missing }
            let users = try Int.fetchOne(db, sql: "SELECT count(*) FROM instances WHERE image_id = ?", arguments: [id]) ?? 0
            let live = try Int.fetchOne(db, sql: "SELECT count(*) FROM instances WHERE image_id = ? AND state != 'deleted'", arguments: [id]) ?? 0
            if live > 0 { return .inUse(live) }
            // Deleted instances keep their row (their history) and its reference: the image row stays, renamed out of the way.
            if users > 0 {
                try db.execute(sql: "UPDATE images SET name = ? WHERE id = ?", arguments: ["deleted:" + id, id])
            } else {
                try db.execute(sql: "DELETE FROM images WHERE id = ?", arguments: [id])
            }
            return .deleted
        }
    }

    /// False when the name is taken among the images it would sit with (the public ones, or its tenant's).
    @discardableResult
    public func addImage(_ i: Image, tenantID: String? = nil, ownsFile: Bool = false) throws -> Bool {
        try db.write { db in
            let taken = try Int.fetchOne(
                db, sql: "SELECT 1 FROM images WHERE ifnull(tenant_id, '') = ? AND name = ?", arguments: [tenantID ?? "", i.name])
            if taken != nil { return false }
            try db.execute(
                sql: """
                    INSERT INTO images (id, name, tenant_id, kernel, initrd, root_disk, disk_format, cmdline, kernel_format, source,
                                        size_bytes, checksum, owns_file, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    i.id, i.name, tenantID, i.kernel, i.initrd, i.rootDisk, i.diskFormat ?? "raw", i.cmdline, i.kernelFormat, i.source,
                    i.sizeBytes, i.checksum, ownsFile ? 1 : 0, i.createdAt,
                ])
            return true
        }
    }
}

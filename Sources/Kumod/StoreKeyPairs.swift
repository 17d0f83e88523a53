// Key pairs in the store: a tenant's public keys, one name each.
import Foundation
import GRDB
import KumoAPI

extension Store {
    static func keyPair(_ r: Row) -> KeyPair {
        KeyPair(
            id: r["id"], name: r["name"], tenant: r["tenant_name"], fingerprint: r["fingerprint"], keyType: r["key_type"],
            publicKey: r["public_key"], createdAt: r["created_at"])
    }

    static let keyPairSelect = "SELECT k.*, t.name AS tenant_name FROM key_pairs k JOIN tenants t ON t.id = k.tenant_id"

    /// A tenant's key pairs, or every tenant's (nil).
    public func keyPairs(tenant: String?) throws -> [KeyPair] {
        try db.read { db in
            let rows =
                try tenant.map { try Row.fetchAll(db, sql: Self.keyPairSelect + " WHERE k.tenant_id = ? ORDER BY k.name", arguments: [$0]) }
                ?? Row.fetchAll(db, sql: Self.keyPairSelect + " ORDER BY t.name, k.name")
            return rows.map(Self.keyPair)
        }
    }

    /// By id or name within a tenant, or by id in any tenant (nil).
    public func keyPair(_ ref: String, tenant: String?) throws -> KeyPair? {
        try db.read { db in
            if let tenant {
                return try Row.fetchOne(
                    db, sql: Self.keyPairSelect + " WHERE k.tenant_id = ? AND (k.id = ? OR k.name = ?)", arguments: [tenant, ref, ref]
                ).map(Self.keyPair)
            }
            return try Row.fetchOne(db, sql: Self.keyPairSelect + " WHERE k.id = ?", arguments: [ref]).map(Self.keyPair)
        }
    }

    /// False when the tenant has a key pair of that name.
    public func addKeyPair(_ k: KeyPair, tenantID: String) throws -> Bool {
        try db.write { db in
            if try Int.fetchOne(db, sql: "SELECT 1 FROM key_pairs WHERE tenant_id = ? AND name = ?", arguments: [tenantID, k.name]) != nil {
                return false
            }
            try db.execute(
                sql: """
                    INSERT INTO key_pairs (id, tenant_id, name, key_type, public_key, fingerprint, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [k.id, tenantID, k.name, k.keyType, k.publicKey, k.fingerprint, k.createdAt])
            return true
        }
    }

    public func deleteKeyPair(id: String) throws -> Bool {
        try db.write { db in
            try db.execute(sql: "DELETE FROM key_pairs WHERE id = ?", arguments: [id])
            return db.changesCount > 0
        }
    }
}

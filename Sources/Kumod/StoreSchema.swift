// kumod's schema: numbered migrations, each applied once, in order (`Store.appliedMigrations` lists them).
import Foundation
import GRDB
import KumoAPI

extension Store {
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

}

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
        m.registerMigration("v7: networks and NICs") { db in
            // Addresses are unique per network (IPAM: never handed out twice); bridges, taps and MACs host-wide.
            try db.execute(
                sql: """
                    CREATE TABLE networks (
                        id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id), name TEXT NOT NULL,
                        cidr TEXT NOT NULL, gateway TEXT NOT NULL, bridge TEXT NOT NULL UNIQUE,
                        is_default INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, UNIQUE (tenant_id, name));
                    CREATE UNIQUE INDEX networks_one_default ON networks(tenant_id) WHERE is_default = 1;
                    CREATE TABLE nics (
                        id TEXT PRIMARY KEY, instance_id TEXT NOT NULL REFERENCES instances(id), idx INTEGER NOT NULL,
                        network_id TEXT NOT NULL REFERENCES networks(id), mac TEXT NOT NULL UNIQUE, address TEXT NOT NULL,
                        tap TEXT NOT NULL UNIQUE, UNIQUE (instance_id, idx), UNIQUE (network_id, address));
                    CREATE INDEX nics_network ON nics(network_id);
                    """)
        }
        m.registerMigration("v8: NIC bandwidth per instance type") { db in
            try db.execute(
                sql: """
                    ALTER TABLE instance_types ADD COLUMN bandwidth_mbps INTEGER CHECK (bandwidth_mbps BETWEEN 1 AND 100000);
                    ALTER TABLE instance_types ADD COLUMN packets_per_second INTEGER CHECK (packets_per_second BETWEEN 1 AND 10000000);
                    """)
        }
        m.registerMigration("v9: security groups") { db in
            // A rule's other end is a range or a group (never both); a group another rule names, or one on
            // a NIC, cannot be deleted (the service says which), and a NIC's attachments go with it.
            try db.execute(
                sql: """
                    CREATE TABLE security_groups (
                        id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id), name TEXT NOT NULL,
                        description TEXT, is_default INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, UNIQUE (tenant_id, name));
                    CREATE UNIQUE INDEX security_groups_one_default ON security_groups(tenant_id) WHERE is_default = 1;
                    CREATE TABLE security_group_rules (
                        id TEXT PRIMARY KEY, group_id TEXT NOT NULL REFERENCES security_groups(id) ON DELETE CASCADE,
                        direction TEXT NOT NULL CHECK (direction IN ('ingress', 'egress')),
                        protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp', 'icmp', 'all')),
                        port_from INTEGER CHECK (port_from BETWEEN 1 AND 65535), port_to INTEGER CHECK (port_to BETWEEN 1 AND 65535),
                        cidr TEXT, remote_group_id TEXT REFERENCES security_groups(id), description TEXT, created_at TEXT NOT NULL,
                        CHECK ((cidr IS NULL) <> (remote_group_id IS NULL)), CHECK ((port_from IS NULL) = (port_to IS NULL)));
                    CREATE INDEX security_group_rules_group ON security_group_rules(group_id);
                    CREATE TABLE nic_security_groups (
                        nic_id TEXT NOT NULL REFERENCES nics(id) ON DELETE CASCADE,
                        group_id TEXT NOT NULL REFERENCES security_groups(id), position INTEGER NOT NULL,
                        PRIMARY KEY (nic_id, group_id));
                    CREATE INDEX nic_security_groups_group ON nic_security_groups(group_id);
                    """)
        }
        m.registerMigration("v10: port forwards") { db in
            // One forward per protocol and host port, host-wide (every host address included); it goes with its NIC.
            try db.execute(
                sql: """
                    CREATE TABLE port_forwards (
                        id TEXT PRIMARY KEY, nic_id TEXT NOT NULL REFERENCES nics(id) ON DELETE CASCADE,
                        protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')), host_address TEXT,
                        host_port INTEGER NOT NULL CHECK (host_port BETWEEN 1024 AND 65535), port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
                        created_at TEXT NOT NULL, UNIQUE (protocol, host_port));
                    CREATE INDEX port_forwards_nic ON port_forwards(nic_id);
                    """)
        }
        m.registerMigration("v11: key pairs") { db in
            // The public half only. An instance keeps the key it was made with (its seed is rebuilt at
            // every launch), so deleting the key pair changes no instance, as ECS.
            try db.execute(
                sql: """
                    CREATE TABLE key_pairs (
                        id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id), name TEXT NOT NULL,
                        key_type TEXT NOT NULL, public_key TEXT NOT NULL, fingerprint TEXT NOT NULL, created_at TEXT NOT NULL,
                        UNIQUE (tenant_id, name));
                    ALTER TABLE instances ADD COLUMN key_pair TEXT;
                    ALTER TABLE instances ADD COLUMN public_key TEXT;
                    """)
        }
        m.registerMigration("v12: private images (imported, from instances), root disk formats") { db in
            // Rebuilt (SQLite cannot drop a column's UNIQUE): a name is unique among the public images and
            // within each tenant's own, so a tenant never learns another tenant's image names by a conflict.
            try db.execute(
                sql: """
                    CREATE TABLE images_v12 (
                        id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant_id TEXT REFERENCES tenants(id),
                        kernel TEXT NOT NULL, initrd TEXT, root_disk TEXT,
                        disk_format TEXT NOT NULL DEFAULT 'raw' CHECK (disk_format IN ('raw', 'qcow2')),
                        cmdline TEXT NOT NULL, kernel_format TEXT NOT NULL, source TEXT NOT NULL DEFAULT 'registered',
                        size_bytes INTEGER, checksum TEXT, owns_file INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
                    INSERT INTO images_v12 (id, name, kernel, initrd, root_disk, cmdline, kernel_format, created_at)
                        SELECT id, name, kernel, initrd, root_disk, cmdline, kernel_format, created_at FROM images;
                    DROP TABLE images;
                    ALTER TABLE images_v12 RENAME TO images;
                    CREATE UNIQUE INDEX images_name ON images(ifnull(tenant_id, ''), name);
                    """)
        }
        m.registerMigration("v13: run-command invocations") { db in
            try db.execute(
                sql: """
                    CREATE TABLE invocations (
                        id TEXT PRIMARY KEY, instance_id TEXT NOT NULL REFERENCES instances(id),
                        kind TEXT NOT NULL CHECK (kind IN ('command', 'file')), command TEXT, path TEXT, bytes INTEGER,
                        timeout_seconds INTEGER NOT NULL,
                        state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'success', 'failed', 'timeout')),
                        exit_code INTEGER, signal INTEGER, stdout BLOB, stderr BLOB, stdout_truncated INTEGER, stderr_truncated INTEGER,
                        error TEXT, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT);
                    CREATE INDEX invocations_instance ON invocations(instance_id, created_at);
                    """)
        }
        m.registerMigration("v14: alarm rules and their history") { db in
            try db.execute(
                sql: """
                    CREATE TABLE alarms (
                        id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id), name TEXT NOT NULL,
                        instance_id TEXT REFERENCES instances(id), metric TEXT NOT NULL,
                        comparison TEXT NOT NULL CHECK (comparison IN ('above', 'below')), threshold REAL NOT NULL,
                        duration_seconds INTEGER NOT NULL,
                        state TEXT NOT NULL CHECK (state IN ('insufficient_data', 'ok', 'firing')), state_since TEXT NOT NULL,
                        last_value REAL, created_at TEXT NOT NULL, UNIQUE (tenant_id, name));
                    CREATE TABLE alarm_events (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT, alarm_id TEXT NOT NULL REFERENCES alarms(id) ON DELETE CASCADE,
                        state TEXT NOT NULL, value REAL, at TEXT NOT NULL, message TEXT NOT NULL);
                    CREATE INDEX alarm_events_alarm ON alarm_events(alarm_id, seq);
                    """)
        }
        m.registerMigration("v15: instance displays") { db in
            try db.execute(sql: "ALTER TABLE instances ADD COLUMN display TEXT")
        }
        m.registerMigration("v16: load balancers") { db in
            // A listener's address, protocol and port are taken once host-wide (the address is copied from
            // its balancer so the UNIQUE constraint can say so); a network's balancer address is unique in
            // it and never a NIC's (allocateNIC skips it). A backend goes with its NIC; health and events
            // go with their listener and balancer. Drains outlive what they drain (they end its flows).
            try db.execute(
                sql: """
                    CREATE TABLE load_balancers (
                        id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id), name TEXT NOT NULL,
                        address TEXT NOT NULL, network_id TEXT REFERENCES networks(id), created_at TEXT NOT NULL,
                        UNIQUE (tenant_id, name));
                    CREATE UNIQUE INDEX load_balancers_network_address ON load_balancers(network_id, address) WHERE network_id IS NOT NULL;
                    CREATE TABLE lb_groups (
                        id TEXT PRIMARY KEY, lb_id TEXT NOT NULL REFERENCES load_balancers(id) ON DELETE CASCADE, name TEXT NOT NULL,
                        created_at TEXT NOT NULL, UNIQUE (lb_id, name));
                    CREATE TABLE lb_backends (
                        id TEXT PRIMARY KEY, group_id TEXT NOT NULL REFERENCES lb_groups(id) ON DELETE CASCADE,
                        nic_id TEXT NOT NULL REFERENCES nics(id) ON DELETE CASCADE,
                        port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535), weight INTEGER NOT NULL CHECK (weight BETWEEN 1 AND 100),
                        created_at TEXT NOT NULL, UNIQUE (group_id, nic_id, port));
                    CREATE INDEX lb_backends_nic ON lb_backends(nic_id);
                    CREATE TABLE lb_listeners (
                        id TEXT PRIMARY KEY, lb_id TEXT NOT NULL REFERENCES load_balancers(id) ON DELETE CASCADE,
                        protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')), address TEXT NOT NULL,
                        port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
                        scheduler TEXT NOT NULL CHECK (scheduler IN ('rr', 'wrr', 'wlc', 'sh')),
                        persistence_seconds INTEGER CHECK (persistence_seconds BETWEEN 1 AND 3600),
                        drain_seconds INTEGER NOT NULL CHECK (drain_seconds BETWEEN 0 AND 3600),
                        group_id TEXT NOT NULL REFERENCES lb_groups(id), health_check TEXT NOT NULL, created_at TEXT NOT NULL,
                        UNIQUE (address, protocol, port));
                    CREATE TABLE lb_health (
                        listener_id TEXT NOT NULL REFERENCES lb_listeners(id) ON DELETE CASCADE,
                        backend_id TEXT NOT NULL REFERENCES lb_backends(id) ON DELETE CASCADE,
                        state TEXT NOT NULL CHECK (state IN ('healthy', 'unhealthy')), reason TEXT, since TEXT NOT NULL,
                        PRIMARY KEY (listener_id, backend_id));
                    CREATE TABLE lb_drains (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT, lb_id TEXT NOT NULL, listener_id TEXT NOT NULL, protocol TEXT NOT NULL,
                        address TEXT NOT NULL, port INTEGER NOT NULL, backend_address TEXT NOT NULL, backend_port INTEGER NOT NULL,
                        ends_at REAL NOT NULL);
                    CREATE TABLE lb_events (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT, lb_id TEXT NOT NULL REFERENCES load_balancers(id) ON DELETE CASCADE,
                        listener_id TEXT, backend_id TEXT, message TEXT NOT NULL, at TEXT NOT NULL);
                    CREATE INDEX lb_events_lb ON lb_events(lb_id, seq);
                    """)
        }
        return m
    }

}

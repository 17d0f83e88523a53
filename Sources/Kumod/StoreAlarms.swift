// Alarm rules and their history in the store.
import Foundation
import GRDB
import KumoAPI

extension Store {
    static let alarmSelect = "SELECT a.*, t.name AS tenant_name FROM alarms a JOIN tenants t ON t.id = a.tenant_id"

    static func alarm(_ r: Row) -> Alarm {
        Alarm(
            id: r["id"], name: r["name"], tenant: r["tenant_name"], instance: r["instance_id"], metric: r["metric"], comparison: r["comparison"],
            threshold: r["threshold"], durationSeconds: r["duration_seconds"], state: r["state"], stateSince: r["state_since"],
            lastValue: r["last_value"], createdAt: r["created_at"])
    }

    /// A tenant's alarms, or every tenant's (nil).
    public func alarms(tenant: String?) throws -> [Alarm] {
        try db.read { db in
            try
                (tenant.map { try Row.fetchAll(db, sql: Self.alarmSelect + " WHERE a.tenant_id = ? ORDER BY a.name", arguments: [$0]) }
                ?? Row.fetchAll(db, sql: Self.alarmSelect + " ORDER BY t.name, a.name")).map(Self.alarm)
        }
    }

    /// By id or name within a tenant, or by id in any tenant (nil); with its history.
    public func alarm(_ ref: String, tenant: String?) throws -> Alarm? {
        try db.read { db in
            let row =
                try tenant.map {
                    try Row.fetchOne(db, sql: Self.alarmSelect + " WHERE a.tenant_id = ? AND (a.id = ? OR a.name = ?)", arguments: [$0, ref, ref])
                } ?? Row.fetchOne(db, sql: Self.alarmSelect + " WHERE a.id = ?", arguments: [ref])
            guard var a = row.map(Self.alarm) else { return nil }
            a.history = try Row.fetchAll(
                db, sql: "SELECT state, value, at, message FROM alarm_events WHERE alarm_id = ? ORDER BY seq DESC", arguments: [a.id]
            ).map { AlarmEvent(state: $0["state"], value: $0["value"], at: $0["at"], message: $0["message"]) }
            return a
        }
    }

    /// False when the tenant has an alarm of that name.
    public func addAlarm(_ a: Alarm, tenantID: String) throws -> Bool {
        try db.write { db in
            if try Int.fetchOne(db, sql: "SELECT 1 FROM alarms WHERE tenant_id = ? AND name = ?", arguments: [tenantID, a.name]) != nil { return false }
            try db.execute(
                sql: """
                    INSERT INTO alarms (id, tenant_id, name, instance_id, metric, comparison, threshold, duration_seconds, state, state_since, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    a.id, tenantID, a.name, a.instance, a.metric, a.comparison, a.threshold, a.durationSeconds, a.state, a.stateSince, a.createdAt,
                ])
            return true
        }
    }

    public func deleteAlarm(id: String) throws -> Bool {
        try db.write { db in
            try db.execute(sql: "DELETE FROM alarms WHERE id = ?", arguments: [id])
            return db.changesCount > 0
        }
    }

    /// An instance's alarms go with it.
    public func deleteAlarms(instance: String) throws {
        try db.write { db in try db.execute(sql: "DELETE FROM alarms WHERE instance_id = ?", arguments: [instance]) }
    }

    /// Records an evaluation: the newest value, and when the state changed, the transition (the last 100 kept).
    public func alarmEvaluated(_ id: String, value: Double?, transition: AlarmEvent?) throws {
        try db.write { db in
            try db.execute(sql: "UPDATE alarms SET last_value = ? WHERE id = ?", arguments: [value, id])
            guard let t = transition else { return }
            try db.execute(sql: "UPDATE alarms SET state = ?, state_since = ? WHERE id = ?", arguments: [t.state, t.at, id])
            try db.execute(
                sql: "INSERT INTO alarm_events (alarm_id, state, value, at, message) VALUES (?, ?, ?, ?, ?)",
                arguments: [id, t.state, t.value, t.at, t.message])
            try db.execute(
                sql: "DELETE FROM alarm_events WHERE alarm_id = ? AND seq NOT IN (SELECT seq FROM alarm_events WHERE alarm_id = ? ORDER BY seq DESC LIMIT 100)",
                arguments: [id, id])
        }
    }
}

// Run-command invocations in the store: made pending, marked running, finished with what the agent said.
import Foundation
import GRDB
import KumoAPI

extension Store {
    static func invocation(_ r: Row) -> Invocation {
        var i = Invocation(
            id: r["id"], instance: r["instance_id"], kind: r["kind"], timeoutSeconds: r["timeout_seconds"],
            state: InvocationState(rawValue: r["state"]) ?? .failed, createdAt: r["created_at"])
        i.command = r["command"]; i.path = r["path"]; i.bytes = r["bytes"]
        i.exitCode = r["exit_code"]; i.signal = r["signal"]; i.error = r["error"]
        i.stdout = (r["stdout"] as Data?).map { String(decoding: $0, as: UTF8.self) }
        i.stderr = (r["stderr"] as Data?).map { String(decoding: $0, as: UTF8.self) }
        i.stdoutTruncated = (r["stdout_truncated"] as Int?).map { $0 == 1 }
        i.stderrTruncated = (r["stderr_truncated"] as Int?).map { $0 == 1 }
        i.startedAt = r["started_at"]; i.finishedAt = r["finished_at"]
        return i
    }

    /// Invocations kept per instance (the newest): a tenant's history cannot fill the host's disk.
    public static let keptInvocations = 100

    public func addInvocation(_ i: Invocation) throws {
        try db.write { db in
            try db.execute(
                sql: """
                    DELETE FROM invocations WHERE instance_id = ? AND state IN ('success', 'failed', 'timeout') AND id NOT IN
                        (SELECT id FROM invocations WHERE instance_id = ? ORDER BY created_at DESC, id DESC LIMIT ?)
                    """, arguments: [i.instance, i.instance, Self.keptInvocations - 1])
            try db.execute(
                sql: """
                    INSERT INTO invocations (id, instance_id, kind, command, path, bytes, timeout_seconds, state, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [i.id, i.instance, i.kind, i.command, i.path, i.bytes, i.timeoutSeconds, i.state.rawValue, i.createdAt])
        }
    }

    /// The instance's invocations, newest first (at most `limit`).
    public func invocations(instance: String, limit: Int = 100) throws -> [Invocation] {
        try db.read {
            try Row.fetchAll($0, sql: "SELECT * FROM invocations WHERE instance_id = ? ORDER BY created_at DESC, id LIMIT ?", arguments: [instance, limit])
                .map(Self.invocation)
        }
    }

    public func invocation(_ id: String, instance: String) throws -> Invocation? {
        try db.read { try Row.fetchOne($0, sql: "SELECT * FROM invocations WHERE id = ? AND instance_id = ?", arguments: [id, instance]).map(Self.invocation) }
    }

    /// Invocations of the instance that have not finished.
    public func unfinishedInvocations(instance: String) throws -> Int {
        try db.read {
            try Int.fetchOne($0, sql: "SELECT count(*) FROM invocations WHERE instance_id = ? AND state IN ('pending', 'running')", arguments: [instance]) ?? 0
        }
    }

    public func startInvocation(_ id: String) throws {
        try db.write {
            try $0.execute(sql: "UPDATE invocations SET state = 'running', started_at = ? WHERE id = ? AND state = 'pending'", arguments: [Self.now(), id])
        }
    }

    public struct InvocationOutcome: Sendable {
        public var state: InvocationState
        public var exitCode: Int? = nil, signal: Int? = nil
        public var stdout: Data? = nil, stderr: Data? = nil
        public var stdoutTruncated: Bool? = nil, stderrTruncated: Bool? = nil
        public var error: String? = nil
        public init(state: InvocationState) { self.state = state }
    }

    public func finishInvocation(_ id: String, _ o: InvocationOutcome) throws {
        try db.write { db in
            try db.execute(
                sql: """
                    UPDATE invocations SET state = ?, exit_code = ?, signal = ?, stdout = ?, stderr = ?, stdout_truncated = ?,
                        stderr_truncated = ?, error = ?, finished_at = ? WHERE id = ?
                    """,
                arguments: [
                    o.state.rawValue, o.exitCode, o.signal, o.stdout, o.stderr, o.stdoutTruncated.map { $0 ? 1 : 0 },
                    o.stderrTruncated.map { $0 ? 1 : 0 }, o.error, Self.now(), id,
                ])
        }
    }

    /// At kumod's start: what a previous kumod was running is failed, with why (its connection is gone).
    public func failUnfinishedInvocations(reason: String) throws {
        try db.write {
            try $0.execute(
                sql: "UPDATE invocations SET state = 'failed', error = ?, finished_at = ? WHERE state IN ('pending', 'running')",
                arguments: [reason, Self.now()])
        }
    }
}

// Run-command (ECS Cloud Assistant): a command or a file for a running instance, carried out by the guest
// agent (guest/tools/kumo-agent.c) through kumo-vmm's virtio-vsock socket, as an invocation that goes
// pending → running → success | failed | timeout. Each runs on a thread of its own (a command may take
// hours); at most 8 unfinished per instance. docs/RUNCOMMAND.md.
import Foundation
import KumoAPI
import SystemKit
import VMMContract

extension Service {
    public static let maxUnfinishedInvocations = 8

    func runningRecord(_ id: String, by who: Store.Principal) throws(APIError) -> Store.InstanceRecord {
        let rec = try record(id, by: who)
        guard rec.instance.state == .running else {
            throw APIError(code: "conflict", message: "instance \(id) is \(rec.instance.state.rawValue): commands run on a running instance")
        }
        guard try wrap({ try store.unfinishedInvocations(instance: id) }) < Self.maxUnfinishedInvocations else {
            throw APIError(code: "conflict", message: "instance \(id) has \(Self.maxUnfinishedInvocations) invocations unfinished: wait for one")
        }
        return rec
    }

    public func runCommand(_ id: String, _ r: RunCommandRequest, by who: Store.Principal) throws(APIError) -> Invocation {
        let bytes = r.command.utf8.count
        guard bytes >= 1, bytes <= AgentClient.maxCommandBytes, !r.command.utf8.contains(0) else {
            throw APIError(code: "invalid_argument", message: "command: 1 to \(AgentClient.maxCommandBytes) bytes of UTF-8 without NUL (it is \(bytes))")
        }
        let timeout = r.timeoutSeconds ?? 60
        guard (1...86400).contains(timeout) else { throw APIError(code: "invalid_argument", message: "timeout_seconds must be 1–86400, not \(timeout)") }
        let rec = try runningRecord(id, by: who)
        var inv = Invocation(id: Store.newID("inv"), instance: id, kind: "command", timeoutSeconds: timeout, state: .pending, createdAt: Store.now())
        inv.command = r.command
        try start(inv, rec) { agent throws(AgentClient.Failure) in
            let result = try agent.run(r.command, timeoutSeconds: timeout)
            var o = Store.InvocationOutcome(state: .failed)
            switch result.outcome {
            case let .exited(code): o.state = code == 0 ? .success : .failed; o.exitCode = Int(code)
            case let .signalled(sig): o.signal = Int(sig)
            case .timedOut: o.state = .timeout
            }
            o.stdout = Data(result.stdout); o.stderr = Data(result.stderr)
            o.stdoutTruncated = result.stdoutTruncated; o.stderrTruncated = result.stderrTruncated
            return o
        }
        return inv
    }

    public func sendFile(_ id: String, _ r: SendFileRequest, by who: Store.Principal) throws(APIError) -> Invocation {
        try Validate.text(r.path, field: "path", maxBytes: 4000)
        guard r.path.hasPrefix("/") else { throw APIError(code: "invalid_argument", message: "path must be absolute in the guest") }
        guard let data = Data(base64Encoded: r.content) else { throw APIError(code: "invalid_argument", message: "content must be base64") }
        guard data.count <= AgentClient.maxFileBytes else {
            throw APIError(code: "invalid_argument", message: "content is \(data.count) bytes; at most \(AgentClient.maxFileBytes)")
        }
        let modeText = r.mode ?? "0644"
        guard let mode = UInt32(modeText, radix: 8), mode <= 0o7777 else {
            throw APIError(code: "invalid_argument", message: "mode \"\(Validate.escaped(modeText))\": octal permission bits, 0000 to 7777")
        }
        let rec = try runningRecord(id, by: who)
        var inv = Invocation(id: Store.newID("inv"), instance: id, kind: "file", timeoutSeconds: 30, state: .pending, createdAt: Store.now())
        inv.path = r.path
        inv.bytes = data.count
        try start(inv, rec) { agent throws(AgentClient.Failure) in
            try agent.putFile(r.path, mode: mode, bytes: [UInt8](data))
            return Store.InvocationOutcome(state: .success)
        }
        return inv
    }

    /// Records the invocation and runs `work` against the agent on a thread of its own.
    func start(
        _ inv: Invocation, _ rec: Store.InstanceRecord, _ work: @escaping @Sendable (AgentClient) throws(AgentClient.Failure) -> Store.InvocationOutcome
    ) throws(APIError) {
        try wrap { try self.store.addInvocation(inv) }
        let agent = AgentClient(vsockPath: URL(fileURLWithPath: rec.workDir).appendingPathComponent("v.sock").path)
        let store = self.store
        do {
            try OSThread.detached(name: "kumod-inv") { [self] in
                try? store.startInvocation(inv.id)
                let wait = self.agentWaitSeconds.load(ordering: .relaxed)
                let deadline = Date().addingTimeInterval(Double(wait))
                var outcome: Store.InvocationOutcome
                while true {
                    do throws(AgentClient.Failure) {
                        outcome = try work(agent)
                        break
                    } catch {
                        // No agent yet (the guest is booting, or its image has none): asked again for a while.
                        if error.unreachable && Date() < deadline && !closing.load(ordering: .relaxed) {
                            Thread.sleep(forTimeInterval: 1)
                            continue
                        }
                        outcome = Store.InvocationOutcome(state: .failed)
                        outcome.error = error.unreachable ? "no guest agent answered within \(wait) s: \(error)" : error.description
                        break
                    }
                }
                try? store.finishInvocation(inv.id, outcome)
            }
        } catch {
            var o = Store.InvocationOutcome(state: .failed)
            o.error = "kumod cannot start a thread for it: \(error)"
            try? store.finishInvocation(inv.id, o)
        }
    }

    public func invocations(of id: String, by who: Store.Principal) throws(APIError) -> [Invocation] {
        _ = try record(id, by: who)
        return try wrap { try store.invocations(instance: id) }
    }

    public func invocation(_ inv: String, of id: String, by who: Store.Principal) throws(APIError) -> Invocation {
        _ = try record(id, by: who)
        guard let i = try wrap({ try store.invocation(inv, instance: id) }) else {
            throw APIError(code: "not_found", message: "instance \(id) has no invocation \(Validate.escaped(inv)) (`kumo instance invocations \(id)`)")
        }
        return i
    }
}

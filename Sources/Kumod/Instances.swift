// Instances as the API asks for them: RunInstances (with idempotency), Describe, Start, Stop, Reboot,
// Terminate. A request records what is wanted; the supervisor (Supervisor.swift) makes it happen.
import Foundation
import KumoAPI
import GRDB
import Synchronization
import HostCPUs
import VMMContract

extension Service {
    // MARK: instances

    static let maxCount = 100
    /// An instance name's limit in UTF-8 bytes (a count > 1 adds "-N" to it).
    static let maxNameBytes = 128

    public func runInstances(_ r: RunInstancesRequest, by who: Store.Principal) throws(APIError) -> RunInstancesResponse {
        let count = r.count ?? 1
        guard (1...Self.maxCount).contains(count) else {
            throw APIError(code: "invalid_argument", message: "count must be 1–\(Self.maxCount), not \(count)")
        }
        guard r.cpuPolicy == nil || r.cpuPolicy == "shared" || r.cpuPolicy == "dedicated" else {
            throw APIError(code: "invalid_argument", message: "cpu_policy must be shared or dedicated, not \"\(Validate.escaped(r.cpuPolicy!))\"")
        }
        // Names and tokens are checked before anything is looked up (their text is echoed in messages).
        if let n = r.name { try Validate.text(n, field: "name", maxBytes: Self.maxNameBytes) }
        if let t = r.clientToken { try Validate.token(t, field: "client_token") }
        try Validate.text(r.type, field: "type", maxBytes: 255)
        try Validate.text(r.image, field: "image", maxBytes: 255)
        let dedicated = r.cpuPolicy == "dedicated"
        guard let type = try wrap({ try store.type(r.type) }) else {
            let known = (try? store.types().map(\.name).joined(separator: ", ")) ?? ""
            throw APIError(code: "not_found", message: "no instance type \"\(r.type)\" (known: \(known); `kumo type list`)")
        }
        // The public images and the caller's own (an admin's instance too: it is in the admin's tenant).
        guard let image = try wrap({ try store.image(r.image, visibleTo: who.tenantID) }) else {
            throw APIError(code: "not_found", message: "no image \"\(r.image)\" (`kumo image list`)")
        }
        let networkIDs = try networksForLaunch(r.networks, by: who)
        let groupIDs = try groupsForLaunch(r.securityGroups, nics: networkIDs.count, by: who)
        let key = try r.keyPair.map { k throws(APIError) in
            try Validate.text(k, field: "key_pair", maxBytes: 128)
            // The caller's own only, an admin's too: the instance is in the caller's tenant.
            guard let own = try wrap({ try store.keyPair(k, tenant: who.tenantID) }) else {
                throw APIError(code: "not_found", message: "no key pair \(Validate.escaped(k)) (`kumo keypair list`)")
            }
            return own
        }
        if let d = r.display, DisplaySize.parse(d) == nil {
            throw APIError(code: "invalid_argument", message: "display \"\(Validate.escaped(d))\": WIDTHxHEIGHT from 320x200 to 2560x1600, e.g. 1024x768")
        }
        var userData: Data? = nil
        if let u = r.userData {
            guard let d = Data(base64Encoded: u) else { throw APIError(code: "invalid_argument", message: "user_data must be base64") }
            guard d.count <= 16 << 10 else { throw APIError(code: "invalid_argument", message: "user_data is \(d.count) bytes; at most 16384") }
            // cloud-init reads it as text (#cloud-config, a script, …): bytes that are not UTF-8 are refused here, not there.
            guard String(data: d, encoding: .utf8) != nil else {
                throw APIError(code: "invalid_argument", message: "user_data is not UTF-8 text (cloud-config or a script)")
            }
            userData = d
        }
        // The request as recorded for idempotency: the same token with a different request is refused.
        let canonical = String(
            decoding: try! Self.canonicalEncoder.encode(
                RunInstancesRequest(
                    type: r.type, image: image.id, count: count, name: r.name, userData: r.userData, clientToken: r.clientToken, memoryDedup: r.memoryDedup,
                    cpuPolicy: r.cpuPolicy, networks: r.networks == nil ? nil : networkIDs,
                    securityGroups: r.securityGroups == nil ? nil : groupIDs, keyPair: key?.id, display: r.display)), as: UTF8.self)
        let new = (0..<count).map { i -> Store.NewInstance in
            let id = Store.newID("i")
            let name = r.name.map { count > 1 ? "\($0)-\(i + 1)" : $0 } ?? id
            return Store.NewInstance(
                id: id, name: name, type: type, imageID: image.id, userData: userData, keyPair: key.map { ($0.name, $0.publicKey) },
                workDir: dataDir.appendingPathComponent("instances/\(id)").path, memoryDedup: r.memoryDedup ?? false,
                dedicated: dedicated, display: r.display, networks: networkIDs, securityGroups: groupIDs)
        }
        let host = self.host, policy = self.policy()
        let outcome: Store.Reserved
        do {
            outcome = try store.reserve(tenantID: who.tenantID, clientToken: r.clientToken, request: canonical, instances: new) { db in
                // Inside the write transaction: every committed reservation is counted.
                let holders = try Store.capacityHolders(db)
                try Placement.check(
                    type: type, count: count, host: host, policy: policy, holders: holders, tenantID: who.tenantID,
                    admin: who.admin, dedicated: dedicated)
                return dedicated ? try Placement.dedicate(type: type, count: count, host: host, policy: policy, holders: holders) : []
            }
        } catch let e as APIError { throw e } catch { throw APIError(code: "internal", message: "state store: \(error)") }
        switch outcome {
        case let .created(rid, ids):
            syncLeases(Set(networkIDs))
            for id in ids { startLaunch(id) }
            return RunInstancesResponse(reservation: rid, instances: try ids.map { id throws(APIError) in try show(id, by: who) })
        case let .replay(rid, ids, same):
            guard same else {
                throw APIError(
                    code: "idempotent_parameter_mismatch",
                    message: "client_token \"\(r.clientToken ?? "")\" was used with a different request (reservation \(rid)); use a new token")
            }
            return RunInstancesResponse(reservation: rid, instances: try ids.map { id throws(APIError) in try show(id, by: who) })
        }
    }

    static let canonicalEncoder: JSONEncoder = {
        let e = JSONEncoder(); e.outputFormatting = .sortedKeys; return e
    }()

    /// The instance, if `who` may see it (its tenant, or an admin); not found otherwise (no hint that
    /// another tenant's instance exists).
    func record(_ id: String, by who: Store.Principal) throws(APIError) -> Store.InstanceRecord {
        guard let rec = try wrap({ try store.instance(id) }), who.admin || rec.tenantID == who.tenantID,
            rec.instance.state != .deleted || who.admin
        else {
            throw APIError(code: "not_found", message: "no instance \(id) (`kumo instance list`)")
        }
        return rec
    }

    public func show(_ id: String, by who: Store.Principal) throws(APIError) -> Instance {
        visible(try record(id, by: who).instance, to: who)
    }

    public struct ListQuery: Sendable {
        public var states: [InstanceState] = []
        public var names: [String] = []
        public var ids: [String] = []
        public var types: [String] = []
        public var limit = 100
        public var nextToken: String?
        public init() {}
    }

    public func describe(_ q: ListQuery, by who: Store.Principal) throws(APIError) -> InstanceList {
        guard (1...1000).contains(q.limit) else { throw APIError(code: "invalid_argument", message: "limit must be 1–1000") }
        var after: Int64 = 0
        if let t = q.nextToken {
            guard let d = Data(base64Encoded: t), let s = String(data: d, encoding: .utf8), s.hasPrefix("seq:"), let v = Int64(s.dropFirst(4)) else {
                throw APIError(code: "invalid_argument", message: "next_token is not one this server gave out")
            }
            after = v
        }
        var f = Store.Filter(tenantID: who.admin ? nil : who.tenantID)
        f.states = q.states; f.names = q.names; f.ids = q.ids; f.types = q.types
        let (recs, more) = try wrap { try store.instances(f, afterSeq: after, limit: q.limit) }
        let next = more ? recs.last.map { Data("seq:\($0.seq)".utf8).base64EncodedString() } : nil
        return InstanceList(instances: recs.map { visible($0.instance, to: who) }, nextToken: next)
    }

    public func start(_ id: String, by who: Store.Principal) throws(APIError) -> Instance {
        let rec = try record(id, by: who)
        switch rec.instance.state {
        case .running, .starting, .pending: return visible(rec.instance, to: who)
        case .stopped, .error:
            if imaging.withLock({ $0.contains(id) }) {
                throw APIError(code: "conflict", message: "an image is being made from instance \(id): start it when that is done")
            }
            let host = self.host, policy = self.policy()
            let type = InstanceType(name: rec.instance.type, vcpus: rec.instance.vcpus, memoryMiB: rec.instance.memoryMiB)
            do {
                let dedicated = rec.instance.cpuPolicy == "dedicated"
                let ok = try store.transition(id, to: .pending, reason: "StartInstances", from: [.stopped, .error]) { db in
                    let holders = try Store.capacityHolders(db)
                    try Placement.check(
                        type: type, count: 1, host: host, policy: policy, holders: holders, tenantID: who.tenantID,
                        admin: who.admin, dedicated: dedicated)
                    // A dedicated instance gets host CPUs afresh: the ones it had may be taken.
                    if dedicated {
                        try Store.setDedicatedCPUs(db, id, try Placement.dedicate(type: type, count: 1, host: host, policy: policy, holders: holders)[0])
                    }
                }
                if ok { startLaunch(id) }
            } catch let e as APIError { throw e } catch { throw APIError(code: "internal", message: "state store: \(error)") }
            return try show(id, by: who)
        case .stopping:
            throw APIError(code: "incorrect_state", message: "instance \(id) is stopping; start it once it is stopped")
        case .deleted:
            throw APIError(code: "not_found", message: "no instance \(id)")
        }
    }

    public func stop(_ id: String, by who: Store.Principal, force: Bool = false) throws(APIError) -> Instance {
        let rec = try record(id, by: who)
        switch rec.instance.state {
        case .stopped, .error: return visible(rec.instance, to: who)
        case .stopping where !force: return visible(rec.instance, to: who)
        case .deleted: throw APIError(code: "not_found", message: "no instance \(id)")
        default: break
        }
        try wrap {
            try store.transition(
                id, to: .stopping, reason: force ? "StopInstances (force)" : "StopInstances",
                from: [.pending, .starting, .running, .stopping])
        }
        requestStop(id, force: force)
        return try show(id, by: who)
    }

    public func reboot(_ id: String, by who: Store.Principal) throws(APIError) -> Instance {
        let rec = try record(id, by: who)
        guard rec.instance.state == .running else {
            throw APIError(code: "incorrect_state", message: "instance \(id) is \(rec.instance.state.rawValue); only a running instance reboots")
        }
        // A hard reboot: the VMM process is replaced, the instance keeps its capacity and work directory.
        try wrap { try store.transition(id, to: .starting, reason: "RebootInstances", from: [.running]) }
        let proc = processes.withLock { $0[id] }
        if let p = proc {
            launcher.signal(p, SIGKILL)
            processes.withLock { _ = $0.removeValue(forKey: id) }
            supervisor.async { [self] in
                for _ in 0..<100 where launcher.exitStatus(p) == nil { usleep(50_000) }
                self.launch(id)
            }
        } else {
            startLaunch(id)
        }
        return try show(id, by: who)
    }

    public func delete(_ id: String, by who: Store.Principal) throws(APIError) -> Instance {
        let rec = try record(id, by: who)
        if rec.instance.state == .deleted { return visible(rec.instance, to: who) }
        if imaging.withLock({ $0.contains(id) }) {
            throw APIError(code: "conflict", message: "an image is being made from instance \(id): delete it when that is done")
        }
        // Released either way: a VMM that died while kumod was down left its cgroup behind.
        if let p = processes.withLock({ $0[id] }) { endVMM(id, p) } else { released(id) }
        try wrap { try store.transition(id, to: .deleted, reason: "TerminateInstances", pid: .some(nil)) }
        releaseNICs(id)
        monitoring.forget(id)
        try? store.deleteAlarms(instance: id)
        try? FileManager.default.removeItem(atPath: rec.workDir)
        guard let gone = try wrap({ try store.instance(id) }) else { throw APIError(code: "internal", message: "instance \(id) vanished") }
        return visible(gone.instance, to: who)
    }
}

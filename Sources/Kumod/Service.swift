// The compute service: instance types, images and instances, asynchronous like EC2 — a request
// records what is wanted and returns; kumod's own tasks start and watch the VMMs and move each
// instance through pending → starting → running → stopping → stopped (or error), with reasons.
import Foundation
import KumoAPI
import GRDB
import Synchronization
import HostCPUs
import VMMContract

public final class Service: Sendable {
    public let store: Store
    public let launcher: any VMMLauncher
    public let host: HostResources
    public let dataDir: URL
    /// How long a guest gets to power off after the ACPI power button before its VMM is stopped by force.
    public let stopTimeout: Duration
    /// KSM for instances with memory dedup: the trust domain and the tuner.
    public let ksm: KSMTuner
    /// How often a guest may reboot before kumod stops it (Reboots.swift).
    public let rebootLimit: RebootLimit
    /// The balloon pass: its own queue (it waits on guests' statistics), what it saw, what it decided.
    let balloonQueue = DispatchQueue(label: "kumod.balloons")
    let balloonState = Mutex<(seen: [HostBalloons.Seen], free: Double?, decisions: [String])>(([], nil, []))
    /// Held across a policy update's read, merge and write: two admins changing different fields at the
    /// same moment both land (each merges onto the other's result, never onto the same stale base).
    let balloonPolicyUpdates = Mutex(())
    /// How a stop went, by instance id, for the reason recorded when its VMM is gone.
    let stopNotes = Mutex<[String: String]>([:])
    /// Live VMM processes by instance id (kumod's view; the store has the same pids).
    let processes = Mutex<[String: VMMProcess]>([:])
    /// Supervision (spawning, reaping, stop timeouts) runs on its own serial queue, never on Swift
    /// concurrency's cooperative pool: it makes blocking system calls (posix_spawn, waitpid, /proc reads),
    /// and it must keep running when the pool's few threads are busy or blocked.
    let supervisor = DispatchQueue(label: "kumod.supervisor")
    /// The monitor's generation: a new start (or a stop) ends the loop of the previous one.
    let monitorGeneration = Atomic<Int>(0)

    public init(store: Store, launcher: any VMMLauncher, host: HostResources = .detect(), dataDir: URL,
                stopTimeout: Duration = .seconds(30), ksm: KSMTuner = KSMTuner(), rebootLimit: RebootLimit = .standard) {
        self.store = store; self.launcher = launcher; self.host = host; self.dataDir = dataDir; self.stopTimeout = stopTimeout
        self.ksm = ksm; self.rebootLimit = rebootLimit
    }

    // MARK: settings

    public func policy() -> PlacementPolicy {
        guard let s = try? store.setting("placement"), let p = try? JSONDecoder().decode(PlacementPolicy.self, from: Data(s.utf8)) else {
            return PlacementPolicy()
        }
        return p
    }

    public func setPolicy(_ p: PlacementPolicy, by who: Store.Principal) throws(APIError) {
        try requireAdmin(who)
        guard p.cpuAllocationRatio > 0, p.cpuAllocationRatio <= 64, p.ramAllocationRatio > 0, p.ramAllocationRatio <= 16,
              (0..<host.memoryMiB).contains(p.reservedHostMemoryMiB), (0..<host.logicalCPUs).contains(p.reservedCPUs) else {
            throw APIError(code: "invalid_argument", message: "cpu_allocation_ratio must be in (0, 64], ram_allocation_ratio in (0, 16], reserved_cpus from 0 to \(host.logicalCPUs - 1), reserved_host_memory_mib from 0 to \(host.memoryMiB - 1)")
        }
        let data = try! JSONEncoder().encode(p)
        try wrap { try store.setSetting("placement", String(decoding: data, as: UTF8.self)) }
    }

    func holders() throws(APIError) -> [Placement.Holder] {
        try wrap { try store.read(Store.capacityHolders) }
    }

    public func capacity() throws(APIError) -> Capacity {
        Placement.capacity(host: host, policy: policy(), holders: try holders())
    }

    /// Capacity with how many more of each type fit, counting the measured KSM and balloon savings too.
    public func capacityReport() throws(APIError) -> Capacity {
        let ksmPages = ksm.read("pages_sharing") ?? 0
        let balloons = balloonState.withLock { $0.seen.reduce(0) { $0 + $1.actualMiB } }
        return Placement.withFits(try capacity(), types: try types(), ksmSavedMiB: ksmPages * 4 / 1024, balloonReclaimedMiB: balloons)
    }

    // MARK: errors

    @discardableResult
    func wrap<T>(_ body: () throws -> T) throws(APIError) -> T {
        do { return try body() } catch let e as APIError { throw e } catch {
            throw APIError(code: "internal", message: "state store: \(error)")
        }
    }

    func requireAdmin(_ who: Store.Principal) throws(APIError) {
        guard who.admin else { throw APIError(code: "forbidden", message: "this needs an admin token") }
    }

    // MARK: types

    public func types() throws(APIError) -> [InstanceType] { try wrap { try store.types() } }

    public func addType(_ t: InstanceType, by who: Store.Principal) throws(APIError) -> InstanceType {
        try requireAdmin(who)
        guard t.name.range(of: #"^[a-z0-9][a-z0-9.\-]{0,62}$"#, options: .regularExpression) != nil else {
            throw APIError(code: "invalid_argument", message: "type name \"\(t.name)\": 1–63 of a-z, 0-9, '.', '-', starting with a letter or digit")
        }
        guard (1...64).contains(t.vcpus), (64...1 << 20).contains(t.memoryMiB) else {
            throw APIError(code: "invalid_argument", message: "vcpus must be 1–64 and memory_mib 64–1048576")
        }
        if let c = t.cpuCapPercent, !(1...100).contains(c) {
            throw APIError(code: "invalid_argument", message: "cpu_cap_percent must be 1–100 (percent of one host CPU per vCPU)")
        }
        if let sh = t.cpuShares, !(2...262144).contains(sh) {
            throw APIError(code: "invalid_argument", message: "cpu_shares must be 2–262144 (1024 is the default weight)")
        }
        if let sh = t.memoryShares, !(2...262144).contains(sh) {
            throw APIError(code: "invalid_argument", message: "memory_shares must be 2–262144 (1024 is the default)")
        }
        if try wrap({ try store.type(t.name) }) != nil {
            throw APIError(code: "conflict", message: "instance type \(t.name) exists")
        }
        let made = InstanceType(name: t.name, vcpus: t.vcpus, memoryMiB: t.memoryMiB, cpuCapPercent: t.cpuCapPercent, cpuShares: t.cpuShares,
                                 memoryShares: t.memoryShares)
        try wrap { try store.addType(made) }
        return made
    }

    // MARK: images

    public func images() throws(APIError) -> [Image] { try wrap { try store.images() } }

    /// Registers an image from files on the host, validating each before anything is recorded.
    public func registerImage(_ r: RegisterImageRequest, by who: Store.Principal) throws(APIError) -> Image {
        try requireAdmin(who)
        guard r.name.range(of: #"^[A-Za-z0-9][A-Za-z0-9._\-]{0,62}$"#, options: .regularExpression) != nil else {
            throw APIError(code: "invalid_argument", message: "image name \"\(r.name)\": 1–63 of A-Z, a-z, 0-9, '.', '_', '-'")
        }
        if try wrap({ try store.image(r.name) }) != nil { throw APIError(code: "conflict", message: "image \(r.name) exists") }
        // kumo-vmm's own checks (VMMContract.BootInputs): an image kumod records is one kumo-vmm boots.
        let format: String
        do {
            format = try BootInputs.kernel(r.kernel).format == .elf ? "elf" : "bzimage"
            if let i = r.initrd { _ = try BootInputs.initrd(i) }
            if let d = r.rootDisk { try BootInputs.disk(d, readOnly: true) }
        } catch {
            throw APIError(code: "invalid_argument", message: "\(error)")
        }
        var cmdline = r.cmdline ?? "console=ttyS0 reboot=k panic=-1"
        if r.rootDisk != nil && !cmdline.contains("root=") { cmdline += " root=/dev/vda rw" }
        let img = Image(id: Store.newID("img"), name: r.name, kernel: Self.absolute(r.kernel), initrd: r.initrd.map(Self.absolute),
                        rootDisk: r.rootDisk.map(Self.absolute), cmdline: cmdline, kernelFormat: format, createdAt: Store.now())
        try wrap { try store.addImage(img) }
        return img
    }

    static func absolute(_ p: String) -> String { URL(fileURLWithPath: p).standardizedFileURL.path }

    // MARK: instances

    static let maxCount = 100

    public func runInstances(_ r: RunInstancesRequest, by who: Store.Principal) throws(APIError) -> RunInstancesResponse {
        let count = r.count ?? 1
        guard (1...Self.maxCount).contains(count) else {
            throw APIError(code: "invalid_argument", message: "count must be 1–\(Self.maxCount), not \(count)")
        }
        guard r.cpuPolicy == nil || r.cpuPolicy == "shared" || r.cpuPolicy == "dedicated" else {
            throw APIError(code: "invalid_argument", message: "cpu_policy must be shared or dedicated, not \"\(r.cpuPolicy!)\"")
        }
        let dedicated = r.cpuPolicy == "dedicated"
        guard let type = try wrap({ try store.type(r.type) }) else {
            let known = (try? store.types().map(\.name).joined(separator: ", ")) ?? ""
            throw APIError(code: "not_found", message: "no instance type \"\(r.type)\" (known: \(known); `kumo type list`)")
        }
        guard let image = try wrap({ try store.image(r.image) }) else {
            throw APIError(code: "not_found", message: "no image \"\(r.image)\" (`kumo image list`)")
        }
        if let n = r.name, n.count > 128 || n.contains(where: { $0.isNewline }) {
            throw APIError(code: "invalid_argument", message: "name: at most 128 characters on one line")
        }
        var userData: Data? = nil
        if let u = r.userData {
            guard let d = Data(base64Encoded: u) else { throw APIError(code: "invalid_argument", message: "user_data must be base64") }
            guard d.count <= 16 << 10 else { throw APIError(code: "invalid_argument", message: "user_data is \(d.count) bytes; at most 16384") }
            userData = d
        }
        if let t = r.clientToken, t.isEmpty || t.count > 64 {
            throw APIError(code: "invalid_argument", message: "client_token: 1–64 characters")
        }
        // The request as recorded for idempotency: the same token with a different request is refused.
        let canonical = String(decoding: try! Self.canonicalEncoder.encode(RunInstancesRequest(type: r.type, image: image.id, count: count, name: r.name, userData: r.userData, clientToken: r.clientToken, memoryDedup: r.memoryDedup, cpuPolicy: r.cpuPolicy)), as: UTF8.self)
        let new = (0..<count).map { i -> Store.NewInstance in
            let id = Store.newID("i")
            let name = r.name.map { count > 1 ? "\($0)-\(i + 1)" : $0 } ?? id
            return Store.NewInstance(id: id, name: name, type: type, imageID: image.id, userData: userData,
                                     workDir: dataDir.appendingPathComponent("instances/\(id)").path, memoryDedup: r.memoryDedup ?? false,
                                     dedicated: dedicated)
        }
        let host = self.host, policy = self.policy()
        let outcome: Store.Reserved
        do {
            outcome = try store.reserve(tenantID: who.tenantID, clientToken: r.clientToken, request: canonical, instances: new) { db in
                // Inside the write transaction: every committed reservation is counted.
                let holders = try Store.capacityHolders(db)
                try Placement.check(type: type, count: count, host: host, policy: policy, holders: holders, tenantID: who.tenantID,
                                    admin: who.admin, dedicated: dedicated)
                return dedicated ? try Placement.dedicate(type: type, count: count, host: host, policy: policy, holders: holders) : []
            }
        } catch let e as APIError { throw e } catch { throw APIError(code: "internal", message: "state store: \(error)") }
        switch outcome {
        case let .created(rid, ids):
            for id in ids { startLaunch(id) }
            return RunInstancesResponse(reservation: rid, instances: try ids.map { id throws(APIError) in try show(id, by: who) })
        case let .replay(rid, ids, same):
            guard same else {
                throw APIError(code: "idempotent_parameter_mismatch",
                               message: "client_token \"\(r.clientToken ?? "")\" was used with a different request (reservation \(rid)); use a new token")
            }
            return RunInstancesResponse(reservation: rid, instances: try ids.map { id throws(APIError) in try show(id, by: who) })
        }
    }

    static let canonicalEncoder: JSONEncoder = { let e = JSONEncoder(); e.outputFormatting = .sortedKeys; return e }()

    /// The instance, if `who` may see it (its tenant, or an admin); not found otherwise (no hint that
    /// another tenant's instance exists).
    func record(_ id: String, by who: Store.Principal) throws(APIError) -> Store.InstanceRecord {
        guard let rec = try wrap({ try store.instance(id) }), who.admin || rec.tenantID == who.tenantID,
              rec.instance.state != .deleted || who.admin else {
            throw APIError(code: "not_found", message: "no instance \(id) (`kumo instance list`)")
        }
        return rec
    }

    public func show(_ id: String, by who: Store.Principal) throws(APIError) -> Instance {
        try record(id, by: who).instance
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
        return InstanceList(instances: recs.map(\.instance), nextToken: next)
    }

    public func start(_ id: String, by who: Store.Principal) throws(APIError) -> Instance {
        let rec = try record(id, by: who)
        switch rec.instance.state {
        case .running, .starting, .pending: return rec.instance
        case .stopped, .error:
            let host = self.host, policy = self.policy()
            let type = InstanceType(name: rec.instance.type, vcpus: rec.instance.vcpus, memoryMiB: rec.instance.memoryMiB)
            do {
                let dedicated = rec.instance.cpuPolicy == "dedicated"
                let ok = try store.transition(id, to: .pending, reason: "StartInstances", from: [.stopped, .error]) { db in
                    let holders = try Store.capacityHolders(db)
                    try Placement.check(type: type, count: 1, host: host, policy: policy, holders: holders, tenantID: who.tenantID,
                                        admin: who.admin, dedicated: dedicated)
                    // A dedicated instance gets host CPUs afresh: the ones it had may be taken.
                    if dedicated { try Store.setDedicatedCPUs(db, id, try Placement.dedicate(type: type, count: 1, host: host, policy: policy, holders: holders)[0]) }
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
        case .stopped, .error: return rec.instance
        case .stopping where !force: return rec.instance
        case .deleted: throw APIError(code: "not_found", message: "no instance \(id)")
        default: break
        }
        try wrap { try store.transition(id, to: .stopping, reason: force ? "StopInstances (force)" : "StopInstances",
                                        from: [.pending, .starting, .running, .stopping]) }
        requestStop(id, force: force)
        return try show(id, by: who)
    }

    // MARK: balloon policy

    public func balloonPolicy() -> BalloonPolicy {
        guard let s = try? store.setting("balloon"), let p = try? JSONDecoder().decode(BalloonPolicy.self, from: Data(s.utf8)) else {
            return BalloonPolicy()
        }
        return p
    }

    /// The whole policy at once (under the same lock as partial updates).
    public func setBalloonPolicy(_ p: BalloonPolicy, by who: Store.Principal) throws(APIError) -> BalloonPolicy {
        try updateBalloonPolicy(by: who) { _ in p }
    }

    /// A partial update: `merge` gets the policy in force and returns the new one (the API decodes the
    /// request's fields onto it); validated and stored under one lock.
    public func updateBalloonPolicy(by who: Store.Principal,
                                    _ merge: (BalloonPolicy) throws(APIError) -> BalloonPolicy) throws(APIError) -> BalloonPolicy {
        try requireAdmin(who)
        return try balloonPolicyUpdates.withLock { _ throws(APIError) in
            let v = try merge(balloonPolicy()).validated()
            let data = try! JSONEncoder().encode(v)
            try wrap { try store.setSetting("balloon", String(decoding: data, as: UTF8.self)) }
            return v
        }
    }

    public func hostBalloons() -> HostBalloons {
        let s = balloonState.withLock { $0 }
        return HostBalloons(policy: balloonPolicy(), hostFreePercent: s.free, instances: s.seen, decisions: s.decisions)
    }

    /// One pass: every running instance's balloon and guest statistics, the policy's decisions, applied.
    public func balloonPass(meminfo: (available: Int, total: Int)? = Service.meminfo()) {
        let policy = balloonPolicy()
        var f = Store.Filter()
        f.states = [.running]
        var seen: [Balloons.Observed] = []
        var handles: [String: any VMMHandle] = [:]
        let shares = Dictionary(((try? store.types()) ?? []).map { ($0.name, $0.memoryShares ?? 1024) }, uniquingKeysWith: { a, _ in a })
        for rec in ((try? store.instances(f, limit: 1_000_000).0) ?? []) {
            let vmm = launcher.handle(workDir: URL(fileURLWithPath: rec.workDir))
            guard let b = try? vmm.balloon(refresh: true) else { continue }
            let free = b.stats["free_memory"].map { Int($0 >> 20) }
            seen.append(Balloons.Observed(id: rec.instance.id, memoryMiB: rec.instance.memoryMiB, targetMiB: b.targetMiB,
                                          actualMiB: b.actualMiB, guestFreeMiB: b.driverReady ? free : nil,
                                          shares: shares[rec.instance.type] ?? 1024))
            handles[rec.instance.id] = vmm
        }
        let decisions = meminfo.map { Balloons.decide(policy: policy, hostAvailableMiB: $0.available, hostTotalMiB: $0.total, instances: seen) } ?? []
        var log: [String] = []
        for d in decisions {
            guard let vmm = handles[d.id] else { continue }
            let ok = (try? vmm.setBalloon(targetMiB: d.targetMiB)) != nil
            log.append("\(Store.now()) " + d.why + (ok ? "" : " (the VMM refused)"))
        }
        let free = meminfo.map { 100.0 * Double($0.available) / Double(max($0.total, 1)) }
        balloonState.withLock { s in
            s.seen = seen.map { HostBalloons.Seen(instance: $0.id, memoryMiB: $0.memoryMiB, targetMiB: $0.targetMiB, actualMiB: $0.actualMiB, guestFreeMiB: $0.guestFreeMiB) }
            s.free = free
            s.decisions += log
            if s.decisions.count > 100 { s.decisions.removeFirst(s.decisions.count - 100) }
        }
        for l in log { FileHandle.standardOutput.write(Data("kumod: balloon: \(l)\n".utf8)) }
    }

    /// (MemAvailable, MemTotal) in MiB.
    public static func meminfo() -> (available: Int, total: Int)? {
        guard let h = FileHandle(forReadingAtPath: "/proc/meminfo") else { return nil }
        defer { try? h.close() }
        var total = 0, avail = 0
        for line in String(decoding: h.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 2, let v = Int(f[1]) else { continue }
            if f[0] == "MemTotal:" { total = v >> 10 } else if f[0] == "MemAvailable:" { avail = v >> 10 }
        }
        return total > 0 ? (avail, total) : nil
    }

    /// The balloon pass every `seconds`, on its own queue, while the monitor's generation holds.
    func startBalloonLoop(every seconds: Double = 5) {
        let generation = monitorGeneration.load(ordering: .sequentiallyConsistent)
        @Sendable func pass(_ service: Service?) {
            guard let service, service.monitorGeneration.load(ordering: .sequentiallyConsistent) == generation else { return }
            if service.balloonPolicy().enabled { service.balloonPass() }
            service.balloonQueue.asyncAfter(deadline: .now() + seconds) { [weak service] in pass(service) }
        }
        balloonQueue.asyncAfter(deadline: .now() + seconds) { [weak self] in pass(self) }
    }

    public func hostKSM() -> HostKSM {
        ksm.report { try? self.store.tenantName($0) }
    }

    /// Per-vCPU statistics of a running instance, from its VMM's control socket (`vm.stats`).
    public func stats(_ id: String, by who: Store.Principal) throws(APIError) -> InstanceStats {
        let rec = try record(id, by: who)
        guard rec.instance.state == .running else {
            throw APIError(code: "incorrect_state", message: "instance \(id) is \(rec.instance.state.rawValue); statistics come from a running instance's VMM")
        }
        let s: VMStats
        do { s = try launcher.handle(workDir: URL(fileURLWithPath: rec.workDir)).stats() } catch {
            throw APIError(code: "unavailable", message: "the instance's VMM: \(error.description)")
        }
        return InstanceStats(id, s)
    }

    /// Walks vCPU `vcpu`'s page tables for `address` in a running instance (kumo-vmm's `translate`).
    public func translate(_ id: String, vcpu: Int, address: String, by who: Store.Principal) throws(APIError) -> AddressTranslation {
        let rec = try record(id, by: who)
        guard rec.instance.state == .running else {
            throw APIError(code: "incorrect_state", message: "instance \(id) is \(rec.instance.state.rawValue); translation reads a running guest's page tables")
        }
        guard (0..<rec.instance.vcpus).contains(vcpu) else {
            throw APIError(code: "invalid_argument", message: "vcpu \(vcpu): instance \(id) has vCPUs 0-\(rec.instance.vcpus - 1)")
        }
        let digits = address.hasPrefix("0x") || address.hasPrefix("0X") ? String(address.dropFirst(2)) : address
        guard !digits.isEmpty, digits.count <= 16, let gva = UInt64(digits, radix: 16) else {
            throw APIError(code: "invalid_argument", message: "address \"\(address)\": a guest-virtual address in hexadecimal, e.g. 0xffffffff81000000")
        }
        do { return AddressTranslation(try launcher.handle(workDir: URL(fileURLWithPath: rec.workDir)).translate(vcpu: vcpu, address: gva)) } catch {
            throw APIError(code: "unavailable", message: "the instance's VMM: \(error.description)")
        }
    }

    /// The instance's pinning and, while it runs, where its vCPU threads may run.
    public func cpus(_ id: String, by who: Store.Principal) throws(APIError) -> InstanceCPUs {
        let rec = try record(id, by: who)
        let live = rec.instance.state == .running ? (try? stats(id, by: who))?.vcpus : nil
        return InstanceCPUs(instance: id, vcpus: (0..<rec.instance.vcpus).map { i in
            let v = live?.first { $0.vcpu == i }
            let own = rec.instance.cpuPolicy == "dedicated" ? rec.instance.dedicatedCPUs?.split(separator: ",").map(String.init) : nil
            let pinned = own.map { i < $0.count ? $0[i] : nil } ?? (i < rec.affinity.count ? rec.affinity[i] : nil)
            return .init(vcpu: i, pinned: pinned, tid: v?.tid, cpusAllowed: v?.cpusAllowed)
        })
    }

    /// Pins (or unpins) vCPUs: stored for every later start, and applied at once to a running VMM.
    public func pin(_ id: String, _ req: PinRequest, by who: Store.Principal) throws(APIError) -> InstanceCPUs {
        let rec = try record(id, by: who)
        guard rec.instance.state != .deleted else { throw APIError(code: "not_found", message: "no instance \(id)") }
        guard rec.instance.cpuPolicy != "dedicated" else {
            throw APIError(code: "invalid_argument", message: "instance \(id) is dedicated: each vCPU already has a host CPU of its own (\(rec.instance.dedicatedCPUs ?? "assigned at start"))")
        }
        guard !req.vcpus.isEmpty, req.vcpus.count <= rec.instance.vcpus else {
            throw APIError(code: "invalid_argument", message: "give 1 to \(rec.instance.vcpus) vCPU pinnings")
        }
        var a = rec.affinity + Array(repeating: nil, count: max(0, rec.instance.vcpus - rec.affinity.count))
        for p in req.vcpus {
            guard (0..<rec.instance.vcpus).contains(p.vcpu) else {
                throw APIError(code: "invalid_argument", message: "vcpu \(p.vcpu): instance \(id) has vCPUs 0-\(rec.instance.vcpus - 1)")
            }
            if let c = p.cpus {
                switch CPUList.parse(c, limit: host.logicalCPUs) {
                case let .success(list): a[p.vcpu] = CPUList.format(list)
                case let .failure(e): throw APIError(code: "invalid_argument", message: "vcpu \(p.vcpu): \(e.reason)")
                }
            } else {
                a[p.vcpu] = nil
            }
        }
        try wrap { try store.setAffinity(id, a) }
        if rec.instance.state == .running {
            let vmm = launcher.handle(workDir: URL(fileURLWithPath: rec.workDir))
            for p in req.vcpus {
                do { _ = try vmm.pin(vcpu: p.vcpu, cpus: a[p.vcpu]) } catch {
                    throw APIError(code: "unavailable", message: "stored, but the instance's VMM: \(error.description)")
                }
            }
        }
        return try cpus(id, by: who)
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
        if rec.instance.state == .deleted { return rec.instance }
        if let p = processes.withLock({ $0.removeValue(forKey: id) }) {
            launcher.signal(p, SIGKILL)
            for _ in 0..<200 where launcher.exitStatus(p) == nil { usleep(10_000) }
            launcher.release(instanceID: id)
            ksm.remove(id)
        }
        try wrap { try store.transition(id, to: .deleted, reason: "TerminateInstances", pid: .some(nil)) }
        try? FileManager.default.removeItem(atPath: rec.workDir)
        guard let gone = try wrap({ try store.instance(id) }) else { throw APIError(code: "internal", message: "instance \(id) vanished") }
        return gone.instance
    }

    // MARK: supervision

    func startLaunch(_ id: String) {
        supervisor.async { [self] in self.launch(id) }
    }

    /// pending/starting → starting → (VMM spawned) → running, or error with the reason.
    func launch(_ id: String) {
        guard let rec = try? store.instance(id), [.pending, .starting].contains(rec.instance.state) else { return }
        guard let image = try? store.image(rec.imageID) else {
            _ = try? store.transition(id, to: .error, reason: "image \(rec.imageID) is gone")
            return
        }
        _ = try? store.transition(id, to: .starting, reason: "launching kumo-vmm", from: [.pending, .starting])
        var spec = LaunchSpec(instanceID: id, workDir: URL(fileURLWithPath: rec.workDir), vcpus: rec.instance.vcpus,
                              memoryMiB: rec.instance.memoryMiB, image: image, affinity: cpuPlan(rec))
        if let t = try? store.type(rec.instance.type) { spec.cpuCapPercent = t.cpuCapPercent; spec.cpuShares = t.cpuShares }
        var note = ""
        if rec.instance.memoryDedup == true {
            spec.memoryDedup = ksm.admit(id, tenant: rec.tenantID)
            if !spec.memoryDedup { note = "; memory dedup suspended: another tenant's instances hold this host's KSM domain" }
        }
        do {
            let p: VMMProcess
            do { p = try launcher.launch(spec) } catch { ksm.remove(id); throw error }
            processes.withLock { $0[id] = p }
            if spec.memoryDedup { ksm.tune() }
            if rec.instance.cpuPolicy == "dedicated" { rebalanceShared() }
            let moved = (try? store.transition(id, to: .running, reason: "kumo-vmm \(p.pid) started" + note, from: [.starting],
                                                pid: .some((Int(p.pid), p.startTicks)))) ?? false
            if !moved {
                // Stopped or deleted while the VMM was being spawned (the request found no process to
                // signal): this VMM must not outlive the decision.
                switch (try? store.instance(id))?.instance.state {
                case .stopping?:
                    _ = try? store.transition(id, to: .stopping, reason: "stopped while starting", from: [.stopping], pid: .some((Int(p.pid), p.startTicks)))
                    requestStop(id, force: false)
                default:
                    processes.withLock { if $0[id] == p { $0.removeValue(forKey: id) } }
                    launcher.signal(p, SIGKILL)
                    for _ in 0..<200 where launcher.exitStatus(p) == nil { usleep(10_000) }
                    launcher.release(instanceID: id)
                    ksm.remove(id)
                }
            }
        } catch {
            _ = try? store.transition(id, to: .error, reason: "\(error)", from: [.starting])
        }
    }

    // MARK: CPU policy

    /// Where each vCPU runs: a dedicated instance's vCPU i on its i-th CPU of its own; a shared instance's
    /// vCPUs on what the user pinned, else over the shared set (the host's placeable CPUs less every
    /// dedicated one).
    func cpuPlan(_ rec: Store.InstanceRecord) -> [String?] {
        if rec.instance.cpuPolicy == "dedicated", let own = rec.instance.dedicatedCPUs {
            let cpus = own.split(separator: ",").map(String.init)
            if cpus.count == rec.instance.vcpus { return cpus.map { Optional($0) } }
        }
        guard let cap = try? capacity(), !cap.dedicatedCPUs.isEmpty, !cap.sharedCPUs.isEmpty else { return rec.affinity }
        let shared = cap.sharedCPUs.map(String.init).joined(separator: ",")
        return (0..<rec.instance.vcpus).map { i in i < rec.affinity.count && rec.affinity[i] != nil ? rec.affinity[i] : shared }
    }

    /// The shared set changed (a dedicated instance started or stopped): running shared instances' vCPUs
    /// that the user did not pin move onto the new shared set.
    func rebalanceShared() {
        guard let cap = try? capacity() else { return }
        let target: String? = cap.dedicatedCPUs.isEmpty ? nil : cap.sharedCPUs.map(String.init).joined(separator: ",")
        var f = Store.Filter()
        f.states = [.running]
        for rec in ((try? store.instances(f, limit: 1_000_000).0) ?? []) where rec.instance.cpuPolicy != "dedicated" {
            let vmm = launcher.handle(workDir: URL(fileURLWithPath: rec.workDir))
            for i in 0..<rec.instance.vcpus where !(i < rec.affinity.count && rec.affinity[i] != nil) {
                _ = try? vmm.pin(vcpu: i, cpus: target)
            }
        }
    }

    /// Stop: the ACPI power button first; a guest that has not powered off after `stopTimeout` (or a
    /// VMM that did not take the button) is stopped by force: SIGTERM (kumo-vmm tears the VM down),
    /// then SIGKILL if kumo-vmm is still there 5 s later. `force` skips straight to SIGKILL.
    func requestStop(_ id: String, force: Bool) {
        guard let p = processes.withLock({ $0[id] }) else {
            // No VMM (still pending, or its process is gone): stopped at once.
            _ = try? store.transition(id, to: .stopped, reason: "stopped before its VMM started", from: [.stopping], pid: .some(nil))
            return
        }
        if force {
            stopNotes.withLock { $0[id] = "forced" }
            launcher.signal(p, SIGKILL)
            return
        }
        supervisor.async { [self] in
            guard let workDir = (try? store.instance(id)).map({ URL(fileURLWithPath: $0.workDir) }) else { return }
            let seconds = stopTimeout.seconds
            @Sendable func forceNow(_ note: String) {
                guard processes.withLock({ $0[id] }) == p, launcher.exitStatus(p) == nil else { return }
                stopNotes.withLock { $0[id] = note }
                launcher.signal(p, SIGTERM)
                supervisor.asyncAfter(deadline: .now() + 5) { [self] in
                    if processes.withLock({ $0[id] }) == p, launcher.exitStatus(p) == nil { launcher.signal(p, SIGKILL) }
                }
            }
            if (try? launcher.handle(workDir: workDir).pressPowerButton()) != nil {
                stopNotes.withLock { $0[id] = "ACPI power button pressed" }
                supervisor.asyncAfter(deadline: .now() + seconds) {
                    forceNow("the guest did not power off within \(Self.format(seconds)) of the ACPI power button; stopped by force")
                }
            } else {
                forceNow("the VMM did not take the ACPI power button; stopped by force")
            }
        }
    }

    static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? "\(Int(seconds)) s" : String(format: "%.1f s", seconds)
    }

    /// One pass of the monitor: every live VMM whose process is gone moves its instance on.
    public func reap() {
        let live = processes.withLock { $0 }
        for (id, p) in live {
            guard let fate = launcher.exitStatus(p) else { continue }
            processes.withLock { if $0[id] == p { $0.removeValue(forKey: id) } }
            launcher.release(instanceID: id)
            ksm.remove(id)
            if (try? store.instance(id))?.instance.cpuPolicy == "dedicated" { supervisor.async { [self] in rebalanceShared() } }
            let rec = try? store.instance(id)
            let state = rec?.instance.state
            let tail = Self.vmmLogTail(rec?.workDir)
            let why: String
            var clean = false   // the guest powered off (or kumo-vmm was stopped): not an error
            var rebooted = false
            switch fate {
            case .exited(0):
                clean = true
                why = "kumo-vmm \(p.pid) exited: guest powered off or stopped"
            case .exited(vmmExitGuestRebooted):
                rebooted = true
                why = "kumo-vmm \(p.pid) exited: the guest rebooted"
            case let .exited(c): why = "kumo-vmm \(p.pid) exited with status \(c) (see vmm.log in the instance's work directory)"
            case let .killed(s): why = "kumo-vmm \(p.pid) killed by signal \(s)"
            case .vanished:
                // Not kumod's child (adopted after a restart): its log says how it ended, if it does.
                clean = tail.contains("kumo-vmm: guest powered off")
                rebooted = Reboots.logSaysRebooted(tail)
                why = clean
                    ? "kumo-vmm \(p.pid) exited: guest powered off (from its log; it outlived a kumod restart)"
                    : rebooted ? "kumo-vmm \(p.pid) exited: the guest rebooted (from its log; it outlived a kumod restart)"
                    : "kumo-vmm \(p.pid) is gone (exit status unknown: it outlived a kumod restart)"
            }
            if rebooted && (state == .running || state == .starting) {
                guestRebooted(id, vmm: p.pid, logTail: tail)
                continue
            }
            switch state {
            case .stopping?:
                let note = stopNotes.withLock { $0.removeValue(forKey: id) }
                _ = try? store.transition(id, to: .stopped, reason: "StopInstances: " + (note.map { $0 + "; " } ?? "") + why, pid: .some(nil))
            case .running?, .starting?:
                _ = try? store.transition(id, to: clean ? .stopped : .error, reason: why, pid: .some(nil))
            default: break
            }
        }
    }

    /// What the last kumo-vmm run wrote to the instance's vmm.log (appended across runs; each run
    /// begins with its "kumo-vmm: N vCPU, …" banner), from the last 16 KiB: how it ended, when it says.
    static func vmmLogTail(_ workDir: String?) -> String {
        guard let workDir, let h = FileHandle(forReadingAtPath: workDir + "/vmm.log") else { return "" }
        defer { try? h.close() }
        let end = (try? h.seekToEnd()) ?? 0
        try? h.seek(toOffset: end > 16384 ? end - 16384 : 0)
        return lastRun(String(decoding: (try? h.readToEnd()) ?? Data(), as: UTF8.self))
    }

    /// The lines of `log` from the last kumo-vmm start banner on (all of it when none is seen).
    static func lastRun(_ log: String) -> String {
        let lines = log.split(separator: "\n", omittingEmptySubsequences: false)
        guard let start = lines.lastIndex(where: { $0.wholeMatch(of: #/kumo-vmm: \d+ vCPU, .*/#) != nil }) else { return log }
        return lines[start...].joined(separator: "\n")
    }

    /// After a (re)start of kumod: adopt the VMMs that still run, settle the instances whose VMM is
    /// gone, and launch the ones that were pending. Returns the instances adopted.
    @discardableResult
    public func recover() throws(APIError) -> [String] {
        var f = Store.Filter()
        f.states = [.pending, .starting, .running, .stopping]
        let recs = try wrap { try store.instances(f, limit: 1_000_000).0 }
        var adopted: [String] = []
        for rec in recs {
            let id = rec.instance.id
            if let pid = rec.instance.pid, let ticks = rec.pidStartTicks {
                let p = VMMProcess(pid: Int32(pid), startTicks: ticks)
                if launcher.exitStatus(p) == nil {
                    processes.withLock { $0[id] = p }
                    adopted.append(id)
                    // Its KSM standing is what its VMM was started with.
                    if (try? VMConfig.load(jsonFile: URL(fileURLWithPath: rec.workDir).appendingPathComponent("config.json").path))?.memoryDedup == true {
                        _ = ksm.admit(id, tenant: rec.tenantID)
                    }
                    if rec.instance.state == .stopping { requestStop(id, force: false) }
                    continue
                }
                let to: InstanceState = rec.instance.state == .stopping ? .stopped : .error
                _ = try? store.transition(id, to: to, reason: "kumo-vmm \(pid) exited while kumod was down", pid: .some(nil))
            } else if rec.instance.state == .stopping {
                _ = try? store.transition(id, to: .stopped, reason: "stopped while kumod was down", pid: .some(nil))
            } else {
                startLaunch(id)
            }
        }
        return adopted
    }

    /// Starts the monitor (every `interval`).
    public func startMonitor(interval: Duration = .milliseconds(250)) {
        let (s, atto) = interval.components
        let seconds = max(Double(s) + Double(atto) / 1e18, 0.001)
        let generation = monitorGeneration.add(1, ordering: .sequentiallyConsistent).newValue
        let tuneEvery = max(1, Int(5 / seconds))
        let ticks = Atomic<Int>(0)
        @Sendable func tick(_ service: Service?) {
            guard let service, service.monitorGeneration.load(ordering: .sequentiallyConsistent) == generation else { return }
            service.reap()
            if ticks.add(1, ordering: .relaxed).newValue % tuneEvery == 0 { service.ksm.tune() }
            service.supervisor.asyncAfter(deadline: .now() + seconds) { [weak service] in tick(service) }
        }
        supervisor.async { [weak self] in tick(self) }
        startBalloonLoop()
    }

    public func stopMonitor() { monitorGeneration.add(1, ordering: .sequentiallyConsistent) }
}

extension Duration {
    var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}

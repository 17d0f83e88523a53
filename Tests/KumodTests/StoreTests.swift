import Foundation
import GRDB
import Testing
@testable import Kumod
import KumoAPI

/// A fresh data directory per test.
func tempDir(_ tag: String) throws -> URL {
    let d = FileManager.default.temporaryDirectory.appendingPathComponent("kumod-\(tag)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
    return d
}

@Suite struct StoreTests {
    /// A store made before images had tenants (v10) keeps its images, public, and the instances that use them.
    @Test func imagesOfAnOlderStoreBecomePublic() throws {
        let dir = try tempDir("store")
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("k.sqlite").path
        do {
            var config = Configuration()
            config.foreignKeysEnabled = true
            let old = try DatabasePool(path: path, configuration: config)
            try Store.migrator.migrate(old, upTo: "v10: port forwards")
            try old.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO tenants (id, name, created_at) VALUES ('t-1', 'alice', 'then');
                        INSERT INTO images (id, name, kernel, initrd, root_disk, cmdline, kernel_format, created_at)
                            VALUES ('img-1', 'busybox', '/k', NULL, '/root.ext4', 'console=ttyS0', 'elf', 'then');
                        INSERT INTO reservations (id, tenant_id, request, created_at) VALUES ('r-1', 't-1', '{}', 'then');
                        INSERT INTO instances (id, name, tenant_id, reservation_id, type, vcpus, memory_mib, image_id, state, state_reason,
                                               created_at, updated_at, work_dir)
                            VALUES ('i-1', 'web', 't-1', 'r-1', 'kumo.small', 1, 2048, 'img-1', 'stopped', 'x', 'then', 'then', '/w');
                        """)
            }
        }
        let s = try Store(path: path)
        let images = try s.images(visibleTo: "t-1")
        #expect(images.map(\.name) == ["busybox"] && images[0].tenant == nil && images[0].diskFormat == "raw" && images[0].source == "registered")
        #expect(try s.instance("i-1")?.imageID == "img-1" && s.instance("i-1")?.instance.image == "busybox")
        if case .inUse(1) = try s.deleteImage(id: "img-1") {} else { Issue.record("the instance still uses it") }
        // A tenant's image may share a public image's name; the tenant's own is found first.
        #expect(
            try s.addImage(
                Image(id: "img-2", name: "busybox", kernel: "/k", initrd: nil, rootDisk: nil, cmdline: "", kernelFormat: "elf", createdAt: "now"),
                tenantID: "t-1"))
        #expect(
            try !s.addImage(Image(id: "img-3", name: "busybox", kernel: "/k", initrd: nil, rootDisk: nil, cmdline: "", kernelFormat: "elf", createdAt: "now")))
        #expect(try s.image("busybox", visibleTo: "t-1")?.id == "img-2" && s.image("busybox", visibleTo: "t-9")?.id == "img-1")
        #expect(try s.image("img-2", visibleTo: "t-9") == nil && s.image("busybox")?.id == "img-1")
    }

    @Test func schemaIsMigratedInWALModeWithBuiltinTypes() throws {
        let dir = try tempDir("store")
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("k.sqlite").path
        let s = try Store(path: path)
        #expect(try s.journalMode() == "wal")
        #expect(
            try s.appliedMigrations() == [
                "v1: tenants, tokens, types, images, instances", "v2: vCPU pinning", "v3: CPU caps and shares per instance type",
                "v4: memory dedup per instance", "v5: CPU policy (shared or dedicated)", "v6: memory shares per instance type", "v7: networks and NICs",
                "v8: NIC bandwidth per instance type", "v9: security groups", "v10: port forwards", "v11: key pairs",
                "v12: private images (imported, from instances), root disk formats", "v13: run-command invocations",
                "v14: alarm rules and their history", "v15: instance displays", "v16: load balancers",
            ])
        #expect(try s.types().map(\.name) == ["kumo.small", "kumo.medium", "kumo.large"])
        #expect(try s.type("kumo.medium") == InstanceType(name: "kumo.medium", vcpus: 2, memoryMiB: 4096, builtin: true))
        // Reopening runs no migration twice and keeps the data.
        try s.addType(InstanceType(name: "custom.tiny", vcpus: 1, memoryMiB: 256))
        let again = try Store(path: path)
        #expect(try again.types().count == 4)
    }

    @Test func tokensAreHashedAtRestAndBoundToATenant() throws {
        let dir = try tempDir("tokens")
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("k.sqlite").path
        let s = try Store(path: path)
        let t = try s.issueToken(tenant: "acme", admin: false)
        #expect(t.hasPrefix("kumo_") && t.count == 37)
        let p = try #require(try s.principal(token: t))
        #expect(p.tenantName == "acme" && !p.admin)
        #expect(try s.principal(token: t + "x") == nil)
        // The clear token is nowhere in the database file (WAL included).
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path)
        for f in files {
            let data = try Data(contentsOf: dir.appendingPathComponent(f))
            #expect(data.range(of: Data(t.utf8)) == nil, "token in \(f)")
        }
        #expect(try s.principal(token: "") == nil)
    }

    @Test func transitionsAreGuardedAndRecorded() throws {
        let dir = try tempDir("transitions")
        defer { try? FileManager.default.removeItem(at: dir) }
        let s = try Store(path: dir.appendingPathComponent("k.sqlite").path)
        let tenant = try s.ensureTenant("acme")
        try s.addImage(Image(id: "img-1", name: "img", kernel: "/k", initrd: nil, rootDisk: nil, cmdline: "", kernelFormat: "elf", createdAt: Store.now()))
        let small = try #require(try s.type("kumo.small"))
        let n = Store.NewInstance(id: "i-1", name: "web", type: small, imageID: "img-1", userData: Data([1, 2]), workDir: "/tmp/x")
        guard case .created = try s.reserve(tenantID: tenant, clientToken: "tok", request: "{}", instances: [n], check: { _ in [] }) else {
            Issue.record("not created"); return
        }
        #expect(try s.transition("i-1", to: .running, reason: "r", from: [.stopped]) == false)
        #expect(try s.transition("i-1", to: .starting, reason: "launching", from: [.pending]))
        #expect(try s.transition("i-1", to: .running, reason: "up", from: [.starting], pid: .some((42, 7))))
        let rec = try #require(try s.instance("i-1"))
        #expect(rec.instance.state == .running && rec.instance.pid == 42 && rec.pidStartTicks == 7)
        #expect(rec.instance.launchedAt != nil)
        #expect(rec.userData == Data([1, 2]))
        #expect(rec.instance.history?.map(\.state) == [.pending, .starting, .running])
        // The same client token replays the reservation.
        guard case let .replay(_, ids, same) = try s.reserve(tenantID: tenant, clientToken: "tok", request: "{}", instances: [], check: { _ in [] }) else {
            Issue.record("no replay"); return
        }
        #expect(ids == ["i-1"] && same)
    }
}

@Suite struct PlacementTests {
    let host = HostResources(logicalCPUs: 2, memoryMiB: 24 * 1024)
    let small = InstanceType.builtins[0], medium = InstanceType.builtins[1], large = InstanceType.builtins[2]

    @Test func capacityFollowsNovasFormula() {
        var p = PlacementPolicy()
        let c = Placement.capacity(host: host, policy: p, holders: [])
        #expect(c.vcpusTotal == 8)  // 2 × 4.0
        #expect(c.memoryMiBTotal == 24 * 1024 - 512)  // (24576 − 512) × 1.0
        p.reservedCPUs = 1; p.cpuAllocationRatio = 2.5; p.ramAllocationRatio = 1.5; p.reservedHostMemoryMiB = 1024
        let d = Placement.capacity(host: host, policy: p, holders: [])
        #expect(d.vcpusTotal == 2)  // (2 − 1) × 2.5, rounded down
        #expect(d.memoryMiBTotal == Int(Double(24 * 1024 - 1024) * 1.5))
    }

    /// Dedicated instances take whole host CPUs from the top of the shared set, never overcommitted;
    /// the shared capacity shrinks with them; the shared instances keep at least one CPU.
    @Test func dedicatedCPUsComeOutOfTheSharedSet() throws {
        let four = HostResources(logicalCPUs: 4, memoryMiB: 64 * 1024)
        var p = PlacementPolicy()
        p.reservedCPUs = 1
        let c0 = Placement.capacity(host: four, policy: p, holders: [])
        #expect(c0.placeableCPUs == [1, 2, 3] && c0.sharedCPUs == [1, 2, 3] && c0.vcpusTotal == 12)
        let two = try Placement.dedicate(type: medium, count: 1, host: four, policy: p, holders: [])
        #expect(two == [[2, 3]])
        let d = Placement.Holder(id: "i-d", type: "kumo.medium", vcpus: 2, memoryMiB: 4096, tenantID: "t", dedicatedCPUs: [2, 3])
        let c1 = Placement.capacity(host: four, policy: p, holders: [d])
        #expect(c1.dedicatedCPUs == [2, 3] && c1.sharedCPUs == [1] && c1.vcpusTotal == 4 && c1.vcpusUsed == 0)
        // One CPU left: a shared instance fits on it (overcommitted 4:1), a dedicated one may take it only
        // while nothing shared runs.
        #expect(try Placement.dedicate(type: small, count: 1, host: four, policy: p, holders: [d]) == [[1]])
        let s = Placement.Holder(id: "i-s", type: "kumo.small", vcpus: 1, memoryMiB: 2048, tenantID: "t")
        #expect(throws: APIError.self) { try Placement.dedicate(type: small, count: 1, host: four, policy: p, holders: [d, s]) }
        do { _ = try Placement.dedicate(type: small, count: 1, host: four, policy: p, holders: [d, s]) } catch {
            #expect(error.message.contains("1 must stay shared for the 1 shared vCPU(s) running"), "\(error.message)")
        }
        // 9 shared vCPUs on 3 shared CPUs (12): dedicating one would leave 2 × 4 = 8, refused.
        let many = (0..<9).map { Placement.Holder(id: "i-\($0)", type: "kumo.small", vcpus: 1, memoryMiB: 64, tenantID: "t") }
        #expect(throws: APIError.self) { try Placement.dedicate(type: small, count: 1, host: four, policy: p, holders: many) }
        // A dedicated request is not counted against the shared vCPUs.
        try Placement.check(type: large, count: 1, host: four, policy: p, holders: [], tenantID: "t", admin: false, dedicated: true)
    }

    /// "How many more fit": by allocation, and counting measured KSM and balloon savings as memory.
    @Test func fitsPerTypeWithAndWithoutSavings() {
        let h = [Placement.Holder(id: "a", type: "kumo.medium", vcpus: 2, memoryMiB: 4096, tenantID: "t")]
        var p = PlacementPolicy()
        p.reservedHostMemoryMiB = 512
        let c = Placement.withFits(
            Placement.capacity(host: host, policy: p, holders: h), types: InstanceType.builtins,
            ksmSavedMiB: 3000, balloonReclaimedMiB: 1100)
        // 8 shared vCPUs, 2 used → 6 free; 24064 MiB, 4096 used → 19968 free (+4100 with savings).
        #expect(c.vcpuOvercommit == 1.0)
        #expect(c.fits == ["kumo.small": 6, "kumo.medium": 3, "kumo.large": 1])
        #expect(c.fitsWithSavings == ["kumo.small": 6, "kumo.medium": 3, "kumo.large": 1])  // vCPUs bind first
        var roomy = PlacementPolicy(); roomy.cpuAllocationRatio = 16
        let r = Placement.withFits(
            Placement.capacity(host: host, policy: roomy, holders: h), types: InstanceType.builtins,
            ksmSavedMiB: 3000, balloonReclaimedMiB: 1100)
        #expect(r.fits["kumo.small"] == 9 && r.fitsWithSavings["kumo.small"] == 11)  // 19968 / 2048, (19968 + 4100) / 2048
        #expect(r.fits["kumo.large"] == 2 && r.fitsWithSavings["kumo.large"] == 2)
    }

    /// Found by schemathesis: a huge ratio overflowed Int and crashed kumod on every later request.
    @Test func absurdPoliciesNeitherCrashNorStick() throws {
        var p = PlacementPolicy()
        p.cpuAllocationRatio = 1e308; p.ramAllocationRatio = .infinity; p.reservedHostMemoryMiB = Int.min / 2
        let c = Placement.capacity(host: host, policy: p, holders: [])
        #expect(c.vcpusTotal == 1 << 40 && c.memoryMiBTotal == 1 << 40)
        p.cpuAllocationRatio = -1
        #expect(Placement.capacity(host: host, policy: p, holders: []).vcpusTotal == 0)
    }

    @Test func anExactFitPassesAndOneMoreIsRefusedWithTheReason() throws {
        let p = PlacementPolicy()
        // 8 vCPUs: two kumo.large take all of them (16 GiB of 23.5 GiB).
        let two = [Placement.Holder(id: "i-a", type: "kumo.large", vcpus: 4, memoryMiB: 8192, tenantID: "t1")]
        try Placement.check(type: large, count: 1, host: host, policy: p, holders: two, tenantID: "t1", admin: false)
        let full = two + [Placement.Holder(id: "i-b", type: "kumo.large", vcpus: 4, memoryMiB: 8192, tenantID: "t2")]
        do {
            try Placement.check(type: small, count: 1, host: host, policy: p, holders: full, tenantID: "t1", admin: false)
            Issue.record("placed beyond capacity")
        } catch {
            #expect(error.code == "insufficient_capacity")
            #expect(error.message.contains("vCPUs: 1 × kumo.small need 1, 0 free, short by 1"))
            #expect(!error.message.contains("memory:"))
            #expect(error.message.contains("i-a (kumo.large"))  // the tenant's own instance, named
            #expect(!error.message.contains("i-b"))  // another tenant's, only counted
            #expect(error.message.contains("1 instance(s) of other tenants (4 vCPU, 8192 MiB)"))
        }
    }

    @Test func memoryShortfallSaysByHowMuch() throws {
        var p = PlacementPolicy()
        p.cpuAllocationRatio = 16
        do {
            try Placement.check(type: large, count: 3, host: host, policy: p, holders: [], tenantID: "t1", admin: true)
            Issue.record("placed 24 GiB on a 23.5 GiB budget")
        } catch {
            #expect(error.message.contains("memory: 3 × kumo.large need 24576 MiB, 24064 MiB free, short by 512 MiB"))
            #expect(error.message.contains("nothing else runs here"))
        }
        try Placement.check(type: medium, count: 5, host: host, policy: p, holders: [], tenantID: "t1", admin: true)
    }
}

extension StoreTests {
    /// An instance keeps its newest invocations only, never one that has not finished.
    @Test func invocationHistoryIsBounded() throws {
        let dir = try tempDir("store")
        defer { try? FileManager.default.removeItem(at: dir) }
        let s = try Store(path: dir.appendingPathComponent("k.sqlite").path)
        try s.read { _ in }
        let t = try #require(try s.principal(token: try s.issueToken(tenant: "alice", admin: false)))
        try s.addImage(Image(id: "img-1", name: "tiny", kernel: "/k", initrd: nil, rootDisk: nil, cmdline: "", kernelFormat: "elf", createdAt: "now"))
        let type = try #require(try s.type("kumo.small"))
        _ = try s.reserve(
            tenantID: t.tenantID, clientToken: nil, request: "{}",
            instances: [Store.NewInstance(id: "i-1", name: "web", type: type, imageID: "img-1", userData: nil, workDir: "/w")]
        ) { _ in [] }
        func add(_ n: Int, state: InvocationState) throws {
            var i = Invocation(
                id: "inv-\(n)", instance: "i-1", kind: "command", timeoutSeconds: 1, state: state,
                createdAt: Store.timestamp(Date(timeIntervalSince1970: Double(n))))
            i.command = "true"
            try s.addInvocation(i)
        }
        try add(0, state: .running)
        for n in 1...150 { try add(n, state: .success) }
        let kept = try s.invocations(instance: "i-1", limit: 1000)
        #expect(kept.count == Store.keptInvocations + 1 && kept.first?.id == "inv-150", "\(kept.count)")
        #expect(kept.contains { $0.id == "inv-0" }, "the unfinished one stays")
        #expect(!kept.contains { $0.id == "inv-50" })
    }
}

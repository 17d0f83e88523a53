import Foundation
import Testing
import TestSupport
import Hummingbird
import HummingbirdTesting
import KumoAPI
@testable import Kumod

/// Tenants as a hostile one and a careless admin would try them (issue 14): alice and bob are tenants,
/// the VMMs are stand-in processes reached through one FakeVMM (so statistics, translation and
/// pinning answer without /dev/kvm).
@Suite(.ownThreads) struct TenantIsolationTests {
    static func fixture() throws -> (Fixture, FakeHandleLauncher) {
        nonisolated(unsafe) var fake: FakeHandleLauncher! = nil
        let f = try Fixture(
            wrap: { real in
                let l = FakeHandleLauncher(real); fake = l; return l
            }, networks: true)
        return (f, fake)
    }

    static func image(_ c: some TestClientProtocol, _ f: Fixture) async throws {
        try await c.execute(uri: "/v1/images", method: .post, headers: auth(f.admin), body: body(#"{"name": "tiny", "kernel": "\#(f.kernel.path)"}"#)) {
            #expect($0.status == .created)
        }
    }

    static func run(_ c: some TestClientProtocol, _ token: String, _ extra: String = "") async throws -> String {
        try await c.execute(uri: "/v1/instances", method: .post, headers: auth(token), body: body(#"{"type": "kumo.small", "image": "tiny"\#(extra)}"#)) {
            #expect($0.status == .accepted, "\(String(buffer: $0.body))")
            return try decode(RunInstancesResponse.self, $0.body).instances[0].id
        }
    }

    /// Point 1: host-wide views show a tenant its own instances and aggregates only.
    @Test func hostRoutesShowATenantOnlyItsOwn() async throws {
        let (f, _) = try Self.fixture()
        try await f.app.test(.router) { c in
            try await Self.image(c, f)
            // Alice's first, then Bob's: launches run side by side, so Bob's waits for hers to be running.
            let a = try await Self.run(c, f.alice, #", "memory_dedup": true"#)
            _ = try await waitState(c, a, f.alice, .running)
            let b = try await Self.run(c, f.bob, #", "memory_dedup": true"#)
            _ = try await waitState(c, b, f.bob, .running)
            f.service.balloonPass(meminfo: nil)
            // KSM: alice holds the domain (she started first); bob's dedup is suspended.
            try await c.execute(uri: "/v1/host/ksm", method: .get, headers: auth(f.admin)) { r throws in
                let k = try decode(HostKSM.self, r.body)
                #expect(k.dedupInstances == [a] && k.domainTenant == "alice", "\(k)")
            }
            try await c.execute(uri: "/v1/host/ksm", method: .get, headers: auth(f.alice)) { r throws in
                let k = try decode(HostKSM.self, r.body)
                #expect(k.dedupInstances == [a] && k.domainTenant == "alice", "\(k)")
            }
            try await c.execute(uri: "/v1/host/ksm", method: .get, headers: auth(f.bob)) { r throws in
                let k = try decode(HostKSM.self, r.body)
                #expect(k.dedupInstances.isEmpty && k.domainTenant == nil, "\(k)")
                let text = String(buffer: r.body)
                #expect(!text.contains(a) && !text.contains("alice") && !text.contains(#/t-[0-9a-f]{17}/#), "\(text)")
                // His own suspension is his to read, without naming whose domain it is.
                #expect(k.decisions.contains { $0.contains(b) && $0.contains("another tenant") }, "\(k.decisions)")
            }
            // Balloons: each tenant its own running instances; the admin all of them.
            try await c.execute(uri: "/v1/host/balloon", method: .get, headers: auth(f.admin)) { r throws in
                #expect(Set(try decode(HostBalloons.self, r.body).instances.map(\.instance)) == [a, b])
            }
            for (token, mine, theirs) in [(f.alice, a, b), (f.bob, b, a)] {
                try await c.execute(uri: "/v1/host/balloon", method: .get, headers: auth(token)) { r throws in
                    #expect(try decode(HostBalloons.self, r.body).instances.map(\.instance) == [mine])
                    #expect(!String(buffer: r.body).contains(theirs))
                }
            }
        }
    }

    /// Point 1: host pids, thread ids and host addresses are the admin's.
    @Test func hostDetailsAreForAdminsOnly() async throws {
        let (f, _) = try Self.fixture()
        try await f.app.test(.router) { c in
            try await Self.image(c, f)
            let a = try await Self.run(c, f.alice)
            let mine = try await waitState(c, a, f.alice, .running)
            #expect(mine.pid == nil && !mine.stateReason.contains(#/[0-9]{2,}/#), "\(mine)")
            #expect(mine.history?.allSatisfy { !$0.reason.contains(#/kumo-vmm [0-9]/#) } == true, "\(mine.history ?? [])")
            let seen = try await waitState(c, a, f.admin, .running)
            #expect(seen.pid != nil && seen.stateReason.contains(#/kumo-vmm [0-9]+/#), "\(seen)")
            try await c.execute(uri: "/v1/instances", method: .get, headers: auth(f.alice)) { r throws in
                #expect(try decode(InstanceList.self, r.body).instances.allSatisfy { $0.pid == nil })
            }
            try await c.execute(uri: "/v1/instances/\(a)/cpus", method: .get, headers: auth(f.alice)) { r throws in
                #expect(try decode(InstanceCPUs.self, r.body).vcpus.allSatisfy { $0.tid == nil })
            }
            try await c.execute(uri: "/v1/instances/\(a)/cpus", method: .get, headers: auth(f.admin)) { r throws in
                #expect(try decode(InstanceCPUs.self, r.body).vcpus.first?.tid == 4242)
            }
            try await c.execute(uri: "/v1/instances/\(a)/translate?address=0x1000", method: .get, headers: auth(f.alice)) { r throws in
                let t = try decode(AddressTranslation.self, r.body)
                #expect(t.gpa == "0x1000" && t.hpa == nil && t.hva == nil && t.hostPage == nil, "\(t)")
            }
            try await c.execute(uri: "/v1/instances/\(a)", method: .delete, headers: auth(f.alice)) { r throws in
                #expect(try decode(Instance.self, r.body).pid == nil)
            }
        }
    }

    /// Point 2: a shared instance cannot be pinned onto another instance's dedicated CPU (or a reserved one).
    @Test func pinningStaysInTheSharedSet() async throws {
        let (f, fake) = try Self.fixture()
        try await f.app.test(.router) { c in
            try await Self.image(c, f)
            let b = try await Self.run(c, f.bob, #", "cpu_policy": "dedicated""#)
            let bob = try await waitState(c, b, f.admin, .running)
            let theirs = try #require(bob.dedicatedCPUs)
            #expect(theirs == "1", "the host has CPUs 0-1; dedicated CPUs come from the top")
            let a = try await Self.run(c, f.alice)
            _ = try await waitState(c, a, f.alice, .running)
            fake.vmm.asked.withLock { $0.removeAll() }
            for (cpus, why) in [(theirs, "dedicated to another instance"), ("0-1", "dedicated to another instance")] {
                try await c.execute(
                    uri: "/v1/instances/\(a)/cpus", method: .put, headers: auth(f.alice), body: body(#"{"vcpus": [{"vcpu": 0, "cpus": "\#(cpus)"}]}"#)
                ) { r throws in
                    #expect(r.status == .badRequest)
                    let e = try decode(ErrorBody.self, r.body).error
                    #expect(e.message.contains(why) && e.message.contains("shared set 0"), "\(e)")
                }
            }
            #expect(fake.vmm.asked.withLock { $0 }.isEmpty, "nothing reached the VMM")
            try await c.execute(uri: "/v1/instances/\(a)/cpus", method: .get, headers: auth(f.alice)) { r throws in
                #expect(try decode(InstanceCPUs.self, r.body).vcpus.first?.pinned == nil, "nothing stored")
            }
            try await c.execute(
                uri: "/v1/instances/\(a)/cpus", method: .put, headers: auth(f.alice), body: body(#"{"vcpus": [{"vcpu": 0, "cpus": "0"}]}"#)
            ) { #expect($0.status == .ok) }
            // Reserved for the host: refused too, with that reason.
            try await c.execute(
                uri: "/v1/host/placement", method: .put, headers: auth(f.admin),
                body: body(#"{"cpu_allocation_ratio": 4, "ram_allocation_ratio": 1, "reserved_host_memory_mib": 512, "reserved_cpus": 1}"#)
            ) { #expect($0.status == .ok) }
            try await c.execute(
                uri: "/v1/instances/\(a)/cpus", method: .put, headers: auth(f.alice), body: body(#"{"vcpus": [{"vcpu": 0, "cpus": "0"}]}"#)
            ) { r throws in
                #expect(r.status == .badRequest)
                #expect(try decode(ErrorBody.self, r.body).error.message.contains("reserved for the host"))
            }
        }
        // A pinning made before a dedicated instance took the CPU yields to it.
        #expect(Service.within("1", shared: [0]) == "0" && Service.within("0-1", shared: [0]) == "0")
        #expect(Service.within(nil, shared: [0, 2]) == "0,2" && Service.within("2", shared: [0, 2]) == "2")
    }

    /// Point 7: what a name, a token, a body or a flag may hold, refused with the reason and nothing made.
    @Test func inputThatIsRefused() async throws {
        let (f, _) = try Self.fixture()
        try await f.app.test(.router) { c in
            try await Self.image(c, f)
            let bomb = "e" + String(repeating: "\u{301}", count: 300)  // one grapheme cluster, 601 bytes
            #expect(bomb.count == 1)
            let bad: [(String, String)] = [
                (#"{"type": "kumo.small", "image": "tiny", "name": "web\u001b[2J"}"#, "U+001B"),
                (#"{"type": "kumo.small", "image": "tiny", "name": "evil\u202Etxt.exe"}"#, "U+202E"),
                (#"{"type": "kumo.small", "image": "tiny", "name": "nul\u0000cut"}"#, "U+0000"),
                (#"{"type": "kumo.small", "image": "tiny", "name": "two\nlines"}"#, "U+000A"),
                (#"{"type": "kumo.small", "image": "tiny", "name": "\#(bomb)"}"#, "601 bytes"),
                (#"{"type": "kumo.small", "image": "tiny", "name": "\#(String(repeating: "é", count: 65))"}"#, "130 bytes"),
                (#"{"type": "kumo.small", "image": "tiny", "name": ""}"#, "empty"),
                (#"{"type": "kumo.small", "image": "tiny", "client_token": "tok\u0000en"}"#, "client_token"),
                (#"{"type": "kumo.small", "image": "tiny", "client_token": "has space"}"#, "client_token"),
                (#"{"type": "kumo.small", "image": "tiny", "cpu-policy": "dedicated"}"#, #"unknown field "cpu-policy""#),
                (#"{"type": "kumo.small", "image": "tiny", "type": "kumo.large"}"#, #"duplicate key "type""#),
            ]
            for (b, why) in bad {
                try await c.execute(uri: "/v1/instances", method: .post, headers: auth(f.alice), body: body(b)) { r throws in
                    #expect(r.status == .badRequest, "\(b)")
                    let e = try decode(ErrorBody.self, r.body).error
                    #expect(e.message.contains(why), "\(b): \(e.message)")
                }
            }
            // Unknown fields deeper down, and in the admin's requests.
            try await c.execute(
                uri: "/v1/instances/i-0/cpus", method: .put, headers: auth(f.alice), body: body(#"{"vcpus": [{"vcpu": 0, "cpu": "0"}]}"#)
            ) { #expect($0.status == .badRequest || $0.status == .notFound) }
            try await c.execute(
                uri: "/v1/instance-types", method: .post, headers: auth(f.admin),
                body: body(#"{"name": "x.1", "vcpus": 1, "memory_mib": 128, "cpu_cap": 50}"#)
            ) { r throws in
                #expect(r.status == .badRequest)
                #expect(try decode(ErrorBody.self, r.body).error.message.contains(#"unknown field "cpu_cap""#))
            }
            for name in ["x\u{0}", "x\n", "X.1", "é"] {
                let json = String(decoding: try JSONEncoder().encode(["name": name]), as: UTF8.self).dropLast() + #", "vcpus": 1, "memory_mib": 128}"#
                try await c.execute(uri: "/v1/instance-types", method: .post, headers: auth(f.admin), body: body(String(json))) { r throws in
                    #expect(r.status == .badRequest, "\(json)")
                }
            }
            try await c.execute(
                uri: "/v1/images", method: .post, headers: auth(f.admin),
                body: body(#"{"name": "img2", "kernel": "\#(f.kernel.path)", "cmdline": "console=ttyS0\u0000 init=/bin/sh"}"#)
            ) { r throws in
                #expect(r.status == .badRequest)
                #expect(try decode(ErrorBody.self, r.body).error.message.contains("cmdline"))
            }
            // A tenant's malformed admin request: forbidden first, whatever its body.
            for (m, u) in [
                (HTTPRequest.Method.post, "/v1/instance-types"), (.post, "/v1/images"), (.put, "/v1/host/placement"), (.put, "/v1/host/balloon-policy"),
            ] {
                try await c.execute(uri: u, method: m, headers: auth(f.bob), body: body("{nope")) { #expect($0.status == .forbidden, "\(m) \(u)") }
            }
            // Nothing of the above was made.
            try await c.execute(uri: "/v1/instances", method: .get, headers: auth(f.admin)) { r throws in
                #expect(try decode(InstanceList.self, r.body).instances.isEmpty)
            }
            try await c.execute(uri: "/v1/instance-types", method: .get, headers: auth(f.admin)) { r throws in
                #expect(try decode([String: [InstanceType]].self, r.body)["instance_types"]?.count == 3)
            }
            // Flags: true/false/1/0, anything else refused rather than taken as false.
            let a = try await Self.run(c, f.alice)
            _ = try await waitState(c, a, f.alice, .running)
            try await c.execute(uri: "/v1/instances/\(a)/stop?force=maybe", method: .post, headers: auth(f.alice)) { r throws in
                #expect(r.status == .badRequest)
                #expect(try decode(ErrorBody.self, r.body).error.message.contains("force"))
            }
            #expect(try await waitState(c, a, f.alice, .running).state == .running, "the refused stop did nothing")
            try await c.execute(uri: "/v1/instances/\(a)/stop?force=true", method: .post, headers: auth(f.alice)) { #expect($0.status == .accepted) }
        }
        // What the CLI prints: unsafe characters escaped.
        #expect(Validate.escaped("a\u{1B}[2Jb\u{202E}c") == "a\\u{001B}[2Jb\\u{202E}c")
    }

    /// Point 5: the data directory and everything in it is root's alone, whatever an older kumod left.
    @Test func dataDirectoryModesAreTightened() throws {
        let dir = try tempDir("modes")
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = dir.appendingPathComponent("kumo")
        try FileManager.default.createDirectory(at: data.appendingPathComponent("instances/i-1"), withIntermediateDirectories: true)
        for p in ["kumo", "kumo/instances", "kumo/instances/i-1"] { chmod(dir.appendingPathComponent(p).path, 0o755) }
        for p in ["kumod.sqlite", "instances/i-1/console.log"] {
            FileManager.default.createFile(atPath: data.appendingPathComponent(p).path, contents: Data("secret".utf8))
            chmod(data.appendingPathComponent(p).path, 0o644)
        }
        // A link to a file outside: left alone (chmod would change its target).
        let outside = dir.appendingPathComponent("outside")
        FileManager.default.createFile(atPath: outside.path, contents: Data())
        chmod(outside.path, 0o644)
        symlink(outside.path, data.appendingPathComponent("link").path)
        let changed = try DataDirectory.secure(data)
        #expect(changed.count == 5, "\(changed)")
        #expect(changed.contains { $0.hasSuffix("console.log: 0644 → 0600") }, "\(changed)")
        func mode(_ p: String) -> mode_t {
            var st = stat()
            lstat(p, &st)
            return st.st_mode & 0o7777
        }
        #expect(mode(data.path) == 0o700 && mode(data.appendingPathComponent("instances/i-1").path) == 0o700)
        #expect(mode(data.appendingPathComponent("kumod.sqlite").path) == 0o600)
        #expect(mode(outside.path) == 0o644)
        #expect(try DataDirectory.secure(data).isEmpty, "a second start has nothing to tighten")
        // Another user's directory is refused: its owner could swap the database under kumod.
        chown(data.path, 65534, 65534)
        #expect(throws: DataDirectory.Unsafe.self) { try DataDirectory.secure(data) }
        chown(data.path, 0, 0)
        // A fresh one is made 0700.
        let fresh = dir.appendingPathComponent("fresh")
        _ = try DataDirectory.secure(fresh)
        #expect(mode(fresh.path) == 0o700)
    }
    /// Every route × owner, other tenant, admin, no token, bad token. A route added to `API.routes` without
    /// a row here fails the test.
    @Test func authorizationOfEveryRoute() async throws {
        enum Want: Equatable { case ok, allowed, forbidden, notFound, unauthorized }
        @Sendable func judge(_ s: HTTPResponse.Status) -> Want {
            switch s.code {
            case 200..<300: return .ok
            case 401: return .unauthorized
            case 403: return .forbidden
            case 404: return .notFound
            default: return .allowed
            }
        }
        let (f, _) = try Self.fixture()
        // (owner, other, admin) for each route; no token and a bad token are 401 everywhere but the two open routes.
        let all: (Want, Want, Want) = (.ok, .ok, .ok)
        let adminOnly: (Want, Want, Want) = (.forbidden, .forbidden, .ok)
        let own: (Want, Want, Want) = (.ok, .notFound, .ok)
        // The console is a WebSocket: a plain GET is refused for what it is (or the missing console), not for who asks.
        let ownSocket: (Want, Want, Want) = (.allowed, .notFound, .allowed)
        let rows: [String: (Want, Want, Want)] = [
            "GET /v1/openapi.yaml": all, "GET /v1/health": all,
            "GET /v1/instance-types": all, "POST /v1/instance-types": adminOnly,
            "GET /v1/images": all, "POST /v1/images": adminOnly,
            "GET /v1/instances": all, "POST /v1/instances": all,
            "GET /v1/instances/{id}": own, "DELETE /v1/instances/{id}": own,
            "POST /v1/instances/{id}/start": own, "POST /v1/instances/{id}/stop": own, "POST /v1/instances/{id}/reboot": own,
            "GET /v1/instances/{id}/console": ownSocket, "GET /v1/instances/{id}/stats": own,
            "GET /v1/instances/{id}/translate": own, "GET /v1/instances/{id}/cpus": own, "PUT /v1/instances/{id}/cpus": own,
            "GET /v1/host/capacity": all, "PUT /v1/host/placement": adminOnly, "GET /v1/host/ksm": all,
            "GET /v1/host/balloon": all, "PUT /v1/host/balloon-policy": adminOnly,
            "DELETE /v1/instance-types/{name}": adminOnly, "DELETE /v1/images/{id}": own,
            "GET /v1/tenants": adminOnly, "POST /v1/tenants": adminOnly, "DELETE /v1/tenants/{tenant}": adminOnly,
            "GET /v1/tenants/{tenant}/tokens": adminOnly, "POST /v1/tenants/{tenant}/tokens": adminOnly,
            "DELETE /v1/tenants/{tenant}/tokens/{token}": adminOnly,
            "GET /v1/networks": all, "POST /v1/networks": all, "GET /v1/networks/{id}": own, "DELETE /v1/networks/{id}": own,
            "GET /v1/security-groups": all, "POST /v1/security-groups": all, "GET /v1/security-groups/{id}": own,
            "DELETE /v1/security-groups/{id}": own, "POST /v1/security-groups/{id}/rules": own, "DELETE /v1/security-groups/{id}/rules/{rule}": own,
            "PUT /v1/instances/{id}/nics/{index}/security-groups": own,
            "POST /v1/instances/{id}/nics/{index}/port-forwards": own, "DELETE /v1/instances/{id}/nics/{index}/port-forwards/{forward}": own,
            "GET /v1/images/{id}": own, "POST /v1/images/import": all, "POST /v1/instances/{id}/image": (.allowed, .notFound, .allowed),
            "POST /v1/instances/{id}/commands": own, "GET /v1/instances/{id}/commands": own, "GET /v1/instances/{id}/commands/{invocation}": own,
            "POST /v1/instances/{id}/files": own,
            "GET /v1/key-pairs": all, "POST /v1/key-pairs": all, "GET /v1/key-pairs/{id}": own, "DELETE /v1/key-pairs/{id}": own,
            "GET /v1/instances/{id}/metrics": own, "GET /v1/host/metrics": all, "GET /metrics": all,
            "GET /v1/alarms": all, "POST /v1/alarms": adminOnly, "GET /v1/alarms/{id}": own, "DELETE /v1/alarms/{id}": own,
            // The fixture's instances have no display: the owner and admins are told so (409), others "not found".
            "POST /v1/instances/{id}/vnc": (.allowed, .notFound, .allowed),
            // Its one-time ticket is the credential, token or not: a made-up one is not found, whoever asks.
            "GET /v1/vnc/{ticket}": (.notFound, .notFound, .notFound),
            "GET /v1/load-balancers": all, "POST /v1/load-balancers": all, "GET /v1/load-balancers/{id}": own,
            "DELETE /v1/load-balancers/{id}": own, "GET /v1/load-balancers/{id}/events": own, "POST /v1/load-balancers/{id}/listeners": own,
            "DELETE /v1/load-balancers/{id}/listeners/{listener}": own, "POST /v1/load-balancers/{id}/backend-groups": own,
            "DELETE /v1/load-balancers/{id}/backend-groups/{group}": own, "POST /v1/load-balancers/{id}/backend-groups/{group}/backends": own,
            "DELETE /v1/load-balancers/{id}/backend-groups/{group}/backends/{backend}": own,
        ]
        let admin = try #require(try f.store.principal(token: f.admin))
        #expect(Set(rows.keys) == Set(API.routes.map { "\($0.0) \($0.1)" }), "every route has a row, and only routes do")
        // Load balancers are on a network of their tenant's ("lbnet", made when first needed), and Alice's
        // backends are a NIC of an instance of hers in it.
        @Sendable func lbNet(_ p: Store.Principal) throws {
            if try f.store.network("lbnet", tenant: p.tenantID) == nil {
                _ = try f.service.createNetwork(CreateNetworkRequest(name: "lbnet", cidr: try NetworkAPITests.freeCIDR(f)), by: p)
            }
        }
        nonisolated(unsafe) var backendInstance: String? = nil
        try await f.app.test(.router) { c in
            try await Self.image(c, f)
            for (method, path) in API.routes {
                let want = try #require(rows["\(method) \(path)"])
                // A fresh running instance of alice's for each caller that may change it.
                for (who, token, expected) in [
                    ("no token", nil, Want.unauthorized), ("bad token", "kumo_0123456789abcdef0123456789abcdef", .unauthorized),
                    ("other tenant", f.bob, want.1), ("owner", f.alice, want.0), ("admin", f.admin, want.2),
                ] as [(String, String?, Want)] {
                    let unique = String(Store.newID("x").suffix(6))
                    var uri = path
                    var made: String? = nil
                    // What the path names, made afresh for each caller.
                    if path.hasPrefix("/v1/networks/") {
                        let alice = try #require(try f.store.principal(token: f.alice))
                        let n = try f.service.createNetwork(CreateNetworkRequest(name: "m-\(unique)"), by: alice)
                        uri = uri.replacingOccurrences(of: "{id}", with: n.id)
                    } else if path.hasPrefix("/v1/security-groups/") {
                        let alice = try #require(try f.store.principal(token: f.alice))
                        let g = try f.service.createSecurityGroup(CreateSecurityGroupRequest(name: "m-\(unique)"), by: alice)
                        uri = uri.replacingOccurrences(of: "{id}", with: g.id)
                        if path.contains("{rule}") {
                            let r = try f.service.addSecurityGroupRule(
                                g.id, AddSecurityGroupRuleRequest(direction: "ingress", protocol: "tcp", ports: "22", cidr: "10.0.0.0/8"), by: alice)
                            uri = uri.replacingOccurrences(of: "{rule}", with: r.id)
                        }
                    } else if path.hasPrefix("/v1/load-balancers/") {
                        let alice = try #require(try f.store.principal(token: f.alice))
                        try lbNet(alice)
                        let b = try f.service.createLoadBalancer(CreateLoadBalancerRequest(name: "m-\(unique)", network: "lbnet"), by: alice)
                        let g = try f.service.createBackendGroup(b.id, CreateBackendGroupRequest(name: "g"), by: alice)
                        uri = uri.replacingOccurrences(of: "{id}", with: b.id).replacingOccurrences(of: "{group}", with: g.id)
                        if path.contains("{listener}") {
                            let l = try f.service.createListener(b.id, CreateListenerRequest(port: 80, backendGroup: "g"), by: alice)
                            uri = uri.replacingOccurrences(of: "{listener}", with: l.id)
                        }
                        if path.contains("/backends") {
                            if backendInstance == nil {
                                let r = try f.service.runInstances(RunInstancesRequest(type: "kumo.small", image: "tiny", networks: ["lbnet"]), by: alice)
                                backendInstance = r.instances[0].id
                            }
                            if path.contains("{backend}") {
                                let e = try f.service.addBackend(b.id, group: g.id, AddBackendRequest(instance: backendInstance!, port: 8080), by: alice)
                                uri = uri.replacingOccurrences(of: "{backend}", with: e.backends[0].id)
                            }
                        }
                    } else if path.hasPrefix("/v1/key-pairs/") {
                        let alice = try #require(try f.store.principal(token: f.alice))
                        let k = try f.service.createKeyPair(CreateKeyPairRequest(name: "m-\(unique)"), by: alice)
                        uri = uri.replacingOccurrences(of: "{id}", with: k.id)
                    } else if path.hasPrefix("/v1/alarms/") {
                        // An alarm of alice's on a running instance of hers.
                        let alice = try #require(try f.store.principal(token: f.alice))
                        let id = try await Self.run(c, f.alice)
                        _ = try await waitState(c, id, f.alice, .running)
                        let a = try f.service.createAlarm(
                            CreateAlarmRequest(
                                name: "a-\(unique)", instance: id, metric: "cpu_percent", comparison: "above", threshold: 90, durationSeconds: 60),
                            by: alice)
                        uri = uri.replacingOccurrences(of: "{id}", with: a.id)
                        made = id
                    } else if path == "/v1/images/{id}" {
                        // A private image of alice's (imported: a sector of zeros).
                        let alice = try #require(try f.store.principal(token: f.alice))
                        let img = try CustomImageTests.importRaw(f, name: "del\(unique)", bytes: Data(count: 512), by: alice)
                        uri = uri.replacingOccurrences(of: "{id}", with: img.id)
                    } else if path.contains("{id}") {
                        let id = try await Self.run(c, f.alice)
                        _ = try await waitState(c, id, f.alice, .running)
                        uri = path.replacingOccurrences(of: "{id}", with: id)
                        made = id
                        if path.contains("{invocation}") {
                            let alice = try #require(try f.store.principal(token: f.alice))
                            let inv = try f.service.runCommand(id, RunCommandRequest(command: "true", timeoutSeconds: 5), by: alice)
                            uri = uri.replacingOccurrences(of: "{invocation}", with: inv.id)
                        }
                        if path.contains("{forward}") {
                            let alice = try #require(try f.store.principal(token: f.alice))
                            let pf = try f.service.createPortForward(
                                id, nic: 0, CreatePortForwardRequest(hostPort: Int.random(in: 40000...49999), port: 80), by: alice)
                            uri = uri.replacingOccurrences(of: "{forward}", with: pf.id)
                        }
                    }
                    if path.contains("{name}") {
                        let t = try f.service.addType(InstanceType(name: "d.\(unique)", vcpus: 1, memoryMiB: 128), by: admin)
                        uri = uri.replacingOccurrences(of: "{name}", with: t.name)
                    }
                    if path.contains("{tenant}") {
                        let t = try f.service.createTenant(CreateTenantRequest(name: "m-\(unique)"), by: admin)
                        uri = uri.replacingOccurrences(of: "{tenant}", with: t.id)
                        if path.contains("{token}") {
                            let k = try f.service.issueToken(for: t.id, CreateTokenRequest(description: "matrix"), by: admin)
                            uri = uri.replacingOccurrences(of: "{token}", with: k.id)
                        }
                    }
                    if path.hasSuffix("/translate") { uri += "?address=0x1000" }
                    if path == "/v1/images/import" { uri += "?name=imp\(unique)&format=raw&boot_image=tiny" }
                    uri = uri.replacingOccurrences(of: "{index}", with: "0")
                    let payload: String
                    switch "\(method) \(path)" {
                    case "POST /v1/instance-types": payload = #"{"name": "t.\#(unique)", "vcpus": 1, "memory_mib": 128}"#
                    case "POST /v1/images": payload = #"{"name": "img\#(unique)", "kernel": "\#(f.kernel.path)"}"#
                    case "POST /v1/instances": payload = #"{"type": "kumo.small", "image": "tiny"}"#
                    case "PUT /v1/instances/{id}/cpus": payload = #"{"vcpus": [{"vcpu": 0, "cpus": "0"}]}"#
                    case "PUT /v1/host/placement":
                        payload = #"{"cpu_allocation_ratio": 4, "ram_allocation_ratio": 1, "reserved_host_memory_mib": 512, "reserved_cpus": 0}"#
                    case "PUT /v1/host/balloon-policy": payload = #"{"enabled": false}"#
                    case "POST /v1/tenants": payload = #"{"name": "n-\#(unique)"}"#
                    case "POST /v1/networks": payload = #"{"name": "n-\#(unique)"}"#
                    case "POST /v1/key-pairs": payload = #"{"name": "k-\#(unique)"}"#
                    // On the host's series: for admins (a tenant names an instance of its own).
                    case "POST /v1/alarms":
                        payload = #"{"name": "h-\#(unique)", "metric": "cpu_percent", "comparison": "above", "threshold": 90, "duration_seconds": 60}"#
                    case "POST /v1/images/import": payload = String(repeating: "\0", count: 512)
                    case "POST /v1/instances/{id}/commands": payload = #"{"command": "uname -a", "timeout_seconds": 5}"#
                    case "POST /v1/instances/{id}/files": payload = #"{"path": "/tmp/x", "content": "aGk="}"#
                    case "POST /v1/instances/{id}/image": payload = #"{"name": "from-\#(unique)"}"#
                    case "POST /v1/security-groups": payload = #"{"name": "g-\#(unique)", "description": "from the matrix"}"#
                    case "POST /v1/security-groups/{id}/rules": payload = #"{"direction": "ingress", "protocol": "udp", "ports": "53", "cidr": "0.0.0.0/0"}"#
                    case "PUT /v1/instances/{id}/nics/{index}/security-groups": payload = #"{"security_groups": ["default"]}"#
                    case "POST /v1/instances/{id}/nics/{index}/port-forwards":
                        payload = #"{"host_port": \#(Int.random(in: 50000...59999)), "port": 80}"#
                    case "POST /v1/tenants/{tenant}/tokens": payload = #"{"description": "from the matrix"}"#
                    case "POST /v1/load-balancers":
                        if let p = try f.store.principal(token: token ?? "") { try lbNet(p) }
                        payload = #"{"name": "b-\#(unique)", "network": "lbnet"}"#
                    case "POST /v1/load-balancers/{id}/listeners": payload = #"{"port": 81, "backend_group": "g"}"#
                    case "POST /v1/load-balancers/{id}/backend-groups": payload = #"{"name": "g2"}"#
                    case "POST /v1/load-balancers/{id}/backend-groups/{group}/backends":
                        payload = #"{"instance": "\#(backendInstance ?? "")", "port": 8081}"#
                    default: payload = ""
                    }
                    let open = path == "/v1/openapi.yaml" || path == "/v1/health"
                    let ticketed = path == "/v1/vnc/{ticket}"
                    if ticketed { uri = "/v1/vnc/" + String(repeating: "ab", count: 24) }
                    try await c.execute(uri: uri, method: HTTPRequest.Method(method)!, headers: auth(token), body: body(payload)) { r throws in
                        let got = judge(r.status)
                        #expect(
                            got == (open ? .ok : ticketed ? .notFound : expected),
                            "\(method) \(path) as \(who): \(r.status) \(String(buffer: r.body).prefix(200))")
                    }
                    // The host's capacity is the fixture's two CPUs: what a case made goes again.
                    let created = method == "POST" && path == "/v1/instances"
                    for id in [made].compactMap({ $0 }) {
                        try await c.execute(uri: "/v1/instances/\(id)", method: .delete, headers: auth(f.admin)) { #expect($0.status == .ok) }
                    }
                    if created {
                        try await c.execute(uri: "/v1/instances", method: .get, headers: auth(f.admin)) { r throws in
                            for i in try decode(InstanceList.self, r.body).instances where i.state != .deleted {
                                _ = try f.service.delete(i.id, by: try #require(try f.store.principal(token: f.admin)))
                            }
                        }
                    }
                    // Balancers go (their networks with them, below, at the end).
                    for b in try f.service.listLoadBalancers(by: admin) { try f.service.deleteLoadBalancer(b.id, by: admin) }
                    // Networks go too (a bridge and a dnsmasq each), once no NIC is in them.
                    if path.hasPrefix("/v1/networks") {
                        for n in try f.service.listNetworks(by: admin) where n.nics == 0 { try f.service.deleteNetwork(n.id, by: admin) }
                    }
                }
            }
        }
    }
    /// Records what kumod asks of the launcher, and can make a preparation slow (a big root disk's copy).
    final class WatchedLauncher: VMMLauncher, @unchecked Sendable {
        let real: ProcessLauncher
        let lock = NSLock()
        var released: [String] = []
        var slowPrepares = 0
        var slowSeconds = 4.0
        init(_ real: ProcessLauncher) { self.real = real }
        func prepare(_ spec: LaunchSpec) throws {
            lock.lock()
            let slow = slowPrepares > 0
            if slow { slowPrepares -= 1 }
            lock.unlock()
            if slow { Thread.sleep(forTimeInterval: slowSeconds) }
            try real.prepare(spec)
        }
        var launches: [Date] = []
        func launch(_ spec: LaunchSpec) throws -> VMMProcess {
            lock.withLock { launches.append(Date()) }
            return try real.launch(spec)
        }
        func exitStatus(_ p: VMMProcess) -> ExitFate? { real.exitStatus(p) }
        func signal(_ p: VMMProcess, _ sig: Int32) { real.signal(p, sig) }
        func handle(workDir: URL) -> any VMMHandle { real.handle(workDir: workDir) }
        func release(instanceID: String) {
            lock.lock(); released.append(instanceID); lock.unlock()
            real.release(instanceID: instanceID)
        }
    }

    /// Point 4: a slow launch (a root disk being copied) holds up neither another tenant's launch nor the
    /// monitor's noticing a dead VMM.
    @Test func aSlowLaunchStallsNoOne() async throws {
        nonisolated(unsafe) var watched: WatchedLauncher! = nil
        let f = try Fixture(wrap: { real in
            let l = WatchedLauncher(real); watched = l; return l
        })
        try await f.app.test(.router) { c in
            try await Self.image(c, f)
            let b = try await Self.run(c, f.bob)
            let bob = try await waitState(c, b, f.admin, .running)
            watched.lock.withLock { watched.slowPrepares = 1 }
            let slow = try await Self.run(c, f.alice)
            try await Task.sleep(for: .milliseconds(200))
            let t0 = Date()
            let quick = try await Self.run(c, f.bob)
            _ = try await waitState(c, quick, f.bob, .running)
            let started = Date().timeIntervalSince(t0)
            kill(Int32(try #require(bob.pid)), SIGKILL)
            let t1 = Date()
            _ = try await waitState(c, b, f.bob, .error)
            let noticed = Date().timeIntervalSince(t1)
            #expect(started < 2 && noticed < 2, "started in \(started) s, a dead VMM noticed in \(noticed) s while another launch prepared")
            try await c.execute(uri: "/v1/instances/\(slow)", method: .get, headers: auth(f.alice)) { r throws in
                #expect(try decode(Instance.self, r.body).state == .starting, "still preparing")
            }
            _ = try await waitState(c, slow, f.alice, .running)
        }
    }

    /// Point 3 (and 6's cgroup): after kumod dies, a restarted kumod re-attaches the VMM it recorded (even
    /// one recorded while starting), ends VMMs under its data directory it did not record, and releases
    /// what a VMM that died meanwhile held.
    @Test func aRestartedKumodEndsTheVMMsItDoesNotOwn() throws {
        let f = try Fixture()
        let admin = try #require(try f.store.principal(token: f.admin))
        _ = try f.service.registerImage(RegisterImageRequest(name: "img", kernel: f.kernel.path), by: admin)
        let kept = try f.service.runInstances(RunInstancesRequest(type: "kumo.small", image: "img"), by: admin).instances[0].id
        let died = try f.service.runInstances(RunInstancesRequest(type: "kumo.small", image: "img"), by: admin).instances[0].id
        func state(_ id: String) throws -> Instance { try #require(try f.store.instance(id)).instance }
        for _ in 0..<400 where try state(kept).state != .running || state(died).state != .running { Thread.sleep(forTimeInterval: 0.02) }
        let keptPid = try #require(try state(kept).pid), diedPid = try #require(try state(died).pid)
        f.service.stopMonitor()
        // "kumod dies": its VMMs live on. One of them dies too while kumod is down; the kept one was caught
        // starting (its pid recorded, not yet running); and two VMMs no instance records are left behind.
        _ = try f.store.transition(kept, to: .starting, reason: "launching kumo-vmm", from: [.running])
        kill(Int32(diedPid), SIGKILL)
        let fake = f.dir.appendingPathComponent("fake-vmm").path
        var strays: [Process] = []
        for id in [kept, "i-00000000000000001"] {
            try FileManager.default.createDirectory(at: f.dir.appendingPathComponent("instances/\(id)"), withIntermediateDirectories: true)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: fake)
            p.arguments = ["--config", f.dir.appendingPathComponent("instances/\(id)/config.json").path]
            try p.run()
            strays.append(p)
        }
        defer { for p in strays where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        Thread.sleep(forTimeInterval: 0.2)
        let found = Orphans.vmms(under: f.dir.appendingPathComponent("instances").path).map(\.process.pid)
        #expect(Set(found).isSuperset(of: [Int32(keptPid)] + strays.map(\.processIdentifier)), "\(found)")

        nonisolated(unsafe) var watched: WatchedLauncher! = nil
        watched = WatchedLauncher(ProcessLauncher(vmmPath: fake, jail: nil))  // a stand-in: no jail, no cgroup
        let again = Service(store: f.store, launcher: watched, host: f.service.host, dataDir: f.dir)
        let adopted = try again.recover()
        #expect(adopted == [kept])
        let now = try state(kept)
        #expect(now.state == .running && now.stateReason.contains("re-attached"), "\(now)")
        #expect(kill(Int32(keptPid), 0) == 0, "the recorded VMM runs on")
        // (A stray's `sleep` forked just before the stray was ended shows the stray's command line until it
        // execs: give it a moment.)
        var left: [Int32] = []
        for _ in 0..<50 {
            left = Orphans.vmms(under: f.dir.appendingPathComponent("instances").path).map(\.process.pid)
            if left == [Int32(keptPid)] { break }
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(left == [Int32(keptPid)], "the strays were ended: \(left)")
        // Gone, or a zombie this test (their parent) has not reaped yet.
        for p in strays {
            let pid = p.processIdentifier
            #expect(ProcessLauncher.startTicks(pid) == nil || ProcessLauncher.state(pid) == "Z", "stray \(pid) is gone")
        }
        #expect(try state(died).state == .error)
        #expect(watched.lock.withLock { watched.released.contains(died) }, "its cgroup is released")
        _ = try again.delete(kept, by: admin)
        #expect(kill(Int32(keptPid), 0) != 0, "deleted: its VMM is gone")
    }
    /// Point 6: tenants and tokens through the API, deleting images and types, image files only from the
    /// images directory (shown to tenants by name, not as host paths).
    @Test func tenantsTokensAndTheCatalogue() async throws {
        let (f, _) = try Self.fixture()
        try await f.app.test(.router) { c in
            try await Self.image(c, f)
            try await c.execute(uri: "/v1/images", method: .get, headers: auth(f.alice)) { r throws in
                let i = try #require(try decode([String: [Image]].self, r.body)["images"]?.first)
                #expect(i.kernel == "vmlinux", "a tenant sees the file's name, not \(f.kernel.path)")
            }
            try await c.execute(uri: "/v1/images", method: .get, headers: auth(f.admin)) { r throws in
                #expect(try decode([String: [Image]].self, r.body)["images"]?.first?.kernel.hasPrefix("/") == true)
            }
            let carol = try await c.execute(uri: "/v1/tenants", method: .post, headers: auth(f.admin), body: body(#"{"name": "carol"}"#)) { r throws in
                #expect(r.status == .created)
                return try decode(Tenant.self, r.body)
            }
            for bad in [#"{"name": "carol"}"#, #"{"name": "Carol"}"#, #"{"name": "c\u0000"}"#, #"{"name": "x", "admin": true}"#] {
                try await c.execute(uri: "/v1/tenants", method: .post, headers: auth(f.admin), body: body(bad)) { r in
                    #expect(r.status == .conflict || r.status == .badRequest, "\(bad)")
                }
            }
            let token = try await c.execute(
                uri: "/v1/tenants/carol/tokens", method: .post, headers: auth(f.admin), body: body(#"{"description": "ci"}"#)
            ) { r throws in
                #expect(r.status == .created)
                return try decode(Token.self, r.body)
            }
            let secret = try #require(token.secret)
            let id = try await Self.run(c, secret)
            try await c.execute(uri: "/v1/instances", method: .get, headers: auth(secret)) { r throws in
                #expect(try decode(InstanceList.self, r.body).instances.map(\.id) == [id] && true)
            }
            try await c.execute(uri: "/v1/tenants/\(carol.id)/tokens", method: .get, headers: auth(f.admin)) { r throws in
                let list = try decode([String: [Token]].self, r.body)["tokens"] ?? []
                #expect(list.map(\.id) == [token.id] && list.allSatisfy { $0.secret == nil } && list.first?.description == "ci")
            }
            // In use: the tenant, the image, the type; built in: the type.
            try await c.execute(uri: "/v1/tenants/carol", method: .delete, headers: auth(f.admin)) { #expect($0.status == .conflict) }
            try await c.execute(uri: "/v1/images/tiny", method: .delete, headers: auth(f.admin)) { #expect($0.status == .conflict) }
            try await c.execute(uri: "/v1/instance-types/kumo.small", method: .delete, headers: auth(f.admin)) { #expect($0.status == .conflict) }
            try await c.execute(uri: "/v1/instances/\(id)", method: .delete, headers: auth(secret)) { #expect($0.status == .ok) }
            try await c.execute(uri: "/v1/images/tiny", method: .delete, headers: auth(f.admin)) { #expect($0.status == .noContent) }
            try await c.execute(uri: "/v1/images", method: .get, headers: auth(f.admin)) { r throws in
                #expect(try decode([String: [Image]].self, r.body)["images"]?.isEmpty == true)
            }
            try await c.execute(
                uri: "/v1/instance-types", method: .post, headers: auth(f.admin), body: body(#"{"name": "gone.1", "vcpus": 1, "memory_mib": 128}"#)
            ) { #expect($0.status == .created) }
            try await c.execute(uri: "/v1/instance-types/gone.1", method: .delete, headers: auth(f.admin)) { #expect($0.status == .noContent) }
            try await c.execute(uri: "/v1/instance-types/gone.1", method: .delete, headers: auth(f.admin)) { #expect($0.status == .notFound) }
            // Revoked: the token no longer works. Deleted: the tenant is gone from the list.
            try await c.execute(uri: "/v1/tenants/carol/tokens/\(token.id)", method: .delete, headers: auth(f.admin)) { #expect($0.status == .noContent) }
            try await c.execute(uri: "/v1/instances", method: .get, headers: auth(secret)) { #expect($0.status == .unauthorized) }
            try await c.execute(uri: "/v1/tenants/carol", method: .delete, headers: auth(f.admin)) { #expect($0.status == .noContent) }
            try await c.execute(uri: "/v1/tenants", method: .get, headers: auth(f.admin)) { r throws in
                #expect(try decode([String: [Tenant]].self, r.body)["tenants"]?.map(\.name).sorted() == ["admin", "alice", "bob"])
            }
            // The last admin token stays.
            let adminTokens = try await c.execute(uri: "/v1/tenants/admin/tokens", method: .get, headers: auth(f.admin)) { r throws in
                try decode([String: [Token]].self, r.body)["tokens"] ?? []
            }
            #expect(adminTokens.count == 1)
            try await c.execute(uri: "/v1/tenants/admin/tokens/\(adminTokens[0].id)", method: .delete, headers: auth(f.admin)) { r throws in
                #expect(r.status == .conflict)
                #expect(try decode(ErrorBody.self, r.body).error.message.contains("last admin token"))
            }
        }
    }
}

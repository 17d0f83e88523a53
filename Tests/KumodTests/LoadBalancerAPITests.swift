import Foundation
import KumoAPI
import Synchronization
import Testing
import TestSupport

@testable import Kumod

/// Load balancers through kumod (issue 19), with real nftables, conntrack and namespaces: three NICs of
/// Alice's instances stand in for guests as namespaces on their bridge's ports (SecurityGroupTests.Rig),
/// each answering with its name; a client namespace with 64 addresses behind a veth whose host end is the
/// balancer's host address. kumod's own health checker runs (a stand-in VMM per instance: no guest boots;
/// guests as backends are NetworkGuestTests').
@Suite(.ownThreads, .serialized, .enabled(if: NetworkHostTests.canNet && access("/usr/sbin/conntrack", X_OK) == 0, "needs root, nft, ip and conntrack"))
struct LoadBalancerAPITests {
    struct Lab: @unchecked Sendable {
        let f: Fixture
        let rig: SecurityGroupTests.Rig
        let alice: Store.Principal, bob: Store.Principal, admin: Store.Principal
        let client: String
        let host: String
        let sources: [String]
        let nics: [Store.NICRecord]
        let bobInstance: String
        let peer: String
        /// The namespaces standing in for the three backends' guests.
        let guests: [String]
        var servers: [NamespaceSockets.EchoServer]

        /// One connection from the client namespace, from `source`, to the balancer: the backend's name.
        func ask(_ address: String, _ port: Int, from source: String? = nil, ns: String? = nil) throws -> String? {
            let s = try NamespaceSockets.socket(in: ns ?? client)
            defer { close(s) }
            if let source {
                var from = NamespaceSockets.address(source, 0)
                _ = withUnsafePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
            }
            // Linux's connect waits at most the send timeout: a dropped SYN is an answer of none, not minutes.
            var tv = timeval(tv_sec: 3, tv_usec: 0)
            setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var to = NamespaceSockets.address(address, UInt16(port))
            let ok = withUnsafePointer(to: &to) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard ok == 0 else { return nil }
            return Self.greeting(s)
        }

        static func greeting(_ s: Int32) -> String? {
            var buf = [UInt8](repeating: 0, count: 64)
            let n = read(s, &buf, buf.count)
            return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : nil
        }

        /// `n` connections, their sources taken in turn: how many each backend answered ("none": no answer).
        func shares(_ port: Int, _ n: Int, sources: Int = 64) throws -> [String: Int] {
            var c: [String: Int] = [:]
            for i in 0..<n { c[try ask(host, port, from: self.sources[i % sources]) ?? "none", default: 0] += 1 }
            return c
        }

        func health(_ lb: String, _ listener: String) throws -> [String: String] {
            let b = try f.service.describeLoadBalancer(lb, by: alice)
            let l = try #require(b.listeners.first { $0.id == listener })
            return Dictionary(uniqueKeysWithValues: l.backends.map { ($0.address, $0.health) })
        }

        /// Waits until every backend of the listener is `state` but those in `except`; seconds it took.
        @discardableResult
        func waitFor(_ lb: String, _ listener: String, _ state: (String) -> Bool, seconds: Double = 20) throws -> Double {
            let start = Date()
            while Date().timeIntervalSince(start) < seconds {
                if try health(lb, listener).allSatisfy({ state($0.key) ? $0.value == "healthy" : $0.value != "healthy" }) {
                    return Date().timeIntervalSince(start)
                }
                Thread.sleep(forTimeInterval: 0.05)
            }
            Issue.record("listener \(listener): \(try health(lb, listener)) after \(seconds) s")
            return seconds
        }
    }

    static func lab(_ f: Fixture) throws -> Lab {
        let admin = try #require(try f.store.principal(token: f.admin))
        let alice = try #require(try f.store.principal(token: f.alice))
        let bob = try #require(try f.store.principal(token: f.bob))
        _ = try f.service.registerImage(RegisterImageRequest(name: "tiny", kernel: f.kernel.path), by: admin)
        let rig = SecurityGroupTests.Rig()
        do {
            let lan = try f.service.createNetwork(CreateNetworkRequest(name: "lan", cidr: try NetworkAPITests.freeCIDR(f)), by: alice)
            _ = try f.service.createNetwork(CreateNetworkRequest(name: "lan", cidr: try NetworkAPITests.freeCIDR(f)), by: bob)
            let outside = IPv4Network(try NetworkAPITests.freeCIDR(f))!
            let out = try rig.outside(outside)
            // 240 client addresses (the source hash's spread is a statistic over clients), in one ip batch.
            let sources = (10..<250).map { outside.address(at: $0)!.description }
            let batch = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-lb-\(UUID().uuidString).ip").path
            defer { unlink(batch) }
            try sources.map { "addr add \($0)/24 dev eth0" }.joined(separator: "\n").appending("\n").write(toFile: batch, atomically: true, encoding: .utf8)
            try rig.ip(["-n", out.ns, "-batch", batch])
            // The servers' group: TCP 8080 from the outside range and from the network itself.
            _ = try f.service.createSecurityGroup(CreateSecurityGroupRequest(name: "web"), by: alice)
            for cidr in [outside.description, lan.cidr] {
                _ = try f.service.addSecurityGroupRule(
                    "web", AddSecurityGroupRuleRequest(direction: "ingress", protocol: "tcp", ports: "8080", cidr: cidr), by: alice)
            }
            func run(_ groups: [String]?, _ by: Store.Principal) throws -> Store.NICRecord {
                let r = try f.service.runInstances(RunInstancesRequest(type: "kumo.small", image: "tiny", networks: ["lan"], securityGroups: groups), by: by)
                return try #require(try f.store.nics(instance: r.instances[0].id).first)
            }
            let nics = try (0..<3).map { _ in try run(["web"], alice) }
            let peerNIC = try run(nil, alice)
            let bobNIC = try run(nil, bob)
            try f.service.ensureTaps(nics + [peerNIC, bobNIC])
            let guests = try nics.map { try rig.guest($0) }
            let servers = try nics.enumerated().map { i, nic in
                try NamespaceSockets.EchoServer(in: guests[i], address: "\(nic.address)", port: 8080, greeting: "backend\(i + 1)\n", backlog: 256)
            }
            let peer = try rig.guest(peerNIC)
            return Lab(
                f: f, rig: rig, alice: alice, bob: bob, admin: admin, client: out.ns, host: outside.address(at: 1)!.description, sources: sources,
                nics: nics, bobInstance: bobNIC.instanceID, peer: peer, guests: guests, servers: servers)
        } catch {
            rig.end()
            throw error
        }
    }

    static func freePort() throws -> Int {
        try #require((0..<50).lazy.map { _ in Int.random(in: 20000...39999) }.first { !HostNetworking.hostUses("tcp", port: $0) })
    }

    @Test(.timeLimit(.minutes(15)))
    func balancersThroughKumodWithRealTraffic() throws {
        let f = try Fixture(host: HostResources(logicalCPUs: 16, memoryMiB: 64 * 1024), networks: true)
        var lab = try Self.lab(f)
        defer {
            lab.servers.forEach { $0.stop() }
            lab.rig.end()
        }
        f.service.startLoadBalancing()
        let s = f.service, alice = lab.alice
        let lb = try s.createLoadBalancer(CreateLoadBalancerRequest(name: "web", hostAddress: lab.host), by: alice)
        #expect(lb.address == lab.host && lb.network == nil)
        _ = try s.createBackendGroup("web", CreateBackendGroupRequest(name: "servers"), by: alice)
        for (i, nic) in lab.nics.enumerated() {
            _ = try s.addBackend("web", group: "servers", AddBackendRequest(instance: nic.instanceID, port: 8080, weight: i + 1), by: alice)
        }
        let fast = HealthCheckRequest(type: "tcp", intervalSeconds: 1, timeoutSeconds: 1, healthyThreshold: 2, unhealthyThreshold: 2)
        func listen(_ scheduler: String, persistence: Int? = nil, drain: Int? = nil, check: HealthCheckRequest? = fast) throws -> (Int, String) {
            let port = try Self.freePort()
            let l = try s.createListener(
                "web",
                CreateListenerRequest(
                    port: port, scheduler: scheduler, persistenceSeconds: persistence, drainSeconds: drain, backendGroup: "servers", healthCheck: check),
                by: alice)
            return (port, l.id)
        }
        let (rr, rrID) = try listen("rr", drain: 2)
        let (wrr, wrrID) = try listen("wrr")
        let (sh, shID) = try listen("sh")
        let (wlc, wlcID) = try listen("wlc")
        let (sticky, stickyID) = try listen("rr", persistence: 60)
        // A backend is out of rotation until its first probe passes: then all three are in.
        for l in [rrID, wrrID, shID, wlcID, stickyID] { try lab.waitFor(lb.id, l, { _ in true }) }

        // Round robin and weighted round robin, 10 000 connections each: exact shares over whole cycles.
        // Exact while the rotation holds still: on a loaded host two probes in a row can time out and take a
        // backend out for a moment (CI of fbf6ce3: 3335/3333/3332), so a run during which the listener's
        // rotation changed (an event of its) is made again, up to three runs.
        func rotationEvents() throws -> Set<String> {
            Set(try s.loadBalancerEvents("web", by: alice).filter { $0.listener == rrID }.map { "\($0.at) \($0.message)" })
        }
        var started = Date()
        var c: [String: Int] = [:]
        for run in 1...3 {
            let before = try rotationEvents()
            started = Date()
            c = try lab.shares(rr, 10_000)
            let changed = try rotationEvents().subtracting(before)
            if changed.isEmpty || run == 3 { break }
            print("LoadBalancerAPITests: rr's rotation changed during run \(run) (\(changed.sorted())): again")
            try lab.waitFor(lb.id, rrID, { _ in true })
        }
        print("LoadBalancerAPITests: 10 000 connections through rr in \(String(format: "%.1f", Date().timeIntervalSince(started))) s: \(c)")
        #expect(c["none"] == nil && c.count == 3 && c.values.allSatisfy { abs($0 - 3333) <= 1 }, "rr: \(c)")
        c = try lab.shares(wrr, 10_000)
        #expect(c["none"] == nil, "wrr: \(c)")
        for (i, want) in [1666.7, 3333.3, 5000.0].enumerated() {
            #expect(abs(Double(c["backend\(i + 1)"] ?? 0) - want) <= 6, "wrr 1:2:3: \(c)")
        }
        // Source hash: each client address always to one backend; 240 addresses spread over all three. The
        // table gives each backend a third of its slots (MaglevTests), but the kernel's jhash of neighbouring
        // addresses in one /24 is lumpy (measured 43/65/132 and, over 64 addresses, 5/21/38): each backend
        // gets at least a tenth of these clients.
        var owner: [String: Set<String>] = [:]
        for i in 0..<10_000 {
            let src = lab.sources[i % lab.sources.count]
            owner[src, default: []].insert(try lab.ask(lab.host, sh, from: src) ?? "none")
        }
        let spread = Dictionary(grouping: owner.values.compactMap(\.first), by: { $0 }).mapValues(\.count)
        print("LoadBalancerAPITests: source hash, \(owner.count) client addresses over the backends: \(spread.sorted { $0.key < $1.key })")
        #expect(owner.values.allSatisfy { $0.count == 1 && !$0.contains("none") }, "sh: one backend per client: \(owner.filter { $0.value.count > 1 })")
        #expect(spread.count == 3 && spread.values.allSatisfy { $0 >= 24 }, "sh: 240 clients over three backends: \(spread)")
        // Weighted least connections (kumod's proxy): 60 connections held open go 10 : 20 : 30; with none
        // held, short ones go in turn.
        var held: [(fd: Int32, name: String)] = []
        for _ in 0..<60 {
            let h = try #require(try NamespaceSockets.connect(from: lab.client, to: lab.host, UInt16(wlc)))
            held.append((h, Lab.greeting(h) ?? "none"))
        }
        var byHeld: [String: Int] = [:]
        for h in held { byHeld[h.name, default: 0] += 1 }
        #expect(byHeld == ["backend1": 10, "backend2": 20, "backend3": 30], "wlc, 60 held at weights 1:2:3: \(byHeld)")
        let proxy = try #require(f.service.balancing.state.withLock { $0.proxies[wlcID] })
        #expect(proxy.active.values.reduce(0, +) == 60, "the proxy counts 60 active: \(proxy.active)")
        // Ten of backend3's end: the next ten new connections go to it (the fewest per weight now).
        let ending = Set(held.filter { $0.name == "backend3" }.prefix(10).map(\.fd))
        for fd in ending { close(fd) }
        held.removeAll { ending.contains($0.fd) }
        let settle = Date().addingTimeInterval(5)
        while Date() < settle, proxy.active.values.reduce(0, +) != 50 { Thread.sleep(forTimeInterval: 0.02) }
        var next: [String: Int] = [:]
        for _ in 0..<10 {
            let h = try #require(try NamespaceSockets.connect(from: lab.client, to: lab.host, UInt16(wlc)))
            let n = Lab.greeting(h) ?? "none"
            next[n, default: 0] += 1
            held.append((h, n))
        }
        #expect(next == ["backend3": 10], "wlc fills the least loaded: \(next)")
        for h in held { close(h.fd) }
        let quiet = Date().addingTimeInterval(5)
        while Date() < quiet, !proxy.active.isEmpty { Thread.sleep(forTimeInterval: 0.05) }
        started = Date()
        c = try lab.shares(wlc, 10_000)
        print("LoadBalancerAPITests: 10 000 connections through wlc (the proxy) in \(String(format: "%.1f", Date().timeIntervalSince(started))) s: \(c)")
        #expect(c["none"] == nil && c.values.reduce(0, +) == 10_000 && c.count == 3, "wlc: \(c)")
        // Persistence: each client keeps the backend its first connection got; first connections still go round.
        var kept: [String: Set<String>] = [:]
        for i in 0..<(16 * 6) { kept[lab.sources[i % 16], default: []].insert(try lab.ask(lab.host, sticky, from: lab.sources[i % 16]) ?? "none") }
        #expect(kept.values.allSatisfy { $0.count == 1 && !$0.contains("none") }, "persistence: \(kept)")
        #expect(Set(kept.values.compactMap(\.first)).count == 3, "first connections went round: \(kept)")

        // UDP, round robin (no check: every backend in rotation): each new flow (a fresh source port) in turn.
        let udpServers = try lab.nics.enumerated().map { i, nic in
            try NamespaceSockets.UDPResponder(in: lab.guests[i], address: "\(nic.address)", port: 5353, name: "backend\(i + 1)")
        }
        defer { udpServers.forEach { $0.stop() } }
        _ = try s.createSecurityGroup(CreateSecurityGroupRequest(name: "dns"), by: alice)
        _ = try s.addSecurityGroupRule(
            "dns", AddSecurityGroupRuleRequest(direction: "ingress", protocol: "udp", ports: "5353", cidr: "0.0.0.0/0"), by: alice)
        let dnsGroup = try #require(try s.describeSecurityGroup("dns", by: alice).id)
        for nic in lab.nics {
            let web = try #require(try f.store.nics(instance: nic.instanceID).first?.securityGroups)
            _ = try s.setSecurityGroups(nic.instanceID, nic: 0, SetSecurityGroupsRequest(securityGroups: web + [dnsGroup]), by: alice)
        }
        let udpPort = try Self.freePort()
        _ = try s.createBackendGroup("web", CreateBackendGroupRequest(name: "udp"), by: alice)
        for nic in lab.nics { _ = try s.addBackend("web", group: "udp", AddBackendRequest(instance: nic.instanceID, port: 5353), by: alice) }
        let udp = try s.createListener("web", CreateListenerRequest(protocol: "udp", port: udpPort, scheduler: "rr", backendGroup: "udp"), by: alice)
        #expect(udp.healthCheck.type == "none" && udp.backends.allSatisfy { $0.health == "healthy" }, "\(udp)")
        var u: [String: Int] = [:]
        for i in 0..<300 {
            u[try NamespaceSockets.udpAsk(from: lab.client, source: lab.sources[i % 64], to: lab.host, UInt16(udpPort)) ?? "none", default: 0] += 1
        }
        #expect(u == ["backend1": 100, "backend2": 100, "backend3": 100], "udp round robin: \(u)")

        // A backend killed: out of rotation within interval × fall (+ a probe's timeout), no new connection
        // goes to it afterwards; back after rise passes once it answers again.
        // Killed mid-run: connections go on from another thread, each noted with when it was answered.
        let victim = "\(lab.nics[1].address)"
        let answers = Mutex<[(at: Double, by: String)]>([])
        let running = Atomic<Bool>(true)
        let t0 = Date()
        let client = lab
        let traffic = Thread {
            var i = 0
            while running.load(ordering: .relaxed) {
                let by = (try? client.ask(client.host, rr, from: client.sources[i % 64])) ?? nil
                answers.withLock { $0.append((Date().timeIntervalSince(t0), by ?? "none")) }
                i += 1
            }
        }
        traffic.start()
        Thread.sleep(forTimeInterval: 1)
        let killedAt = Date().timeIntervalSince(t0)
        lab.servers[1].stop()
        let out = try lab.waitFor(lb.id, rrID, { $0 != victim })
        Thread.sleep(forTimeInterval: 1.5)
        running.store(false, ordering: .relaxed)
        while answers.withLock({ $0.last?.at ?? 0 }) < killedAt + out + 1.4 { Thread.sleep(forTimeInterval: 0.05) }
        let seen = answers.withLock { $0 }
        print("LoadBalancerAPITests: a killed backend left rotation after \(String(format: "%.2f", out)) s (interval 1 s × fall 2, timeout 1 s)")
        #expect(out <= 1 * 2 + 1 + 1, "out within interval × fall (+ timeout and a pass's slack): \(out) s")
        let early = seen.filter { $0.at < killedAt }, window = seen.filter { $0.at >= killedAt && $0.at < killedAt + out + 0.3 }
        let late = seen.filter { $0.at >= killedAt + out + 0.3 }
        print(
            "LoadBalancerAPITests: mid-run: \(early.count) connections before the kill, \(window.filter { $0.by == "none" }.count) of \(window.count) refused "
                + "until it left rotation, \(late.count) after")
        #expect(early.contains { $0.by == "backend2" } && early.allSatisfy { $0.by != "none" }, "before the kill all three answered")
        #expect(late.count > 100 && late.allSatisfy { $0.by != "backend2" && $0.by != "none" }, "after: none to the killed backend, none lost")
        let events = try s.loadBalancerEvents("web", by: alice).map(\.message)
        #expect(events.contains { $0.contains(victim) && $0.contains("unhealthy") }, "\(events.suffix(5))")
        lab.servers[1] = try NamespaceSockets.EchoServer(in: lab.guests[1], address: victim, port: 8080, greeting: "backend2\n", backlog: 256)
        let back = try lab.waitFor(lb.id, rrID, { _ in true })
        print("LoadBalancerAPITests: it returned \(String(format: "%.2f", back)) s after it answered again (rise 2)")
        #expect(try s.loadBalancerEvents("web", by: alice).contains { $0.message.contains(victim) && $0.message.contains("back in rotation") })

        // A kumod restart: the rules rebuilt from the store (with the health it kept), an established
        // connection through the kernel path unbroken, new ones answered at once by all three.
        let net = try #require(f.service.networks)
        let conn = try #require(try NamespaceSockets.connect(from: lab.client, to: lab.host, UInt16(rr)))
        defer { close(conn) }
        let connBackend = try #require(Lab.greeting(conn))
        let before = try f.service.firewall(net).script
        f.service.stopLoadBalancing()
        let fresh = Service(
            store: f.store, launcher: ProcessLauncher(vmmPath: "/bin/false"), host: HostResources(logicalCPUs: 16, memoryMiB: 64 * 1024), dataDir: f.dir,
            networks: net)
        defer { fresh.shutdown(endingVMMs: false) }
        _ = try fresh.recoverNetworks()
        fresh.startLoadBalancing()
        let after = try fresh.firewall(net).script
        // The same rules from the store (the wlc proxy's port aside: a new proxy has a new one).
        // (Until its proxy is up in the new kumod, a fraction of a second, the wlc listener resets.)
        func kernelPath(_ script: String) -> [String] {
            script.split(separator: "\n").filter { ($0.contains(" map { ") || !$0.contains(":")) && !$0.contains("reject") && !$0.contains("ct status dnat") }
                .map(String.init)
        }
        let same = kernelPath(before) == kernelPath(after)
        #expect(same, "the same rules from the store: \(Set(kernelPath(before)).symmetricDifference(kernelPath(after)))")
        #expect(NamespaceSockets.echoes(conn, "across the restart"), "the established connection to \(connBackend) goes on")
        c = try lab.shares(rr, 30)
        #expect(c.count == 3 && c["none"] == nil, "new connections at once, to all three: \(c)")

        // Removing a backend drains it: its established connection goes on for drain_seconds (2), new
        // ones avoid it, then the drain's end closes it.
        let drained = try #require(try NamespaceSockets.connect(from: lab.client, to: lab.host, UInt16(rr)))
        defer { close(drained) }
        let name = try #require(Lab.greeting(drained))
        let index = try #require(Int(name.dropFirst("backend".count)))
        let gone = try #require(
            try fresh.describeLoadBalancer("web", by: alice).backendGroups[0].backends.first { $0.address == "\(lab.nics[index - 1].address)" })
        try fresh.deleteBackend("web", group: "servers", backend: gone.id, by: alice)
        #expect(NamespaceSockets.echoes(drained, "draining"), "the removed backend's connection goes on while it drains")
        c = try lab.shares(rr, 30)
        #expect(c[name] == nil && c["none"] == nil && c.values.reduce(0, +) == 30, "new connections avoid \(name): \(c)")
        let drainEnd = Date().addingTimeInterval(8)
        var ended = false
        while Date() < drainEnd, !ended {
            ended = try fresh.loadBalancerEvents("web", by: alice).contains { $0.message.contains("drain of \(gone.address):8080 from tcp \(rr) ended") }
            Thread.sleep(forTimeInterval: 0.1)
        }
        let lastEvents = try fresh.loadBalancerEvents("web", by: alice).suffix(4)
        #expect(ended, "the drain ended: \(lastEvents)")
        #expect(!NamespaceSockets.echoes(drained, "after the drain"), "the drained connection is over")
        let endEvent = try fresh.loadBalancerEvents("web", by: alice).last { $0.message.contains("drain of \(gone.address):8080 from tcp \(rr)") }
        // Its established connections: this one, and the one kept across the restart if it went there too.
        let open = connBackend == name ? 2 : 1
        #expect(endEvent?.message.contains("ended: \(open) established connection(s)") == true, "\(String(describing: endEvent))")
        if connBackend == name { #expect(!NamespaceSockets.echoes(conn, "after the drain"), "drained too") }

        // A balancer on an address of Alice's network: its highest free address; wlc through the proxy
        // on the network's gateway; a guest of the network reaches it.
        let inLan = try fresh.createLoadBalancer(CreateLoadBalancerRequest(name: "inner", network: "lan"), by: alice)
        let lan = try #require(try f.store.network("lan", tenant: alice.tenantID))
        #expect(inLan.address == lan.cidr.address(at: lan.cidr.size - 2)!.description && inLan.network == lan.id, "\(inLan.address)")
        _ = try fresh.createBackendGroup("inner", CreateBackendGroupRequest(name: "servers"), by: alice)
        _ = try fresh.addBackend("inner", group: "servers", AddBackendRequest(instance: lab.nics[0].instanceID, port: 8080), by: alice)
        for scheduler in ["rr", "wlc"] {
            let l = try fresh.createListener(
                "inner", CreateListenerRequest(port: scheduler == "rr" ? 80 : 81, scheduler: scheduler, backendGroup: "servers", healthCheck: fast), by: alice)
            try lab.waitFor(inLan.id, l.id, { _ in true })
            Thread.sleep(forTimeInterval: 0.5)
            var got: [String: Int] = [:]
            for _ in 0..<20 { got[try lab.ask(inLan.address, l.port, ns: lab.peer) ?? "none", default: 0] += 1 }
            #expect(got == ["backend1": 20], "\(scheduler) in the network, from a guest of it: \(got)")
        }
        // The network cannot go while the balancer is on it.
        #expect(throws: APIError.self) { try fresh.deleteNetwork("lan", by: alice) }
    }

    /// Bad input is refused with nothing changed: not the store, not the host's rules.
    @Test func badInputChangesNothing() throws {
        let f = try Fixture(host: HostResources(logicalCPUs: 16, memoryMiB: 64 * 1024), networks: true)
        let lab = try Self.lab(f)
        defer {
            lab.servers.forEach { $0.stop() }
            lab.rig.end()
        }
        let s = f.service, alice = lab.alice
        _ = try s.createLoadBalancer(CreateLoadBalancerRequest(name: "web", hostAddress: lab.host), by: alice)
        _ = try s.createBackendGroup("web", CreateBackendGroupRequest(name: "servers"), by: alice)
        _ = try s.addBackend("web", group: "servers", AddBackendRequest(instance: lab.nics[0].instanceID, port: 8080), by: alice)
        let port = try Self.freePort()
        _ = try s.createListener("web", CreateListenerRequest(port: port, backendGroup: "servers"), by: alice)
        let net = try #require(f.service.networks)
        let before = (try s.describeLoadBalancer("web", by: alice), try s.firewall(net).script, try s.listLoadBalancers(by: lab.admin))
        func refused(_ code: String, _ what: String, _ body: () throws -> Void) {
            do {
                try body()
                Issue.record("\(what): accepted")
            } catch let e as APIError {
                #expect(e.code == code, "\(what): \(e)")
            } catch { Issue.record("\(what): \(error)") }
        }
        let mine = lab.nics[1].instanceID
        refused("invalid_argument", "port 0") { _ = try s.addBackend("web", group: "servers", AddBackendRequest(instance: mine, port: 0), by: alice) }
        refused("invalid_argument", "weight -1") {
            _ = try s.addBackend("web", group: "servers", AddBackendRequest(instance: mine, port: 8080, weight: -1), by: alice)
        }
        refused("invalid_argument", "weight 101") {
            _ = try s.addBackend("web", group: "servers", AddBackendRequest(instance: mine, port: 8080, weight: 101), by: alice)
        }
        refused("not_found", "another tenant's instance") {
            _ = try s.addBackend("web", group: "servers", AddBackendRequest(instance: lab.bobInstance, port: 8080), by: alice)
        }
        refused("not_found", "another tenant's instance, by an admin") {
            _ = try s.addBackend("web", group: "servers", AddBackendRequest(instance: lab.bobInstance, port: 8080), by: lab.admin)
        }
        refused("not_found", "Bob adds to Alice's balancer") {
            _ = try s.addBackend("web", group: "servers", AddBackendRequest(instance: lab.bobInstance, port: 8080), by: lab.bob)
        }
        refused("not_found", "Bob's view of Alice's balancer") { _ = try s.describeLoadBalancer(before.0.id, by: lab.bob) }
        refused("not_found", "Bob deletes Alice's balancer") { try s.deleteLoadBalancer(before.0.id, by: lab.bob) }
        refused("invalid_argument", "listener port 0") { _ = try s.createListener("web", CreateListenerRequest(port: 0, backendGroup: "servers"), by: alice) }
        refused("invalid_argument", "a host address's low port") {
            _ = try s.createListener("web", CreateListenerRequest(port: 80, backendGroup: "servers"), by: alice)
        }
        refused("conflict", "a port taken") { _ = try s.createListener("web", CreateListenerRequest(port: port, backendGroup: "servers"), by: alice) }
        refused("invalid_argument", "an unknown scheduler") {
            _ = try s.createListener("web", CreateListenerRequest(port: port + 1, scheduler: "random", backendGroup: "servers"), by: alice)
        }
        refused("invalid_argument", "wlc on udp") {
            _ = try s.createListener("web", CreateListenerRequest(protocol: "udp", port: port + 1, scheduler: "wlc", backendGroup: "servers"), by: alice)
        }
        refused("invalid_argument", "a tcp check on udp") {
            _ = try s.createListener(
                "web", CreateListenerRequest(protocol: "udp", port: port + 1, backendGroup: "servers", healthCheck: HealthCheckRequest(type: "tcp")), by: alice)
        }
        refused("invalid_argument", "a timeout above the interval") {
            _ = try s.createListener(
                "web",
                CreateListenerRequest(
                    port: port + 1, backendGroup: "servers", healthCheck: HealthCheckRequest(type: "tcp", intervalSeconds: 2, timeoutSeconds: 5)),
                by: alice)
        }
        refused("invalid_argument", "an http check's codes") {
            _ = try s.createListener(
                "web", CreateListenerRequest(port: port + 1, backendGroup: "servers", healthCheck: HealthCheckRequest(type: "http", codes: "2xx")), by: alice)
        }
        refused("invalid_argument", "persistence 0") {
            _ = try s.createListener("web", CreateListenerRequest(port: port + 1, persistenceSeconds: 0, backendGroup: "servers"), by: alice)
        }
        refused("not_found", "a group of no one") { _ = try s.createListener("web", CreateListenerRequest(port: port + 1, backendGroup: "nope"), by: alice) }
        refused("conflict", "a group in use") { try s.deleteBackendGroup("web", group: "servers", by: alice) }
        refused("conflict", "a name taken") { _ = try s.createLoadBalancer(CreateLoadBalancerRequest(name: "web", hostAddress: lab.host), by: alice) }
        refused("invalid_argument", "both addresses") {
            _ = try s.createLoadBalancer(CreateLoadBalancerRequest(name: "two", network: "lan", hostAddress: lab.host), by: alice)
        }
        refused("invalid_argument", "not the host's address") {
            _ = try s.createLoadBalancer(CreateLoadBalancerRequest(name: "far", hostAddress: "192.0.2.77"), by: alice)
        }
        refused("invalid_argument", "a control character") {
            _ = try s.createLoadBalancer(CreateLoadBalancerRequest(name: "a\u{7}b", network: "lan"), by: alice)
        }
        refused("not_found", "Bob's network") {
            _ = try s.createLoadBalancer(
                CreateLoadBalancerRequest(name: "x", network: try #require(try f.store.networks(tenant: lab.bob.tenantID).first).id), by: alice)
        }
        // A port forward cannot take the listener's port on the same address, nor a listener a forward's.
        refused("conflict", "a forward on the listener's port") {
            _ = try s.createPortForward(mine, nic: 0, CreatePortForwardRequest(hostPort: port, port: 80, hostAddress: lab.host), by: alice)
        }
        let after = (try s.describeLoadBalancer("web", by: alice), try s.firewall(net).script, try s.listLoadBalancers(by: lab.admin))
        #expect(after.0 == before.0 && after.1 == before.1 && after.2 == before.2, "nothing changed")
        // Unknown JSON fields are refused by the API's strict decoding.
        #expect(throws: APIError.self) {
            _ = try API.decode(AddBackendRequest.self, from: Data(#"{"instance": "i-1", "port": 80, "wieght": 2}"#.utf8))
        }
        // The tenant's deletion takes its balancers, then its networks.
        func alices() throws -> [Instance] { try s.describe(Service.ListQuery(), by: alice).instances.filter { $0.state != .deleted } }
        for i in try alices() { _ = try s.delete(i.id, by: lab.admin) }
        let waitGone = Date().addingTimeInterval(20)
        while Date() < waitGone, try !alices().isEmpty { Thread.sleep(forTimeInterval: 0.1) }
        try s.deleteTenant("alice", by: lab.admin)
        #expect(try f.store.allLoadBalancers().isEmpty)
        #expect(!(try s.firewall(net).script.contains("lb_")), "no balancer chains left")
    }
}

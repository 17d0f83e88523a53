import Foundation
import Hummingbird
import HummingbirdTesting
import KumoAPI
import Testing
import TestSupport

@testable import Kumod

/// Tenant networks through the API with the host's real bridges, dnsmasq and nftables: what a create
/// makes on the host, what each tenant sees, every refusal leaving nothing behind, dnsmasq restarted
/// when it dies, and a restarted kumod making the host match its store again.
@Suite(.serialized, .enabled(if: NetworkHostTests.canNet && access("/usr/sbin/dnsmasq", X_OK) == 0, "needs root, ip, nft and dnsmasq"))
struct NetworkAPITests {
    /// A private /24 no network on this host uses (tests side by side pick their own).
    static func freeCIDR(_ f: Fixture) throws -> String {
        let taken = try f.service.networks!.host.hostNetworks(excluding: [])
        let n = try #require(
            (0..<200).lazy.map { _ in IPv4Network(address: IPv4Address(0xAC10_0000 | UInt32.random(in: 0..<4096) << 8), prefix: 24)! }
                .first { n in !taken.contains { $0.overlaps(n) } })
        return n.description
    }

    static func create(_ c: some TestClientProtocol, _ token: String, _ json: String) async throws -> (HTTPResponse.Status, String) {
        try await c.execute(uri: "/v1/networks", method: .post, headers: auth(token), body: body(json)) { ($0.status, String(buffer: $0.body)) }
    }

    static let busybox = GuestCache.dir.appendingPathComponent("initramfs/root/bin/busybox").path

    /// What the network's DNS server answers for `name`.
    static func lookup(_ name: String, at server: String) -> String {
        (try? HostCommand.run(busybox, ["nslookup", name, server])) ?? ""
    }

    /// The address dnsmasq leases to `mac`: udhcpc in a namespace whose veth, with that MAC, is in `bridge`.
    static func dhcp(mac: String, bridge: String) throws -> String {
        let tag = String(UInt16.random(in: 0...0xFFFF), radix: 16)
        let ns = "kumodh\(tag)", veth = "kvd\(tag)"
        try HostCommand.run("/usr/sbin/ip", ["netns", "add", ns])
        defer { _ = try? HostCommand.run("/usr/sbin/ip", ["netns", "del", ns]) }
        try HostCommand.run("/usr/sbin/ip", ["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        defer { _ = try? HostCommand.run("/usr/sbin/ip", ["link", "del", veth]) }
        try HostCommand.run("/usr/sbin/ip", ["link", "set", veth, "master", bridge, "up"])
        try HostCommand.run("/usr/sbin/ip", ["-n", ns, "link", "set", "eth0", "address", mac, "up"])
        let out = try HostCommand.run("/bin/sh", ["-c", "ip netns exec \(ns) \(busybox) udhcpc -i eth0 -n -q -t 5 -s /bin/true 2>&1"])
        return out.firstMatch(of: /lease of (\S+) obtained/).map { String($0.1) } ?? out
    }

    static func dnsmasqRunning(_ f: Fixture, _ id: String) -> Int32? {
        guard let p = f.service.networks!.dnsmasqs.withLock({ $0[id] }), ProcessLauncher.startTicks(p.pid) == p.startTicks,
            ProcessLauncher.state(p.pid) != "Z"
        else { return nil }
        return p.pid
    }

    @Test func createListDescribeDelete() async throws {
        let f = try Fixture(networks: true)
        let net = try #require(f.service.networks)
        let cidr = try Self.freeCIDR(f)
        try await f.app.test(.router) { c in
            let (status, text) = try await Self.create(c, f.alice, #"{"name": "web", "cidr": "\#(cidr)"}"#)
            #expect(status == .created, "\(text)")
            let web = try JSONDecoder().decode(Network.self, from: Data(text.utf8))
            #expect(web.cidr == cidr && web.gateway == IPv4Network(cidr)!.address(at: 1)!.description && web.isDefault && web.nics == 0)
            #expect(web.bridge == nil, "the bridge is a host detail")
            // On the host: the bridge with the gateway address, its dnsmasq, the table naming it.
            let record = try #require(try f.store.network(web.id, tenant: nil))
            #expect(net.host.linkExists(record.bridge))
            let addrs = try HostCommand.run("/usr/sbin/ip", ["-4", "-o", "addr", "show", "dev", record.bridge])
            #expect(addrs.contains("inet \(web.gateway)/24"), "\(addrs)")
            #expect(Self.dnsmasqRunning(f, web.id) != nil)
            let table = try #require(net.host.listTable(net.table))
            #expect(table.contains(record.bridge) && table.contains("masquerade"), "\(table)")
            // A second network: picked by kumod, not the default.
            let (s2, t2) = try await Self.create(c, f.alice, #"{"name": "db"}"#)
            #expect(s2 == .created, "\(t2)")
            let db = try JSONDecoder().decode(Network.self, from: Data(t2.utf8))
            #expect(!db.isDefault && IPv4Network(db.cidr)?.prefix == 24 && !IPv4Network(db.cidr)!.overlaps(IPv4Network(cidr)!))
            // Alice sees hers, by id or name; Bob sees none of them; the admin sees all, with bridges.
            try await c.execute(uri: "/v1/networks", method: .get, headers: auth(f.alice)) {
                #expect(parse(NetworkList.self, $0.body)?.networks.map(\.name) == ["web", "db"])
            }
            try await c.execute(uri: "/v1/networks/web", method: .get, headers: auth(f.alice)) { #expect(parse(Network.self, $0.body)?.id == web.id) }
            try await c.execute(uri: "/v1/networks", method: .get, headers: auth(f.bob)) { #expect(parse(NetworkList.self, $0.body)?.networks == []) }
            for ref in [web.id, "web"] {
                try await c.execute(uri: "/v1/networks/\(ref)", method: .get, headers: auth(f.bob)) { #expect($0.status == .notFound) }
                try await c.execute(uri: "/v1/networks/\(ref)", method: .delete, headers: auth(f.bob)) { #expect($0.status == .notFound) }
            }
            try await c.execute(uri: "/v1/networks", method: .get, headers: auth(f.admin)) {
                #expect(parse(NetworkList.self, $0.body)?.networks.first { $0.id == web.id }?.bridge == record.bridge)
            }
            // Bob may have a network of the same name; not an overlapping range (it says nothing of whose).
            let (s3, t3) = try await Self.create(c, f.bob, #"{"name": "web", "cidr": "\#(cidr)"}"#)
            #expect(s3 == .conflict && t3.contains("overlaps a network on this host") && !t3.contains("alice"), "\(t3)")
            let (s4, t4) = try await Self.create(c, f.bob, #"{"name": "web"}"#)
            #expect(s4 == .created, "\(t4)")
            // Deleting takes the bridge, dnsmasq, files and rules with it.
            let dnsmasq = try #require(Self.dnsmasqRunning(f, web.id))
            try await c.execute(uri: "/v1/networks/web", method: .delete, headers: auth(f.alice)) { #expect($0.status == .noContent) }
            #expect(!net.host.linkExists(record.bridge))
            #expect(ProcessLauncher.startTicks(dnsmasq) == nil || ProcessLauncher.state(dnsmasq) == "Z")
            #expect(!FileManager.default.fileExists(atPath: net.dir.appendingPathComponent(web.id).path))
            #expect(net.host.listTable(net.table)?.contains(record.bridge) == false)
            try await c.execute(uri: "/v1/networks/web", method: .get, headers: auth(f.alice)) { #expect($0.status == .notFound) }
            // The range is free again.
            let (s5, t5) = try await Self.create(c, f.alice, #"{"name": "web2", "cidr": "\#(cidr)"}"#)
            #expect(s5 == .created, "\(t5)")
        }
    }

    @Test func badRequestsChangeNothing() async throws {
        let f = try Fixture(networks: true)
        let net = try #require(f.service.networks)
        let cidr = try Self.freeCIDR(f)
        // A host network of its own (a bare bridge: this kernel has no dummy links) that a tenant range may not cover.
        let dummy = "kumodum\(UInt16.random(in: 0...0xFFFF))"
        let hostNet = try Self.freeCIDR(f)
        try HostCommand.run("/usr/sbin/ip", ["link", "add", dummy, "type", "bridge"])
        defer { _ = try? HostCommand.run("/usr/sbin/ip", ["link", "del", dummy]) }
        try HostCommand.run("/usr/sbin/ip", ["addr", "add", "\(IPv4Network(hostNet)!.address(at: 9)!)/24", "dev", dummy])
        let covering = IPv4Network(address: IPv4Address(IPv4Network(hostNet)!.address.value & 0xFFFF_0000), prefix: 16)!
        try await f.app.test(.router) { c in
            let (s, t) = try await Self.create(c, f.alice, #"{"name": "web", "cidr": "\#(cidr)"}"#)
            #expect(s == .created, "\(t)")
            let before = try f.store.allNetworks()
            let links = try net.host.ownedLinks()
            let table = net.host.listTable(net.table)
            for (json, status, says) in [
                (#"{"name": "web"}"#, HTTPResponse.Status.conflict, "you have a network named web"),
                (#"{"name": "other", "cidr": "\#(cidr)"}"#, .conflict, "overlaps your network web"),
                (#"{"name": "wide", "cidr": "\#(covering)"}"#, .badRequest, "overlaps this host's own network"),
                (#"{"name": "pub", "cidr": "8.8.8.0/24"}"#, .badRequest, "private range"),
                (#"{"name": "big", "cidr": "10.0.0.0/8"}"#, .badRequest, "must be a \\/16 to \\/28"),
                (#"{"name": "bits", "cidr": "10.1.2.3/24"}"#, .badRequest, "host bits"),
                (#"{"name": "net-abc"}"#, .badRequest, "net- starts network ids"),
                (#"{"name": "bad name"}"#, .badRequest, "network name"),
                (#"{"name": "\#(String(repeating: "n", count: 64))"}"#, .badRequest, "network name"),
                (#"{"name": "x", "colour": "blue"}"#, .badRequest, "colour"),
                (#"{"name": "x", "cidr": 24}"#, .badRequest, "field \\\"cidr\\\": wrong type"),
                (#"{"name": "x", "name": "y"}"#, .badRequest, "duplicate key"),
            ] {
                let (got, text) = try await Self.create(c, f.alice, json)
                #expect(got == status && text.contains(says), "\(json): \(got) \(text)")
            }
            #expect(try f.store.allNetworks() == before)
            #expect(try net.host.ownedLinks() == links)
            #expect(net.host.listTable(net.table) == table)
        }
    }

    /// dnsmasq that cannot start: the create fails with the reason and leaves no row, bridge or rule.
    @Test func aNetworkThatCannotBeMadeIsUndone() async throws {
        let f = try Fixture(networks: true, dnsmasqPath: "/nonexistent/dnsmasq")
        let net = try #require(f.service.networks)
        let cidr = try Self.freeCIDR(f)
        try await f.app.test(.router) { c in
            let (s, t) = try await Self.create(c, f.alice, #"{"name": "web", "cidr": "\#(cidr)"}"#)
            #expect(s == .internalServerError && t.contains("cannot set up network web"), "\(t)")
        }
        #expect(try f.store.allNetworks().isEmpty)
        #expect(try net.host.ownedLinks().isEmpty)
        #expect(net.host.listTable(net.table).map { !$0.contains("masquerade") } ?? true)
    }

    @Test func deadDnsmasqIsRestartedAndARestartedKumodRebuildsTheHost() throws {
        let f = try Fixture(networks: true)
        let net = try #require(f.service.networks)
        let alice = try #require(try f.store.principal(token: f.alice))
        let n = try f.service.createNetwork(CreateNetworkRequest(name: "web", cidr: try Self.freeCIDR(f)), by: alice)
        let first = try #require(Self.dnsmasqRunning(f, n.id))
        kill(first, SIGKILL)
        let deadline = Date().addingTimeInterval(20)
        var again: Int32? = nil
        while Date() < deadline {
            if let p = Self.dnsmasqRunning(f, n.id), p != first { again = p; break }
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(again != nil, "dnsmasq was not restarted")
        // What a restart finds: its bridge gone (a host reboot), a link of its own the store does not
        // name (a crash mid-delete), the table gone.
        let record = try #require(try f.store.network(n.id, tenant: nil))
        try net.host.deleteLink(record.bridge)
        let stray = "kbstray\(UInt16.random(in: 0...0xFFFF))"
        try net.host.createBridge(stray, tag: "net-stray", gateway: IPv4Address(IPv4Network(try Self.freeCIDR(f))!.address.value + 1), prefix: 24)
        defer { try? net.host.deleteLink(stray) }
        try net.host.remove(Firewall(table: net.table, bridges: []))
        let notes = try f.service.recoverNetworks()
        #expect(notes.contains { $0.contains("removed \(stray)") } && notes.contains { $0.contains("rebuilt bridge \(record.bridge)") }, "\(notes)")
        #expect(net.host.linkExists(record.bridge) && !net.host.linkExists(stray))
        #expect(net.host.listTable(net.table)?.contains(record.bridge) == true)
        #expect(Self.dnsmasqRunning(f, n.id) != nil)
        // Exactly one dnsmasq serves the network (the old one was ended, not left beside the new).
        let serving = try HostCommand.run("/usr/bin/pgrep", ["-f", "--", "--interface=\(record.bridge) "]).split(separator: "\n")
        #expect(serving.count == 1, "\(serving)")
    }

    /// NICs: an address from IPAM, a stable MAC, a tap in the network's bridge, the static lease in
    /// dnsmasq, the VMM's virtio-net and the kernel's ip=; released with the instance. A full network and
    /// a bad network name refuse the whole request.
    @Test func instancesGetNICs() async throws {
        let f = try Fixture(host: HostResources(logicalCPUs: 16, memoryMiB: 64 * 1024), networks: true)
        let net = try #require(f.service.networks)
        let admin = try #require(try f.store.principal(token: f.admin))
        _ = try f.service.registerImage(RegisterImageRequest(name: "tiny", kernel: f.kernel.path), by: admin)
        let small = try Self.freeCIDR(f)
        let tiny = IPv4Network(address: IPv4Address(IPv4Network(small)!.address.value), prefix: 28)!
        try await f.app.test(.router) { c in
            // No network named and none yet: the tenant's default one is made.
            var run: RunInstancesResponse? = nil
            try await c.execute(uri: "/v1/instances", method: .post, headers: auth(f.alice), body: body(#"{"type": "kumo.small", "image": "tiny"}"#)) {
                #expect($0.status == .accepted, "\(String(buffer: $0.body))")
                run = parse(RunInstancesResponse.self, $0.body)
            }
            let first = try #require(run?.instances.first)
            let nic = try #require(first.nics?.first)
            let aliceID = try #require(try f.store.principal(token: f.alice)).tenantID
            let dflt = try #require(try f.store.network("default", tenant: aliceID))
            #expect(nic.network == dflt.id && nic.networkName == "default" && nic.index == 0 && nic.tap == nil)
            #expect(nic.address == dflt.cidr.address(at: 2)!.description, "the first address after the gateway")
            #expect(nic.mac.hasPrefix("52:54:00:") && nic.mac.count == 17)
            _ = try await waitState(c, first.id, f.alice, .running)
            // On the host: the tap in the bridge, the lease, the VMM's config.
            let rec = try #require(try f.store.nics(instance: first.id).first)
            let link = try HostCommand.run("/usr/sbin/ip", ["-o", "link", "show", "dev", rec.tap])
            #expect(link.contains("master \(dflt.bridge)"), "\(link)")
            // dnsmasq answers for its name, and hands its MAC the address (a namespace on the bridge with that MAC).
            #expect(Self.lookup("\(first.id).kumo.internal", at: dflt.gateway.description).contains(nic.address))
            let leased = try Self.dhcp(mac: nic.mac, bridge: dflt.bridge)
            #expect(
                leased == nic.address,
                "\(leased)\n\((try? String(contentsOf: net.dir.appendingPathComponent("\(dflt.id)/dnsmasq.log"), encoding: .utf8)) ?? "")")
            let config = try String(contentsOf: f.dir.appendingPathComponent("instances/\(first.id)/config.json"), encoding: .utf8)
            #expect(
                config.contains(rec.tap) && config.contains(nic.mac) && config.contains("ip=\(nic.address)::\(dflt.gateway):255.255.255.0::eth0:off"),
                "\(config)")
            // An image that configures its own network (cloud-init's network-config) says ip=off: kumod adds no ip=.
            _ = try f.service.registerImage(RegisterImageRequest(name: "own-net", kernel: f.kernel.path, cmdline: "console=ttyS0 ip=off"), by: admin)
            let own = try f.service.runInstances(RunInstancesRequest(type: "kumo.small", image: "own-net"), by: admin).instances[0]
            _ = try await waitState(c, own.id, f.admin, .running)
            let ownConfig = try String(contentsOf: f.dir.appendingPathComponent("instances/\(own.id)/config.json"), encoding: .utf8)
            let ownAddress = try #require(own.nics?.first?.address)
            #expect(ownConfig.contains("ip=off") && !ownConfig.contains("ip=\(ownAddress)"), "\(ownConfig)")
            // The admin sees the tap; the MAC stays across a stop and start.
            try await c.execute(uri: "/v1/instances/\(first.id)", method: .get, headers: auth(f.admin)) {
                #expect(parse(Instance.self, $0.body)?.nics?.first?.tap == rec.tap)
            }
            try await c.execute(uri: "/v1/instances/\(first.id)/stop?force=true", method: .post, headers: auth(f.alice)) { #expect($0.status == .accepted) }
            _ = try await waitState(c, first.id, f.alice, .stopped)
            try await c.execute(uri: "/v1/instances/\(first.id)/start", method: .post, headers: auth(f.alice)) { #expect($0.status == .accepted) }
            let again = try await waitState(c, first.id, f.alice, .running)
            #expect(again.nics == first.nics)
            // Named networks: two NICs, eth0 and eth1; a full /28 refuses the whole request.
            let alice = try #require(try f.store.principal(token: f.alice))
            let lan = try f.service.createNetwork(CreateNetworkRequest(name: "lan", cidr: tiny.description), by: alice)
            for (json, status, says) in [
                (#"{"type": "kumo.small", "image": "tiny", "networks": ["nope"]}"#, HTTPResponse.Status.notFound, "no network nope"),
                (#"{"type": "kumo.small", "image": "tiny", "networks": ["lan", "lan"]}"#, .badRequest, "named twice"),
                (#"{"type": "kumo.small", "image": "tiny", "networks": ["a", "b", "c", "d", "e"]}"#, .badRequest, "at most 4"),
                (#"{"type": "kumo.small", "image": "tiny", "networks": ["lan"], "count": 14}"#, .serviceUnavailable, "no free address"),
            ] {
                try await c.execute(uri: "/v1/instances", method: .post, headers: auth(f.alice), body: body(json)) {
                    #expect($0.status == status && String(buffer: $0.body).contains(says), "\(json): \($0.status) \(String(buffer: $0.body))")
                }
            }
            #expect(try f.store.nics(network: lan.id).isEmpty, "a refused request allocates nothing")
            // Bob cannot put a NIC in Alice's network, by name or by id.
            for ref in ["lan", lan.id] {
                try await c.execute(
                    uri: "/v1/instances", method: .post, headers: auth(f.bob), body: body(#"{"type": "kumo.small", "image": "tiny", "networks": ["\#(ref)"]}"#)
                ) { #expect($0.status == .notFound) }
            }
            try await c.execute(
                uri: "/v1/instances", method: .post, headers: auth(f.alice),
                body: body(#"{"type": "kumo.small", "image": "tiny", "networks": ["lan", "default"], "count": 13}"#)
            ) {
                #expect($0.status == .accepted, "\(String(buffer: $0.body))")
                run = parse(RunInstancesResponse.self, $0.body)
            }
            let many = try #require(run?.instances)
            let addresses = many.compactMap { $0.nics?.first?.address }
            #expect(Set(addresses).count == 13 && addresses.allSatisfy { tiny.contains(IPv4Address($0)!) })
            #expect(many.allSatisfy { $0.nics?.map(\.networkName) == ["lan", "default"] && $0.nics?.map(\.index) == [0, 1] })
            #expect(Set(many.flatMap { $0.nics ?? [] }.map(\.mac)).count == 26)
            // A network with NICs is not deleted; deleting an instance frees its address and tap.
            try await c.execute(uri: "/v1/networks/lan", method: .delete, headers: auth(f.alice)) { #expect($0.status == .conflict) }
            let goneRec = try f.store.nics(instance: many[0].id)
            try await c.execute(uri: "/v1/instances/\(many[0].id)", method: .delete, headers: auth(f.alice)) { #expect($0.status == .ok) }
            #expect(goneRec.allSatisfy { !net.host.linkExists($0.tap) })
            #expect(try f.store.nics(instance: many[0].id).isEmpty)
            let lanGateway = try #require(try f.store.network(lan.id, tenant: nil)).gateway.description
            #expect(!Self.lookup("\(many[0].id).kumo.internal", at: lanGateway).contains(goneRec[0].address.description))
            #expect(Self.lookup("\(many[1].id).kumo.internal", at: lanGateway).contains(many[1].nics![0].address))
            try await c.execute(
                uri: "/v1/instances", method: .post, headers: auth(f.alice), body: body(#"{"type": "kumo.small", "image": "tiny", "networks": ["lan"]}"#)
            ) {
                #expect(parse(RunInstancesResponse.self, $0.body)?.instances.first?.nics?.first?.address == goneRec[0].address.description)
            }
            // A restart removes a tap the store does not name and keeps the others.
            let stray = "ktstray\(UInt16.random(in: 0...0xFFFF))"
            try net.host.createTap(stray, tag: "nic-stray", bridge: lan.bridge ?? (try f.store.network(lan.id, tenant: nil))!.bridge)
            _ = try f.service.recoverNetworks()
            #expect(!net.host.linkExists(stray))
            #expect(try f.store.allNICs().allSatisfy { net.host.linkExists($0.tap) })
            // Deleting every instance leaves no tap.
            for i in try f.service.describe(Service.ListQuery(), by: admin).instances { _ = try f.service.delete(i.id, by: admin) }
            #expect(try f.store.allNICs().isEmpty)
            #expect(try net.host.ownedLinks().allSatisfy { !$0.name.hasPrefix("kt") })
        }
    }

    /// An instance type's bandwidth and packet rate become every NIC's token buckets in kumo-vmm (each
    /// way); a type without them leaves the NIC unlimited; values out of range are refused.
    @Test func theTypesBandwidthLimitsEachNIC() async throws {
        let f = try Fixture(networks: true)
        let admin = try #require(try f.store.principal(token: f.admin))
        _ = try f.service.registerImage(RegisterImageRequest(name: "tiny", kernel: f.kernel.path), by: admin)
        try await f.app.test(.router) { c in
            for (json, says) in [
                (#"{"name": "bw.zero", "vcpus": 1, "memory_mib": 128, "bandwidth_mbps": 0}"#, "bandwidth_mbps must be 1–100000"),
                (#"{"name": "bw.huge", "vcpus": 1, "memory_mib": 128, "packets_per_second": 20000000}"#, "packets_per_second must be"),
            ] {
                try await c.execute(uri: "/v1/instance-types", method: .post, headers: auth(f.admin), body: body(json)) {
                    #expect($0.status == .badRequest && String(buffer: $0.body).contains(says), "\(String(buffer: $0.body))")
                }
            }
            try await c.execute(
                uri: "/v1/instance-types", method: .post, headers: auth(f.admin),
                body: body(#"{"name": "bw.ten", "vcpus": 1, "memory_mib": 128, "bandwidth_mbps": 10, "packets_per_second": 2000}"#)
            ) {
                #expect($0.status == .created)
                #expect(parse(InstanceType.self, $0.body)?.bandwidthMbps == 10)
            }
            try await c.execute(uri: "/v1/instance-types", method: .get, headers: auth(f.alice)) {
                #expect(String(buffer: $0.body).contains(#""bandwidth_mbps":10"#))
            }
            var ids: [String] = []
            for type in ["bw.ten", "kumo.small"] {
                try await c.execute(uri: "/v1/instances", method: .post, headers: auth(f.alice), body: body(#"{"type": "\#(type)", "image": "tiny"}"#)) {
                    #expect($0.status == .accepted, "\(String(buffer: $0.body))")
                    ids += parse(RunInstancesResponse.self, $0.body)?.instances.map(\.id) ?? []
                }
            }
            try #require(ids.count == 2)
            for id in ids { _ = try await waitState(c, id, f.alice, .running) }
            func config(_ id: String) throws -> String {
                try String(contentsOf: f.dir.appendingPathComponent("instances/\(id)/config.json"), encoding: .utf8)
            }
            // 10 Mbit/s = 1,250,000 bytes a second, 2,000 packets a second, each way.
            let limited = try config(ids[0])
            for key in ["rx_rate_limit", "tx_rate_limit", "1250000", "2000"] { #expect(limited.contains(key), "\(key): \(limited)") }
            #expect(!(try config(ids[1])).contains("rate_limit"))
        }
        // The smallest limit still passes a 64 KiB frame.
        #expect(ProcessLauncher.nicRateLimit(mbps: 1, pps: nil)?.bandwidth?.size == 125_000)
        #expect(ProcessLauncher.nicRateLimit(mbps: nil, pps: nil) == nil)
    }
}

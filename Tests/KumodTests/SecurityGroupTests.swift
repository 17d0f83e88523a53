import Foundation
import Hummingbird
import HummingbirdTesting
import KumoAPI
import SystemKit
import Testing
import TestSupport

@testable import Kumod

/// Security groups (issue 15, point 3) through the API and on the host: what a request may say, what the
/// NICs get, the table kumod writes (rebuilt identically after a restart), and real TCP between network
/// namespaces standing in for guests (each with its NIC's MAC and address on an isolated bridge port,
/// as a tap is) and for the outside.
@Suite(.serialized, .enabled(if: NetworkHostTests.canNet && access("/usr/sbin/dnsmasq", X_OK) == 0, "needs root, ip, nft and dnsmasq"))
struct SecurityGroupTests {
    static func request(
        _ c: some TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, _ token: String, _ json: String = ""
    ) async throws -> (HTTPResponse.Status, String) {
        try await c.execute(uri: uri, method: method, headers: auth(token), body: body(json)) { ($0.status, String(buffer: $0.body)) }
    }

    @Test func groupsRulesAndNICsThroughTheAPI() async throws {
        let f = try Fixture(networks: true)
        let net = try #require(f.service.networks)
        let admin = try #require(try f.store.principal(token: f.admin))
        _ = try f.service.registerImage(RegisterImageRequest(name: "tiny", kernel: f.kernel.path), by: admin)
        try await f.app.test(.router) { c in
            // A new group: egress anywhere, no ingress.
            var (status, text) = try await Self.request(c, .post, "/v1/security-groups", f.alice, #"{"name": "web", "description": "front end"}"#)
            #expect(status == .created, "\(text)")
            let web = try #require(parse(SecurityGroup.self, ByteBuffer(string: text)))
            #expect(web.rules.map(\.direction) == ["egress"] && web.rules.first?.cidr == "0.0.0.0/0" && !web.isDefault && web.nics == 0)
            (status, text) = try await Self.request(
                c, .post, "/v1/security-groups/web/rules", f.alice, #"{"direction": "ingress", "protocol": "tcp", "ports": "80", "cidr": "192.168.0.0/16"}"#)
            #expect(status == .created, "\(text)")
            let http = try #require(parse(SecurityGroupRule.self, ByteBuffer(string: text)))
            #expect(http.ports == "80" && http.protocol == "tcp" && http.cidr == "192.168.0.0/16")
            // Refusals, each changing nothing.
            (status, text) = try await Self.request(c, .post, "/v1/security-groups", f.bob, #"{"name": "bobs"}"#)
            let bobs = try #require(parse(SecurityGroup.self, ByteBuffer(string: text)))
            for (json, want, says) in [
                (#"{"direction": "ingress", "protocol": "tcp", "ports": "90-80", "cidr": "0.0.0.0/0"}"#, HTTPResponse.Status.badRequest, "above the last"),
                (#"{"direction": "ingress", "protocol": "tcp", "ports": "0", "cidr": "0.0.0.0/0"}"#, .badRequest, "1-65535"),
                (#"{"direction": "ingress", "protocol": "tcp", "ports": "65536", "cidr": "0.0.0.0/0"}"#, .badRequest, "1-65535"),
                (#"{"direction": "ingress", "protocol": "tcp", "ports": "80-", "cidr": "0.0.0.0/0"}"#, .badRequest, "a range like"),
                (#"{"direction": "ingress", "protocol": "icmp", "ports": "80", "cidr": "0.0.0.0/0"}"#, .badRequest, "tcp and udp"),
                (#"{"direction": "ingress", "protocol": "tcp", "ports": "80"}"#, .badRequest, "exactly one"),
                (#"{"direction": "ingress", "protocol": "tcp", "cidr": "0.0.0.0/0", "group": "web"}"#, .badRequest, "exactly one"),
                (#"{"direction": "ingress", "protocol": "tcp", "cidr": "10.0.0.1/8"}"#, .badRequest, "host bits"),
                (#"{"direction": "sideways", "protocol": "tcp", "cidr": "0.0.0.0/0"}"#, .badRequest, "ingress or egress"),
                (#"{"direction": "ingress", "protocol": "sctp", "cidr": "0.0.0.0/0"}"#, .badRequest, "tcp, udp, icmp or all"),
                (#"{"direction": "ingress", "protocol": "all", "cidr": "0.0.0.0/0", "port": 80}"#, .badRequest, "port"),
                (#"{"direction": "ingress", "protocol": "all", "group": "bobs"}"#, .notFound, "no security group bobs"),
                (#"{"direction": "ingress", "protocol": "all", "group": "\#(bobs.id)"}"#, .notFound, "no security group"),
                (#"{"direction": "ingress", "protocol": "tcp", "ports": "80", "cidr": "192.168.0.0/16"}"#, .conflict, "has that rule already"),
                (#"{"direction": "ingress", "protocol": "tcp", "ports": "1-65535", "cidr": "10.0.0.0/8", "description": "a\u0007b"}"#, .badRequest, "U+0007"),
            ] {
                (status, text) = try await Self.request(c, .post, "/v1/security-groups/web/rules", f.alice, json)
                #expect(status == want && text.contains(says), "\(json): \(status) \(text)")
            }
            for (json, want, says) in [
                (#"{"name": "web"}"#, HTTPResponse.Status.conflict, "named web"),
                (#"{"name": "sg-1"}"#, .badRequest, "sg- starts"),
                (#"{"name": "a b"}"#, .badRequest, "security group name"),
                (#"{"name": "ok", "rules": []}"#, .badRequest, "rules"),
            ] {
                (status, text) = try await Self.request(c, .post, "/v1/security-groups", f.alice, json)
                #expect(status == want && text.contains(says), "\(json): \(status) \(text)")
            }
            let now = try f.service.describeSecurityGroup("web", by: try #require(try f.store.principal(token: f.alice)))
            #expect(now.rules.count == 2, "\(now.rules)")
            // Another tenant's group is not found, by name or id; an admin sees every tenant's.
            for ref in ["web", web.id] {
                (status, _) = try await Self.request(c, .get, "/v1/security-groups/\(ref)", f.bob)
                #expect(status == .notFound)
            }
            (status, text) = try await Self.request(c, .get, "/v1/security-groups", f.admin)
            #expect(text.contains(web.id) && text.contains(bobs.id))
            (status, text) = try await Self.request(c, .get, "/v1/security-groups", f.bob)
            #expect(!text.contains(web.id) && text.contains(bobs.id))

            // An instance naming no group gets the tenant's default one (made now: its members reach each
            // other); one naming groups gets them, in order.
            (status, text) = try await Self.request(c, .post, "/v1/instances", f.alice, #"{"type": "kumo.small", "image": "tiny"}"#)
            let plain = try #require(parse(RunInstancesResponse.self, ByteBuffer(string: text))?.instances.first, "\(text)")
            let dflt = try f.service.describeSecurityGroup("default", by: try #require(try f.store.principal(token: f.alice)))
            #expect(dflt.isDefault && dflt.rules.contains { $0.direction == "ingress" && $0.group == dflt.id && $0.protocol == "all" })
            #expect(plain.nics?.first?.securityGroups == [dflt.id])
            (status, text) = try await Self.request(
                c, .post, "/v1/instances", f.alice, #"{"type": "kumo.small", "image": "tiny", "security_groups": ["web", "default"]}"#)
            let front = try #require(parse(RunInstancesResponse.self, ByteBuffer(string: text))?.instances.first, "\(text)")
            #expect(front.nics?.first?.securityGroups == [web.id, dflt.id])
            for (json, want, says) in [
                (#"{"type": "kumo.small", "image": "tiny", "security_groups": ["bobs"]}"#, HTTPResponse.Status.notFound, "no security group bobs"),
                (#"{"type": "kumo.small", "image": "tiny", "security_groups": []}"#, .badRequest, "1 to 5"),
                (#"{"type": "kumo.small", "image": "tiny", "security_groups": ["web", "web"]}"#, .badRequest, "named twice"),
                (#"{"type": "kumo.small", "image": "tiny", "networks": [], "security_groups": ["web"]}"#, .badRequest, "gets none"),
            ] {
                (status, text) = try await Self.request(c, .post, "/v1/instances", f.alice, json)
                #expect(status == want && text.contains(says), "\(json): \(status) \(text)")
            }
            _ = try await waitState(c, front.id, f.alice, .running)
            // On the host: the NIC's chains with its groups' rules, its tap held to its MAC and address.
            let nic = try #require(try f.store.nics(instance: front.id).first)
            let table = try #require(net.host.listTable(net.table))
            #expect(table.contains("chain in_\(nic.tap)") && table.contains("ip saddr 192.168.0.0/16 tcp dport 80 accept"), "\(table)")
            #expect(table.contains("\(nic.address) : jump in_\(nic.tap)"), "\(table)")
            let bridged = try #require(net.host.listTable(net.table, family: "bridge"))
            #expect(bridged.contains("chain nic_\(nic.tap)") && bridged.contains("ether saddr != \(nic.mac) drop"), "\(bridged)")
            #expect(try HostCommand.run("/usr/sbin/ip", ["-d", "link", "show", "dev", nic.tap]).contains("isolated on"))

            // The NIC's groups change on the running instance; a group on a NIC, or named by another
            // group's rule, is not deleted.
            (status, text) = try await Self.request(c, .put, "/v1/instances/\(front.id)/nics/0/security-groups", f.alice, #"{"security_groups": ["web"]}"#)
            #expect(status == .ok && parse(NIC.self, ByteBuffer(string: text))?.securityGroups == [web.id], "\(text)")
            for (uri, json, want) in [
                ("/v1/instances/\(front.id)/nics/1/security-groups", #"{"security_groups": ["web"]}"#, HTTPResponse.Status.notFound),
                ("/v1/instances/\(front.id)/nics/9/security-groups", #"{"security_groups": ["web"]}"#, .badRequest),
                ("/v1/instances/\(front.id)/nics/0/security-groups", #"{"security_groups": ["bobs"]}"#, .notFound),
                ("/v1/instances/\(front.id)/nics/0/security-groups", #"{"security_groups": ["a", "b", "c", "d", "e", "f"]}"#, .badRequest),
            ] {
                (status, text) = try await Self.request(c, .put, uri, f.alice, json)
                #expect(status == want, "\(uri) \(json): \(status) \(text)")
            }
            (status, _) = try await Self.request(c, .put, "/v1/instances/\(front.id)/nics/0/security-groups", f.bob, #"{"security_groups": ["bobs"]}"#)
            #expect(status == .notFound)
            (status, text) = try await Self.request(c, .delete, "/v1/security-groups/web", f.alice)
            #expect(status == .conflict && text.contains("on 1 NIC"), "\(text)")
            (status, text) = try await Self.request(c, .post, "/v1/security-groups", f.alice, #"{"name": "db"}"#)
            (status, text) = try await Self.request(
                c, .post, "/v1/security-groups/db/rules", f.alice, #"{"direction": "ingress", "protocol": "tcp", "ports": "5432", "group": "web"}"#)
            #expect(status == .created, "\(text)")
            let fromWeb = try #require(parse(SecurityGroupRule.self, ByteBuffer(string: text)))
            (status, text) = try await Self.request(
                c, .put, "/v1/instances/\(plain.id)/nics/0/security-groups", f.alice, #"{"security_groups": ["db", "default"]}"#)
            #expect(status == .ok, "\(text)")
            // The db NIC admits 5432 from the web group's members, a set holding the front end's address.
            let withSet = try #require(net.host.listTable(net.table))
            #expect(withSet.contains("set g_\(web.id.replacingOccurrences(of: "-", with: "_"))") && withSet.contains("tcp dport 5432 accept"), "\(withSet)")
            // A rule removed is gone from the table; a NIC's groups given back restore it.
            (status, _) = try await Self.request(c, .delete, "/v1/security-groups/web/rules/\(http.id)", f.alice)
            #expect(status == .noContent)
            #expect(net.host.listTable(net.table)?.contains("tcp dport 80 accept") == false)
            (status, _) = try await Self.request(c, .delete, "/v1/security-groups/web/rules/\(http.id)", f.alice)
            #expect(status == .notFound)
            try await c.execute(uri: "/v1/instances/\(front.id)", method: .delete, headers: auth(f.alice)) { #expect($0.status == .ok) }
            (status, text) = try await Self.request(c, .delete, "/v1/security-groups/web", f.alice)
            #expect(status == .conflict && text.contains("rule of group db"), "\(text)")
            (status, _) = try await Self.request(c, .delete, "/v1/security-groups/db/rules/\(fromWeb.id)", f.alice)
            (status, _) = try await Self.request(c, .delete, "/v1/security-groups/web", f.alice)
            #expect(status == .noContent)

            // A restarted kumod writes the same table from the same store.
            let before = try #require(net.host.listTable(net.table))
            try net.host.remove(Firewall(table: net.table, bridges: []))
            _ = try f.service.recoverNetworks()
            #expect(net.host.listTable(net.table) == before)
        }
    }

    /// Namespaces and links a test makes on the host, all removed by `end`.
    final class Rig: @unchecked Sendable {
        var namespaces: [String] = [], links: [String] = []
        let tag = String(UInt16.random(in: 0...0xFFFF), radix: 16)
        var count = 0

        func ip(_ args: [String]) throws { try HostCommand.run("/usr/sbin/ip", args) }

        func fresh() -> (ns: String, veth: String) {
            count += 1
            return ("kumosg\(tag)n\(count)", "kvs\(tag)n\(count)")
        }

        /// A namespace standing in for the NIC's guest: a veth on an isolated port of its bridge (as a
        /// tap is), the NIC's MAC and address, routed through the gateway.
        func guest(_ nic: Store.NICRecord) throws -> String {
            let (ns, veth) = fresh()
            try ip(["netns", "add", ns]); namespaces.append(ns)
            try ip(["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns]); links.append(veth)
            try ip(["link", "set", veth, "master", nic.bridge])
            try ip(["link", "set", "dev", veth, "type", "bridge_slave", "isolated", "on"])
            try ip(["link", "set", veth, "up"])
            try ip(["-n", ns, "link", "set", "eth0", "address", nic.mac, "up"])
            try ip(["-n", ns, "link", "set", "lo", "up"])
            try ip(["-n", ns, "addr", "add", "\(nic.address)/\(nic.cidr.prefix)", "dev", "eth0"])
            try ip(["-n", ns, "route", "add", "default", "via", "\(nic.gateway)"])
            return ns
        }

        /// A namespace standing in for the outside: a /24 of its own behind a veth (the host end .1, it .2).
        func outside(_ net: IPv4Network) throws -> (ns: String, address: String) {
            let (ns, veth) = fresh()
            try ip(["netns", "add", ns]); namespaces.append(ns)
            try ip(["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns]); links.append(veth)
            try ip(["addr", "add", "\(net.address(at: 1)!)/24", "dev", veth])
            try ip(["link", "set", veth, "up"])
            try ip(["-n", ns, "addr", "add", "\(net.address(at: 2)!)/24", "dev", "eth0"])
            try ip(["-n", ns, "link", "set", "eth0", "up"])
            try ip(["-n", ns, "link", "set", "lo", "up"])
            try ip(["-n", ns, "route", "add", "default", "via", "\(net.address(at: 1)!)"])
            return (ns, net.address(at: 2)!.description)
        }

        func end() {
            for l in links { _ = try? ip(["link", "del", l]) }
            for n in namespaces { _ = try? ip(["netns", "del", n]) }
        }
    }

    /// Real TCP against echo servers in namespaces that stand in for guests: TCP 80 from one outside
    /// range and not another, both ways; members of the default group reach each other (through the
    /// host: their ports are isolated) and a NIC outside it does not; an established flow outlives a
    /// change of rules that still allows it and stops with the one that does not; egress closed keeps
    /// answers flowing; another tenant's network cannot reach in even when a rule says anywhere; a port
    /// forward reaches the NIC for the sources its groups allow.
    @Test func securityGroupsHoldRealTraffic() async throws {
        let f = try Fixture(host: HostResources(logicalCPUs: 16, memoryMiB: 64 * 1024), networks: true)
        let admin = try #require(try f.store.principal(token: f.admin))
        let alice = try #require(try f.store.principal(token: f.alice))
        let bob = try #require(try f.store.principal(token: f.bob))
        _ = try f.service.registerImage(RegisterImageRequest(name: "tiny", kernel: f.kernel.path), by: admin)
        let rig = Rig()
        defer { rig.end() }
        let lan = try f.service.createNetwork(CreateNetworkRequest(name: "lan", cidr: try NetworkAPITests.freeCIDR(f)), by: alice)
        let bobLan = try f.service.createNetwork(CreateNetworkRequest(name: "lan", cidr: try NetworkAPITests.freeCIDR(f)), by: bob)
        let a = try rig.outside(IPv4Network(try NetworkAPITests.freeCIDR(f))!)
        let b = try rig.outside(IPv4Network(try NetworkAPITests.freeCIDR(f))!)
        let aRange = IPv4Network(address: IPv4Address(IPv4Address(a.address)!.value & ~0xFF), prefix: 24)!.description
        let bRange = IPv4Network(address: IPv4Address(IPv4Address(b.address)!.value & ~0xFF), prefix: 24)!.description
        let web = try f.service.createSecurityGroup(CreateSecurityGroupRequest(name: "web"), by: alice)
        _ = try f.service.addSecurityGroupRule("web", AddSecurityGroupRuleRequest(direction: "ingress", protocol: "tcp", ports: "80", cidr: aRange), by: alice)
        func run(_ groups: [String]?, _ by: Store.Principal, network: String = "lan") throws -> Store.NICRecord {
            let r = try f.service.runInstances(
                RunInstancesRequest(type: "kumo.small", image: "tiny", networks: [network], securityGroups: groups), by: by)
            return try #require(try f.store.nics(instance: r.instances[0].id).first)
        }
        let webNIC = try run(["web"], alice), peerNIC = try run(nil, alice), mateNIC = try run(nil, alice)
        let bobNIC = try run(nil, bob)
        // The firewall is in place once the taps are (before a VMM starts).
        try f.service.ensureTaps([webNIC, peerNIC, mateNIC, bobNIC])
        let gWeb = try rig.guest(webNIC), gPeer = try rig.guest(peerNIC), gMate = try rig.guest(mateNIC), gBob = try rig.guest(bobNIC)
        let servers = try [(gWeb, webNIC), (gMate, mateNIC), (gBob, bobNIC)].map {
            try NamespaceSockets.EchoServer(in: $0.0, address: "\($0.1.address)", port: 80)
        }
        let outsideServer = try NamespaceSockets.EchoServer(in: a.ns, address: a.address, port: 7000)
        defer { servers.forEach { $0.stop() }; outsideServer.stop() }
        let w = "\(webNIC.address)"

        // Ingress by range, both ways.
        #expect(try NamespaceSockets.reaches(from: a.ns, w, 80), "the allowed range reaches TCP 80")
        #expect(try !NamespaceSockets.reaches(from: b.ns, w, 80), "another range does not")
        // The default group: its members reach each other through the host; a NIC not in it does not.
        #expect(try NamespaceSockets.reaches(from: gPeer, "\(mateNIC.address)", 80), "default-group members reach each other")
        #expect(try !NamespaceSockets.reaches(from: gWeb, "\(mateNIC.address)", 80), "a NIC outside the default group does not")
        #expect(try !NamespaceSockets.reaches(from: a.ns, "\(mateNIC.address)", 80), "nothing from outside gets into the default group")
        // Egress anywhere (a new group's rule), masqueraded out.
        #expect(try NamespaceSockets.reaches(from: gWeb, a.address, 7000))
        // A port forward: the host's port reaches the NIC's, for whom its groups let in.
        let hostPort = try #require((0..<50).lazy.map { _ in Int.random(in: 20000...29999) }.first { !HostNetworking.hostUses("tcp", port: $0) })
        let pf = try f.service.createPortForward(webNIC.instanceID, nic: 0, CreatePortForwardRequest(hostPort: hostPort, port: 80), by: alice)
        let hostA = IPv4Network(aRange)!.address(at: 1)!.description, hostB = IPv4Network(bRange)!.address(at: 1)!.description
        #expect(try NamespaceSockets.reaches(from: a.ns, hostA, UInt16(hostPort)), "A reaches the web NIC through the forward")
        #expect(try !NamespaceSockets.reaches(from: b.ns, hostB, UInt16(hostPort)), "the forward does not open the NIC to B")
        try f.service.deletePortForward(webNIC.instanceID, nic: 0, forward: pf.id, by: alice)
        #expect(try !NamespaceSockets.reaches(from: a.ns, hostA, UInt16(hostPort)), "a forward removed is gone")

        // Rules change on the running NIC: a flow from A outlives a new rule for B; the NIC then given a
        // group that allows only B keeps B's flow and stops A's.
        let fromA = try #require(try NamespaceSockets.connect(from: a.ns, to: w, 80))
        defer { close(fromA) }
        #expect(NamespaceSockets.echoes(fromA, "before"))
        _ = try f.service.addSecurityGroupRule(
            "web", AddSecurityGroupRuleRequest(direction: "ingress", protocol: "tcp", ports: "80-81", cidr: bRange), by: alice)
        #expect(NamespaceSockets.echoes(fromA, "after a rule was added"), "an established flow still allowed goes on")
        let fromB = try #require(try NamespaceSockets.connect(from: b.ns, to: w, 80), "the new rule lets B in")
        defer { close(fromB) }
        #expect(NamespaceSockets.echoes(fromB, "b"))
        _ = try f.service.createSecurityGroup(CreateSecurityGroupRequest(name: "b-only"), by: alice)
        _ = try f.service.addSecurityGroupRule("b-only", AddSecurityGroupRuleRequest(direction: "ingress", protocol: "tcp", cidr: bRange), by: alice)
        let nic = try f.service.setSecurityGroups(webNIC.instanceID, nic: 0, SetSecurityGroupsRequest(securityGroups: ["b-only"]), by: alice)
        #expect(nic.securityGroups.count == 1)
        #expect(NamespaceSockets.echoes(fromB, "b, after the change"), "B's flow, still allowed, goes on")
        #expect(!NamespaceSockets.echoes(fromA, "a, after the change"), "A's flow, no longer allowed, stops")
        #expect(try !NamespaceSockets.reaches(from: a.ns, w, 80))

        // Egress closed: nothing new goes out, answers to what may come in still do.
        let bOnly = try f.service.describeSecurityGroup("b-only", by: alice)
        let egress = try #require(bOnly.rules.first { $0.direction == "egress" })
        try f.service.deleteSecurityGroupRule("b-only", rule: egress.id, by: alice)
        #expect(try !NamespaceSockets.reaches(from: gWeb, a.address, 7000), "no egress rule: nothing goes out")
        #expect(NamespaceSockets.echoes(fromB, "b, egress closed"), "answers to allowed ingress still go out")
        #expect(try NamespaceSockets.reaches(from: b.ns, w, 80))

        // Another tenant: not even a rule for anywhere lets Bob's network in.
        _ = try f.service.addSecurityGroupRule(
            "b-only", AddSecurityGroupRuleRequest(direction: "ingress", protocol: "all", cidr: "0.0.0.0/0"), by: alice)
        #expect(try NamespaceSockets.reaches(from: a.ns, w, 80), "anywhere now includes A")
        #expect(try !NamespaceSockets.reaches(from: gBob, w, 80), "another tenant's network does not reach in")
        #expect(try !NamespaceSockets.reaches(from: gWeb, "\(bobNIC.address)", 80), "nor the other way")
        _ = (lan, bobLan)
    }

    @Test func portForwardsThroughTheAPI() async throws {
        let f = try Fixture(networks: true)
        let net = try #require(f.service.networks)
        let admin = try #require(try f.store.principal(token: f.admin))
        _ = try f.service.registerImage(RegisterImageRequest(name: "tiny", kernel: f.kernel.path), by: admin)
        try await f.app.test(.router) { c in
            var (status, text) = try await Self.request(c, .post, "/v1/instances", f.alice, #"{"type": "kumo.small", "image": "tiny"}"#)
            let i = try #require(parse(RunInstancesResponse.self, ByteBuffer(string: text))?.instances.first, "\(text)")
            let free = { try #require((0..<50).lazy.map { _ in Int.random(in: 30000...39999) }.first { !HostNetworking.hostUses("tcp", port: $0) }) }
            let port = try free()
            let uri = "/v1/instances/\(i.id)/nics/0/port-forwards"
            (status, text) = try await Self.request(c, .post, uri, f.alice, #"{"host_port": \#(port), "port": 80}"#)
            #expect(status == .created, "\(text)")
            let pf = try #require(parse(PortForward.self, ByteBuffer(string: text)))
            #expect(pf.protocol == "tcp" && pf.hostPort == port && pf.port == 80 && pf.hostAddress == nil)
            // Listed on the instance's NIC; in the table as DNAT to its address.
            (status, text) = try await Self.request(c, .get, "/v1/instances/\(i.id)", f.alice)
            let nic = try #require(parse(Instance.self, ByteBuffer(string: text))?.nics?.first)
            #expect(nic.portForwards == [pf])
            let table = try #require(net.host.listTable(net.table))
            #expect(table.contains("tcp dport \(port) dnat ip to \(nic.address):80"), "\(table)")
            // Refusals, each changing nothing: a port taken (by this forward, by a host process), out of
            // range or privileged, a protocol or address that is not one, another tenant's instance.
            let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(listener) }
            var sin = NamespaceSockets.address("127.0.0.1", 0)
            _ = withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            listen(listener, 1)
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) } }
            let busy = Int(UInt16(bigEndian: sin.sin_port))
            for (json, want, says) in [
                (#"{"host_port": \#(port), "port": 81}"#, HTTPResponse.Status.conflict, "forwarded already"),
                (#"{"host_port": \#(busy), "port": 81}"#, .conflict, "tcp port \(busy) is in use on this host"),
                (#"{"host_port": 22, "port": 22}"#, .badRequest, "1024–65535"),
                (#"{"host_port": 70000, "port": 22}"#, .badRequest, "1024–65535"),
                (#"{"host_port": \#(try free()), "port": 0}"#, .badRequest, "port must be 1–65535"),
                (#"{"host_port": \#(try free()), "port": 80, "protocol": "icmp"}"#, .badRequest, "tcp or udp"),
                (#"{"host_port": \#(try free()), "port": 80, "host_address": "127.0.0.1"}"#, .badRequest, "not an address of this host"),
                (#"{"host_port": \#(try free()), "port": 80, "host_address": "203.0.113.9"}"#, .badRequest, "not an address of this host"),
                (#"{"host_port": \#(try free()), "port": 80, "host_address": "1.2.3"}"#, .badRequest, "not an IPv4 address"),
                (#"{"host_port": \#(try free()), "port": 80, "to": "x"}"#, .badRequest, "to"),
            ] {
                (status, text) = try await Self.request(c, .post, uri, f.alice, json)
                #expect(status == want && text.contains(says), "\(json): \(status) \(text)")
            }
            (status, _) = try await Self.request(c, .post, "/v1/instances/\(i.id)/nics/1/port-forwards", f.alice, #"{"host_port": \#(try free()), "port": 80}"#)
            #expect(status == .notFound)
            (status, _) = try await Self.request(c, .post, uri, f.bob, #"{"host_port": \#(try free()), "port": 80}"#)
            #expect(status == .notFound)
            (status, _) = try await Self.request(c, .delete, uri + "/\(pf.id)", f.bob)
            #expect(status == .notFound)
            #expect(try f.store.allPortForwards().count == 1)
            // UDP on the same host port is another forward; deleting the instance takes its forwards.
            (status, text) = try await Self.request(c, .post, uri, f.alice, #"{"host_port": \#(port), "port": 53, "protocol": "udp"}"#)
            #expect(status == .created || (status == .conflict && text.contains("uses udp")), "\(text)")
            (status, _) = try await Self.request(c, .delete, uri + "/\(pf.id)", f.alice)
            #expect(status == .noContent)
            #expect(net.host.listTable(net.table)?.contains("tcp dport \(port) dnat") == false)
            (status, _) = try await Self.request(c, .delete, uri + "/\(pf.id)", f.alice)
            #expect(status == .notFound)
            (status, _) = try await Self.request(c, .post, uri, f.alice, #"{"host_port": \#(port), "port": 80}"#)
            #expect(status == .created)
            try await c.execute(uri: "/v1/instances/\(i.id)", method: .delete, headers: auth(f.alice)) { #expect($0.status == .ok) }
            #expect(try f.store.allPortForwards().isEmpty)
            #expect(net.host.listTable(net.table)?.contains("dnat") == false)
        }
    }
}

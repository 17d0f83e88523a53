import Foundation
import KumoAPI
import Testing

@testable import Kumod

/// The pieces of tenant networks below the API: strict IPv4 parsing, the nftables table kumod writes
/// (checked as text and, with root and nft, loaded into the host's nftables and read back), and the
/// bridges and taps kumod makes (found again by their alias, removed).
struct NetworkHostTests {
    @Test func ipv4ParsingIsStrict() {
        #expect(IPv4Address("10.1.2.3")?.description == "10.1.2.3")
        for bad in ["10.1.2", "10.1.2.3.4", "10.01.2.3", "256.1.1.1", "1.2.3.-1", " 1.2.3.4", "1.2.3.4 ", "", "a.b.c.d", "1..2.3"] {
            #expect(IPv4Address(bad) == nil, "\(bad)")
        }
        #expect(IPv4Network("10.10.0.0/24")?.description == "10.10.0.0/24")
        for bad in ["10.10.0.1/24", "10.10.0.0/33", "10.10.0.0/024", "10.10.0.0", "10.10.0.0/", "10.10.0.0/24/1"] {
            #expect(IPv4Network(bad) == nil, "\(bad)")
        }
        let n = IPv4Network("10.10.0.0/24")!
        #expect(n.last.description == "10.10.0.255" && n.size == 256 && n.address(at: 1)?.description == "10.10.0.1")
        #expect(n.address(at: 256) == nil)
        #expect(n.overlaps(IPv4Network("10.10.0.128/25")!) && IPv4Network("10.0.0.0/8")!.overlaps(n))
        #expect(!n.overlaps(IPv4Network("10.10.1.0/24")!))
        #expect(n.isPrivate && IPv4Network("172.16.0.0/12")!.isPrivate && !IPv4Network("172.32.0.0/16")!.isPrivate)
        #expect(!IPv4Network("8.8.8.0/24")!.isPrivate && !IPv4Network("0.0.0.0/0")!.isPrivate)
    }

    @Test func cidrRulesOfANetwork() throws {
        #expect(try Network.validCIDR("192.168.5.0/24").prefix == 24)
        for (bad, says) in [
            ("10.0.0.0/8", "/16 to /28"), ("10.0.0.0/29", "/16 to /28"), ("100.64.0.0/24", "private range"), ("10.0.0.1/24", "host bits"),
        ] {
            #expect {
                _ = try Network.validCIDR(bad)
            } throws: { e in
                (e as? APIError)?.code == "invalid_argument" && (e as? APIError)?.message.contains(says) == true
            }
        }
    }

    static let twoNetworks = Firewall(
        table: "kumo",
        bridges: [
            .init(name: "kbb", cidr: IPv4Network("10.20.0.0/24")!, gateway: IPv4Address("10.20.0.1")!),
            .init(name: "kba", cidr: IPv4Network("10.10.0.0/24")!, gateway: IPv4Address("10.10.0.1")!),
        ],
        nics: [
            // A web server: TCP 80 from one range, anything from its own group, ICMP from anywhere; out
            // only to DNS servers of one range.
            .init(
                tap: "ktweb", mac: "52:54:00:00:00:02", address: IPv4Address("10.10.0.2")!,
                ingress: [
                    .init(proto: "tcp", ports: 80...80, peer: .cidr(IPv4Network("192.168.7.0/24")!)), .init(proto: "all", peer: .group("sg-app")),
                    .init(proto: "icmp", peer: .cidr(IPv4Network("0.0.0.0/0")!)), .init(proto: "all", peer: .group("sg-app")),
                ],
                egress: [.init(proto: "udp", ports: 53...53, peer: .cidr(IPv4Network("10.99.0.0/16")!))]),
            .init(
                tap: "ktapp", mac: "52:54:00:00:00:03", address: IPv4Address("10.10.0.3")!, ingress: [],
                egress: [.init(proto: "all", peer: .cidr(IPv4Network("0.0.0.0/0")!)), .init(proto: "tcp", ports: 8000...8100, peer: .group("sg-app"))]),
        ],
        groups: ["sg-app": [IPv4Address("10.10.0.3")!, IPv4Address("10.10.0.2")!]],
        forwards: [
            .init(proto: "udp", hostAddress: IPv4Address("192.0.2.7")!, hostPort: 5353, address: IPv4Address("10.10.0.3")!, port: 53),
            .init(proto: "tcp", hostAddress: nil, hostPort: 8080, address: IPv4Address("10.10.0.2")!, port: 80),
        ])

    @Test func firewallTableText() {
        let s = Self.twoNetworks.script
        #expect(s.contains("elements = { \"kba\", \"kbb\" }"))
        // Guests reach their own gateway for DNS and ping, and nothing else of the host's.
        #expect(s.contains("iifname \"kba\" ip saddr 10.10.0.0/24 ip daddr 10.10.0.1 udp dport 53 accept"))
        #expect(s.contains("iifname \"kbb\" ip saddr 10.20.0.0/24 ip daddr 10.20.0.1 icmp type echo-request accept"))
        #expect(s.contains("\t\tdrop\n\t}\n\tchain forward"))
        // No traffic between networks, no spoofed sources out, masquerade out.
        #expect(s.contains("oifname @bridges drop"))
        #expect(s.contains("iifname \"kba\" ip saddr != 10.10.0.0/24 drop"))
        #expect(s.contains("ip saddr 10.20.0.0/24 oifname != \"kbb\" masquerade"))
        // The same networks and NICs in another order give the same table (rebuilt identically).
        let again = Firewall(
            table: "kumo", bridges: Self.twoNetworks.bridges.reversed(), nics: Self.twoNetworks.nics.reversed(), groups: Self.twoNetworks.groups,
            forwards: Self.twoNetworks.forwards.reversed())
        #expect(again.script == s)
        #expect(Firewall(table: "kumo", bridges: []).script.contains("set bridges {\n\t\ttype ifname\n\t}"))
    }

    @Test func securityGroupsCompileToOneChainPerNICEachWay() {
        let s = Self.twoNetworks.script
        // Both tables go and come in one transaction.
        #expect(s.hasPrefix("table inet kumo\ndelete table inet kumo\ntable bridge kumo\ndelete table bridge kumo\ntable inet kumo {\n"))
        #expect(Self.twoNetworks.removal.contains("delete table bridge kumo"))
        // A NIC's address leads to its chains; a group's members are a set.
        #expect(s.contains("elements = { 10.10.0.3 : jump in_ktapp, 10.10.0.2 : jump in_ktweb }"))
        #expect(s.contains("elements = { 10.10.0.3 : jump eg_ktapp, 10.10.0.2 : jump eg_ktweb }"))
        #expect(s.contains("\tset g_sg_app {\n\t\ttype ipv4_addr\n\t\telements = { 10.10.0.2, 10.10.0.3 }\n\t}"))
        // Ingress: allowed traffic is accepted (the last check), the rest dropped; a rule given twice is one.
        let web = s.components(separatedBy: "\tchain in_ktweb {\n")[1].components(separatedBy: "\t}")[0]
        #expect(
            web == "\t\tip saddr 192.168.7.0/24 tcp dport 80 accept\n\t\tip saddr @g_sg_app accept\n\t\tmeta l4proto icmp accept\n\t\tdrop\n", "\(web)")
        let app = s.components(separatedBy: "\tchain in_ktapp {\n")[1].components(separatedBy: "\t}")[0]
        #expect(app == "\t\tdrop\n", "no ingress rule: nothing gets in")
        #expect(s.contains("\tchain eg_ktweb {\n\t\tip daddr 10.99.0.0/16 udp dport 53 return\n\t\tdrop\n\t}"))
        #expect(s.contains("\tchain eg_ktapp {\n\t\treturn\n\t\tip daddr @g_sg_app tcp dport 8000-8100 return\n\t\tdrop\n\t}"))
        // Stateful: answers pass both ways, every other packet is held to the rules (so a rule removed
        // from a running instance stops its flows, and one kept keeps them).
        #expect(
            s.contains(
                "\tchain to_networks {\n\t\tct direction reply ct state established return\n\t\tct state related return\n\t\tip daddr vmap @ingress\n\t\tdrop\n\t}"
            ))
        #expect(s.contains("\t\tip saddr vmap @egress\n\t}"))
        // The host's own packets: its DHCP answers, never a redirect, the rest as routed traffic.
        #expect(s.contains("\tchain from_host {\n\t\ticmp type redirect drop\n\t\tudp sport 67 udp dport 68 return\n\t\tjump to_networks\n\t}"))
        // Port forwards: DNAT from outside and from the host itself (not loopback), sorted.
        #expect(
            s.contains(
                "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
                    + "\t\tfib daddr type local tcp dport 8080 dnat ip to 10.10.0.2:80\n\t\tip daddr 192.0.2.7 udp dport 5353 dnat ip to 10.10.0.3:53\n\t}"))
        #expect(s.contains("\t\tip daddr != 127.0.0.0/8 fib daddr type local tcp dport 8080 dnat ip to 10.10.0.2:80\n"))
        // Each tap sends only as its NIC.
        #expect(s.contains("\"ktweb\" : jump nic_ktweb"))
        #expect(
            s.contains(
                "\tchain nic_ktweb {\n\t\tether saddr != 52:54:00:00:00:02 drop\n\t\tarp saddr ether 52:54:00:00:00:02 arp saddr ip { 10.10.0.2, 0.0.0.0 } return\n"
                    + "\t\tip saddr 10.10.0.2 return\n\t\tip saddr 0.0.0.0 udp sport 68 udp dport 67 return\n\t\tdrop\n\t}"))
    }

    static var canNet: Bool { getuid() == 0 && access("/usr/sbin/nft", X_OK) == 0 && access("/usr/sbin/ip", X_OK) == 0 }

    @Test(.enabled(if: canNet, "needs root, nft and ip")) func firewallLoadsIntoTheHostAndGoes() throws {
        let table = "kumotest\(UInt32.random(in: 0...UInt32.max))"
        // With a load balancer's listener in front of both NICs (round robin, persistence).
        let lb = LoadBalancerRules(listeners: [
            .init(
                id: "l1", address: IPv4Address("192.0.2.80")!, proto: "tcp", port: 80, scheduler: .roundRobin, persistence: 60,
                backends: Self.twoNetworks.nics.map { .init(address: $0.address, port: 8080) })
        ])
        let fw = Firewall(
            table: table, bridges: Self.twoNetworks.bridges, nics: Self.twoNetworks.nics, groups: Self.twoNetworks.groups, forwards: Self.twoNetworks.forwards,
            balancers: lb)
        let net = HostNetworking(kumodID: "test\(getpid())")
        try net.apply(fw)
        defer { try? net.remove(fw) }
        let listed = try #require(net.listTable(table))
        #expect(listed.contains("chain from_guests") && listed.contains("masquerade") && listed.contains("\"kba\""), "\(listed)")
        #expect(listed.contains("chain in_ktweb") && listed.contains("ip saddr @g_sg_app accept"), "\(listed)")
        #expect(listed.contains("chain lb_l1") && listed.contains("numgen inc mod 2") && listed.contains("map lb_persist_l1"), "\(listed)")
        let bridged = try #require(net.listTable(table, family: "bridge"))
        #expect(bridged.contains("chain nic_ktapp") && bridged.contains("ether saddr != 52:54:00:00:00:03 drop"), "\(bridged)")
        // Applying again replaces it (no duplicate rules).
        try net.apply(fw)
        let twice = try #require(net.listTable(table))
        #expect(twice.components(separatedBy: "masquerade").count == listed.components(separatedBy: "masquerade").count)
        try net.remove(fw)
        #expect(net.listTable(table) == nil && net.listTable(table, family: "bridge") == nil)
        try net.remove(fw)  // removing what is gone is not an error
    }

    @Test(.enabled(if: canNet, "needs root, nft and ip")) func bridgesAndTapsAreFoundByTheirOwnerAndRemoved() throws {
        let id = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        let net = HostNetworking(kumodID: "t\(id)")
        let other = HostNetworking(kumodID: "o\(id)")
        let bridge = "kbt\(id)", tap = "ktt\(id)"
        try net.createBridge(bridge, tag: "net-1", gateway: IPv4Address("10.231.7.1")!, prefix: 24)
        defer { try? net.deleteLink(bridge) }
        try net.createTap(tap, tag: "nic-1", bridge: bridge)
        defer { try? net.deleteLink(tap) }
        let owned = try net.ownedLinks()
        #expect(owned.contains(.init(name: bridge, tag: "net-1")) && owned.contains(.init(name: tap, tag: "nic-1")), "\(owned)")
        #expect(try other.ownedLinks().isEmpty)
        // A name taken is refused, not reused.
        #expect(throws: HostCommandFailure.self) { try other.createBridge(bridge, tag: "x", gateway: IPv4Address("10.231.8.1")!, prefix: 24) }
        // The host's networks, without ours.
        #expect(try net.hostNetworks(excluding: [bridge]).allSatisfy { !$0.contains(IPv4Address("10.231.7.5")!) })
        #expect(try net.hostNetworks(excluding: []).contains { $0.contains(IPv4Address("10.231.7.5")!) })
        try net.deleteLink(tap)
        try net.deleteLink(bridge)
        #expect(try net.ownedLinks().isEmpty)
    }
}

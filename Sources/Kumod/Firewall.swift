// The nftables tables kumod owns (docs/NETWORK.md): written whole from the store and applied with
// one `nft -f` transaction (delete and re-create in the same batch), so the host never sees half a
// ruleset and a restart of kumod (or of the host) rebuilds the same tables from the same store.
//
// Two tables of one name: `inet` (what guests may reach of the host, between networks, NAT, and the
// security groups, stateful, by NIC address) and `bridge` (each tap may send only with its own MAC
// and address, so an address names its NIC). Taps are isolated bridge ports and the bridge answers ARP
// for the whole network (proxy_arp_pvlan): guests of one network reach each other through the host's
// routing, where conntrack sees them, never port to port.
import KumoAPI

public struct Firewall: Sendable, Equatable {
    public struct Bridge: Sendable, Equatable {
        public var name: String
        public var cidr: IPv4Network
        public var gateway: IPv4Address
        public init(name: String, cidr: IPv4Network, gateway: IPv4Address) { self.name = name; self.cidr = cidr; self.gateway = gateway }
    }

    /// A security group rule's other end.
    public enum Peer: Sendable, Equatable {
        case cidr(IPv4Network)
        /// The addresses of the NICs in a group (its id).
        case group(String)
    }

    public struct Rule: Sendable, Equatable {
        /// "tcp", "udp", "icmp" or "all".
        public var proto: String
        public var ports: ClosedRange<Int>?
        public var peer: Peer
        public init(proto: String, ports: ClosedRange<Int>? = nil, peer: Peer) { self.proto = proto; self.ports = ports; self.peer = peer }
    }

    /// One NIC's filter: its tap, what it may send as, and its groups' rules (allow rules, in order).
    public struct NIC: Sendable, Equatable {
        public var tap: String
        public var mac: String
        public var address: IPv4Address
        public var ingress: [Rule]
        public var egress: [Rule]
        public init(tap: String, mac: String, address: IPv4Address, ingress: [Rule], egress: [Rule]) {
            self.tap = tap; self.mac = mac; self.address = address; self.ingress = ingress; self.egress = egress
        }
    }

    /// A host port sent on to a NIC's port (DNAT); nil host address: every address of the host.
    public struct Forward: Sendable, Equatable {
        public var proto: String
        public var hostAddress: IPv4Address?
        public var hostPort: Int
        public var address: IPv4Address
        public var port: Int
        public init(proto: String, hostAddress: IPv4Address?, hostPort: Int, address: IPv4Address, port: Int) {
            self.proto = proto; self.hostAddress = hostAddress; self.hostPort = hostPort; self.address = address; self.port = port
        }
    }

    /// The tables' name ("kumo"; tests give each kumod its own).
    public var table: String
    /// Sorted by name, so the same store always gives the same text.
    public var bridges: [Bridge]
    /// Sorted by tap.
    public var nics: [NIC]
    /// Members (addresses) of the groups rules name, by group id.
    public var groups: [String: [IPv4Address]]
    /// Sorted by protocol and host port.
    public var forwards: [Forward]
    /// Load balancers' listeners (docs/LB.md): their chains go in the inet table, ahead of the forwards.
    public var balancers: LoadBalancerRules

    public init(
        table: String, bridges: [Bridge], nics: [NIC] = [], groups: [String: [IPv4Address]] = [:], forwards: [Forward] = [],
        balancers: LoadBalancerRules = LoadBalancerRules(listeners: [])
    ) {
        self.table = table
        self.bridges = bridges.sorted { $0.name < $1.name }
        self.nics = nics.sorted { $0.tap < $1.tap }
        self.groups = groups.mapValues { $0.sorted() }
        self.forwards = forwards.sorted { ($0.proto, $0.hostPort) < ($1.proto, $1.hostPort) }
        self.balancers = balancers
    }

    /// A forward's DNAT rule: to the host's address given, or any local one (loopback aside, in `output`,
    /// where it would need route_localnet).
    static func dnat(_ f: Forward, local: Bool) -> String {
        let to = f.hostAddress.map { "ip daddr \($0) " } ?? (local ? "ip daddr != 127.0.0.0/8 fib daddr type local " : "fib daddr type local ")
        return "\t\t\(to)\(f.proto) dport \(f.hostPort) dnat ip to \(f.address):\(f.port)"
    }

    static func quoted(_ name: String) -> String { "\"\(name)\"" }
    static func setName(_ group: String) -> String { "g_" + group.map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined() }

    static func elements(_ items: [String]) -> String? { items.isEmpty ? nil : "\t\telements = { \(items.joined(separator: ", ")) }" }

    /// A rule as one nft statement: `ip saddr` (ingress) or `ip daddr` (egress) of its peer, its protocol
    /// and ports, then the verdict for allowed: ingress is the last check a packet meets (accept), egress
    /// is followed by the receiver's ingress (return). The chain's last word is drop.
    static func statement(_ r: Rule, ingress: Bool) -> String {
        var parts: [String] = []
        let key = ingress ? "ip saddr" : "ip daddr"
        switch r.peer {
        case let .cidr(c) where c.prefix > 0: parts.append("\(key) \(c)")
        case .cidr: break  // anywhere
        case let .group(g): parts.append("\(key) @\(setName(g))")
        }
        switch (r.proto, r.ports) {
        case ("all", _): break
        case let (p, range?): parts.append(range.count == 1 ? "\(p) dport \(range.lowerBound)" : "\(p) dport \(range.lowerBound)-\(range.upperBound)")
        case let (p, nil): parts.append("meta l4proto \(p)")
        }
        parts.append(ingress ? "accept" : "return")
        return parts.joined(separator: " ")
    }

    /// The nft script: both tables' creation (so the deletes never fail), their deletion, the tables.
    public var script: String {
        let t = "inet \(table)", b = "bridge \(table)"
        var lines = ["table \(t)", "delete table \(t)", "table \(b)", "delete table \(b)", "table \(t) {"]
        lines += ["\tset bridges {", "\t\ttype ifname", Self.elements(bridges.map { Self.quoted($0.name) }), "\t}"].compactMap { $0 }
        // Security groups: a NIC's address leads to its chain each way.
        lines += ["\tmap ingress {", "\t\ttype ipv4_addr : verdict", Self.elements(nics.map { "\($0.address) : jump in_\($0.tap)" }), "\t}"]
            .compactMap { $0 }
        lines += ["\tmap egress {", "\t\ttype ipv4_addr : verdict", Self.elements(nics.map { "\($0.address) : jump eg_\($0.tap)" }), "\t}"]
            .compactMap { $0 }
        for g in groups.keys.sorted() {
            lines += ["\tset \(Self.setName(g)) {", "\t\ttype ipv4_addr", Self.elements(groups[g]!.map(\.description)), "\t}"].compactMap { $0 }
        }
        // Guest → host: DHCP, DNS and ping to its own gateway, answers to what the host started; nothing
        // else (not kumod's API, not the host's other services). IPv6 from guests: none.
        lines += [
            "\tchain input {",
            "\t\ttype filter hook input priority filter - 1; policy accept;",
            "\t\tiifname @bridges jump from_guests",
            "\t}",
            "\tchain from_guests {",
            "\t\tct state established,related accept",
            "\t\tmeta nfproto ipv4 udp sport 68 udp dport 67 accept",
        ]
        lines += balancers.toProxies
        for b in bridges {
            let i = "iifname \(Self.quoted(b.name)) ip saddr \(b.cidr) ip daddr \(b.gateway)"
            lines += [
                "\t\t\(i) udp dport 53 accept",
                "\t\t\(i) tcp dport 53 accept",
                "\t\t\(i) icmp type echo-request accept",
            ]
        }
        lines += ["\t\tdrop", "\t}"]
        // Routed traffic of a network (to the uplink, or to another guest of the same network through the
        // host): out of a network only from its own range, never into another network; then the sender's
        // egress rules and the receiver's ingress rules, for every packet but answers (conntrack), so a
        // rule removed stops its flows and a rule kept keeps them.
        lines += [
            "\tchain forward {",
            "\t\ttype filter hook forward priority filter - 1; policy accept;",
            "\t\tiifname @bridges jump from_networks",
            "\t\toifname @bridges jump to_networks",
            "\t}",
            "\tchain output {",
            "\t\ttype filter hook output priority filter - 1; policy accept;",
            "\t\toifname @bridges jump from_host",
            "\t}",
            "\tchain from_networks {",
        ]
        for b in bridges {
            lines.append("\t\tiifname \(Self.quoted(b.name)) ip saddr != \(b.cidr) drop")
        }
        for b in bridges {
            lines.append("\t\tiifname \(Self.quoted(b.name)) oifname != \(Self.quoted(b.name)) oifname @bridges drop")
        }
        lines += [
            "\t\tmeta nfproto != ipv4 drop",
            "\t\tct direction reply ct state established return",
            "\t\tct state related return",
            "\t\tip saddr vmap @egress",
            "\t}",
            "\tchain to_networks {",
            "\t\tct direction reply ct state established return",
            "\t\tct state related return",
            "\t\tip daddr vmap @ingress",
            "\t\tdrop",
            "\t}",
            // The host's own packets into a network: its DHCP answers, never an ICMP redirect (guests of a
            // network reach each other through the host on purpose); the rest as routed traffic.
            "\tchain from_host {",
            "\t\ticmp type redirect drop",
            "\t\tudp sport 67 udp dport 68 return",
        ]
        lines += balancers.fromHost
        lines += [
            "\t\tjump to_networks",
            "\t}",
        ]
        for n in nics {
            lines.append("\tchain in_\(n.tap) {")
            lines += Self.unique(n.ingress.map { "\t\t" + Self.statement($0, ingress: true) })
            lines += ["\t\tdrop", "\t}", "\tchain eg_\(n.tap) {"]
            lines += Self.unique(n.egress.map { "\t\t" + Self.statement($0, ingress: false) })
            lines += ["\t\tdrop", "\t}"]
        }
        // Port forwards: a host port's traffic to a NIC, from outside (prerouting) and from the host itself
        // (output); the NIC's security groups still decide (to_networks sees the NIC's address).
        lines += ["\tchain prerouting {", "\t\ttype nat hook prerouting priority dstnat; policy accept;"]
        lines += forwards.map { Self.dnat($0, local: false) }
        lines += ["\t}", "\tchain local_forwards {", "\t\ttype nat hook output priority -100; policy accept;"]
        lines += forwards.map { Self.dnat($0, local: true) }
        lines.append("\t}")
        // NAT egress: a network's traffic leaving by any other interface takes the host's address there.
        lines += [
            "\tchain postrouting {",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        ]
        for b in bridges {
            lines.append("\t\tip saddr \(b.cidr) oifname != \(Self.quoted(b.name)) masquerade")
        }
        lines.append("\t}")
        lines += balancers.lines
        lines.append("}")
        // Each tap sends as its NIC or not at all: its MAC, its address (0.0.0.0 only for DHCP), ARP
        // that says the same, IPv4 and ARP only.
        lines += [
            "table \(b) {", "\tmap nics {", "\t\ttype ifname : verdict", Self.elements(nics.map { "\(Self.quoted($0.tap)) : jump nic_\($0.tap)" }), "\t}",
        ]
        .compactMap { $0 }
        lines += [
            "\tchain prerouting {",
            "\t\ttype filter hook prerouting priority filter - 1; policy accept;",
            "\t\tiifname vmap @nics",
            "\t}",
        ]
        for n in nics {
            lines += [
                "\tchain nic_\(n.tap) {",
                "\t\tether saddr != \(n.mac) drop",
                "\t\tarp saddr ether \(n.mac) arp saddr ip { \(n.address), 0.0.0.0 } return",
                "\t\tip saddr \(n.address) return",
                "\t\tip saddr 0.0.0.0 udp sport 68 udp dport 67 return",
                "\t\tdrop",
                "\t}",
            ]
        }
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    static func unique(_ lines: [String]) -> [String] {
        var seen = Set<String>()
        return lines.filter { seen.insert($0).inserted }
    }

    /// The script that removes both tables (each is created first, so this works when there is none).
    public var removal: String { "table inet \(table)\ndelete table inet \(table)\ntable bridge \(table)\ndelete table bridge \(table)\n" }
}

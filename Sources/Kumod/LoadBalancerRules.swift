// The load balancer's kernel data path (issue 19) as nftables text, for the table kumod owns: each
// listener's address and port lead to a chain that picks a backend and DNATs to it. Conntrack keeps every
// established connection on the backend it got, through rule changes and kumod restarts; what the chains
// decide is only where new connections go.
//   round robin / weighted round robin: `numgen inc mod N` over one cycle (WeightedRoundRobin)
//   source-IP consistent hashing: `jhash ip saddr mod M` over a Maglev table (a prime M ≥ 100 × backends)
//   persistence by source IP: a dynamic map, looked up first and filled after DNAT with the backend the
//   new connection got, each entry living `timeout` seconds past its last connection
// Weighted least connections needs connection counts, which nftables cannot choose by: its listener's
// chain DNATs every new connection to kumod's proxy (LeastConnectionsProxy.swift) on a host address.
import KumoAPI

public struct LoadBalancerRules: Sendable, Equatable {
    public enum Scheduler: String, Sendable, Equatable, CaseIterable {
        case roundRobin = "rr", weightedRoundRobin = "wrr", sourceHash = "sh"
    }

    public struct Backend: Sendable, Equatable {
        public var address: IPv4Address
        public var port: Int
        public var weight: Int
        public init(address: IPv4Address, port: Int, weight: Int = 1) { self.address = address; self.port = port; self.weight = weight }
        var name: String { "\(address):\(port)" }
    }

    public struct Listener: Sendable, Equatable {
        /// A short name of letters, digits and _ (the chain and map names derive from it).
        public var id: String
        public var address: IPv4Address
        /// "tcp" or "udp".
        public var proto: String
        public var port: Int
        public var scheduler: Scheduler
        /// Seconds a client keeps its backend after its last new connection; nil: no persistence.
        public var persistence: Int?
        /// The backends in rotation (healthy and not draining), in a stable order.
        public var backends: [Backend]
        /// Every new connection to kumod's proxy on this address and port instead (weighted least
        /// connections); the proxy does the choosing and the remembering.
        public var proxy: Backend?
        public init(
            id: String, address: IPv4Address, proto: String, port: Int, scheduler: Scheduler, persistence: Int? = nil, backends: [Backend],
            proxy: Backend? = nil
        ) {
            self.id = id; self.address = address; self.proto = proto; self.port = port; self.scheduler = scheduler
            self.persistence = persistence; self.backends = backends; self.proxy = proxy
        }
    }

    /// The end of a drain: the connections a listener still has on `backend` (which has left its rules;
    /// conntrack kept them going so far) are deleted from conntrack, and the next packet of each meets no
    /// DNAT and is answered with a reset. What `conntrack -D` needs to name exactly those: the address the
    /// client dialled and the backend that answers.
    public static func drainEnd(_ l: Listener, backend b: Backend) -> [String] {
        [
            "-D", "-p", l.proto, "--orig-dst", "\(l.address)", "--orig-port-dst", "\(l.port)", "--reply-src", "\(b.address)",
            "--reply-port-src", "\(b.port)",
        ]
    }

    public var listeners: [Listener]
    /// Every backend of every listener, in rotation or not: kumod's own connections to them (health
    /// probes, the proxy's) pass the backends' security groups.
    public var probed: [Backend]
    public init(listeners: [Listener], probed: [Backend] = []) {
        self.listeners = listeners.sorted { $0.id < $1.id }
        var seen = Set<String>()
        self.probed = probed.filter { seen.insert($0.name).inserted }.sorted { $0.name < $1.name }
    }

    /// Lines for the host's own packets into networks (Firewall's from_host chain): to the backends' ports.
    public var fromHost: [String] { probed.map { "\t\tip daddr \($0.address) tcp dport \($0.port) accept" } }

    /// Lines for guests' packets to the host (Firewall's from_guests chain): the proxies their listeners
    /// DNAT to, and nothing else of the host's (only a DNATed connection gets there).
    public var toProxies: [String] {
        listeners.compactMap { l in l.proxy.map { "\t\tct status dnat ip daddr \($0.address) tcp dport \($0.port) accept" } }
    }

    /// The Maglev table size for `n` backends: the smallest of a few primes at least 100 × n.
    static func tableSize(_ n: Int) -> Int {
        [251, 503, 1021, 2039, 4093, 8191, 16381, 32749, 65521].first { $0 >= 100 * n } ?? 65521
    }

    /// A fixed seed for jhash (the same table maps a client to the same slot after any restart).
    static let seed = "0x6b756d6f"

    static func target(_ b: Backend) -> String { "\(b.address) . \(b.port)" }

    /// The listener's choice of backend: a DNAT, or a reset when it has none in rotation.
    static func choice(_ l: Listener) -> String {
        if let p = l.proxy { return "dnat ip to \(p.address):\(p.port)" }
        guard !l.backends.isEmpty else { return l.proto == "tcp" ? "reject with tcp reset" : "reject" }
        switch l.scheduler {
        case .roundRobin, .weightedRoundRobin:
            let order = WeightedRoundRobin.cycle(l.backends.map { l.scheduler == .roundRobin ? 1 : $0.weight })
            let map = order.enumerated().map { "\($0.offset) : \(target(l.backends[$0.element]))" }.joined(separator: ", ")
            return "dnat ip to numgen inc mod \(order.count) map { \(map) }"
        case .sourceHash:
            let m = tableSize(l.backends.count)
            let table = Maglev.table(l.backends.map { ($0.name, $0.weight) }, size: m)
            let map = table.enumerated().map { "\($0.offset) : \(target(l.backends[$0.element]))" }.joined(separator: ", ")
            return "dnat ip to jhash ip saddr mod \(m) seed \(seed) map { \(map) }"
        }
    }

    /// The lines inside `table inet NAME { … }`: maps, the listeners' chains, and base chains at the nat
    /// hooks (prerouting for clients elsewhere, output for the host's own) and after DNAT (to remember).
    public var lines: [String] {
        guard !listeners.isEmpty else { return [] }
        var out: [String] = []
        for l in listeners {
            if let t = l.persistence, l.proxy == nil {
                out += [
                    "\tmap lb_persist_\(l.id) {", "\t\ttype ipv4_addr : ipv4_addr . inet_service", "\t\tflags dynamic, timeout", "\t\ttimeout \(t)s",
                    "\t}",
                ]
            }
            out.append("\tchain lb_\(l.id) {")
            // (A port in a DNAT needs the transport protocol matched in the same rule.)
            if l.persistence != nil, l.proxy == nil, !l.backends.isEmpty {
                // A remembered backend that has left rotation is forgotten, not used (the map is rebuilt empty).
                out.append("\t\tmeta l4proto \(l.proto) ip saddr @lb_persist_\(l.id) dnat ip to ip saddr map @lb_persist_\(l.id)")
            }
            out += ["\t\tmeta l4proto \(l.proto) \(Self.choice(l))", "\t}"]
        }
        let jumps = listeners.map { "\t\tip daddr \($0.address) \($0.proto) dport \($0.port) jump lb_\($0.id)" }
        out += ["\tchain lb_prerouting {", "\t\ttype nat hook prerouting priority dstnat - 1; policy accept;"] + jumps + ["\t}"]
        out += ["\tchain lb_output {", "\t\ttype nat hook output priority -101; policy accept;"] + jumps + ["\t}"]
        let remembered = listeners.filter { $0.persistence != nil && $0.proxy == nil }
        if !remembered.isEmpty {
            out += ["\tchain lb_remember {", "\t\ttype filter hook postrouting priority srcnat - 1; policy accept;"]
            for l in remembered {
                out.append(
                    "\t\tct state new ct original ip daddr \(l.address) meta l4proto \(l.proto) ct original proto-dst \(l.port) "
                        + "update @lb_persist_\(l.id) { ct original ip saddr : ip daddr . \(l.proto) dport }")
            }
            out.append("\t}")
        }
        return out
    }
}

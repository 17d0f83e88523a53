import Foundation
import KumoAPI
import Synchronization
import Testing
import TestSupport

@testable import Kumod

/// The load balancer's kernel data path (issue 19, points 2 and 4), below the API: the rules kumod would
/// write, as text, checked by `nft -c`, and loaded into the host's nftables in front of three backend
/// namespaces, with a client namespace of 64 addresses making real TCP connections to the listener's
/// address: each scheduler's share, persistence, and established connections kept across a rule change.
@Suite(.serialized)
struct LoadBalancerPathTests {
    static func listener(_ scheduler: LoadBalancerRules.Scheduler, persistence: Int? = nil, weights: [Int] = [1, 1, 1], net: String = "10.78")
        -> LoadBalancerRules.Listener
    {
        LoadBalancerRules.Listener(
            id: "l1", address: IPv4Address("\(net).100.1")!, proto: "tcp", port: 80, scheduler: scheduler, persistence: persistence,
            backends: weights.enumerated().map { .init(address: IPv4Address("\(net).\($0.offset + 1).2")!, port: 8080, weight: $0.element) })
    }

    static func script(_ table: String, _ rules: LoadBalancerRules) -> String {
        (["table inet \(table)", "delete table inet \(table)", "table inet \(table) {"] + rules.lines + ["}"]).joined(separator: "\n") + "\n"
    }

    @Test func rulesAsText() {
        let rr = LoadBalancerRules(listeners: [Self.listener(.weightedRoundRobin, weights: [1, 2, 1])]).lines.joined(separator: "\n")
        #expect(
            rr.contains(
                "meta l4proto tcp dnat ip to numgen inc mod 4 map { 0 : 10.78.2.2 . 8080, 1 : 10.78.1.2 . 8080, 2 : 10.78.3.2 . 8080, 3 : 10.78.2.2 . 8080 }"),
            "\(rr)")
        #expect(rr.contains("ip daddr 10.78.100.1 tcp dport 80 jump lb_l1") && !rr.contains("persist"))
        let sh = LoadBalancerRules(listeners: [Self.listener(.sourceHash, persistence: 300)]).lines.joined(separator: "\n")
        #expect(sh.contains("dnat ip to jhash ip saddr mod 503 seed 0x6b756d6f map { 0 : "), "a prime ≥ 100 × 3 slots")
        #expect(sh.contains("ip saddr @lb_persist_l1 dnat ip to ip saddr map @lb_persist_l1") && sh.contains("timeout 300s"))
        #expect(sh.contains("update @lb_persist_l1 { ct original ip saddr : ip daddr . tcp dport }"))
        var none = Self.listener(.roundRobin, persistence: 60)
        none.backends = []
        let empty = LoadBalancerRules(listeners: [none]).lines.joined(separator: "\n")
        #expect(empty.contains("reject with tcp reset") && !empty.contains("dnat"), "no backend in rotation: refused, not black-holed")
        #expect(LoadBalancerRules(listeners: []).lines.isEmpty)
    }

    @Test(.enabled(if: NetworkHostTests.canNet, "needs root, nft and ip")) func nftAcceptsEveryScheduler() throws {
        for s in LoadBalancerRules.Scheduler.allCases {
            for p in [nil, 120] {
                let file = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-lb-\(UUID().uuidString).nft").path
                defer { unlink(file) }
                try Self.script("kumolbcheck", LoadBalancerRules(listeners: [Self.listener(s, persistence: p)])).write(
                    toFile: file, atomically: true, encoding: .utf8)
                let r = try hostTool("/usr/sbin/nft", ["-c", "-f", file], mergingStderr: true)
                #expect(r.0 == 0, "\(s) persistence \(String(describing: p)): \(r.1)")
            }
        }
    }

    @Test(
        .enabled(if: NetworkHostTests.canNet && access("/usr/sbin/conntrack", X_OK) == 0, "needs root, nft, ip and conntrack"),
        .timeLimit(.minutes(10)))
    func connectionsThroughTheKernelPath() throws {
        let lab = try LoadBalancerLab()
        defer { lab.close() }
        let net = lab.net
        let sources = (10..<74).map { "\(net).0.\($0)" }
        func shares(_ n: Int) throws -> [String: Int] {
            var c: [String: Int] = [:]
            for i in 0..<n { c[try lab.ask(from: sources[i % sources.count]) ?? "none", default: 0] += 1 }
            return c
        }
        // Round robin: exactly even over whole cycles.
        try lab.apply(LoadBalancerRules(listeners: [Self.listener(.roundRobin, net: net)]))
        var c = try shares(3000)
        #expect(c == ["backend1": 1000, "backend2": 1000, "backend3": 1000], "round robin: \(c)")
        // Weighted: 1 : 2 : 3, exactly, over whole cycles.
        try lab.apply(LoadBalancerRules(listeners: [Self.listener(.weightedRoundRobin, weights: [1, 2, 3], net: net)]))
        c = try shares(3000)
        #expect(c == ["backend1": 500, "backend2": 1000, "backend3": 1500], "weighted round robin: \(c)")
        // Source hash: each client address always to one backend; 64 addresses spread over the three.
        try lab.apply(LoadBalancerRules(listeners: [Self.listener(.sourceHash, net: net)]))
        var owner: [String: Set<String>] = [:]
        for i in 0..<(64 * 10) {
            let src = sources[i % 64]
            owner[src, default: []].insert(try lab.ask(from: src) ?? "none")
        }
        #expect(owner.values.allSatisfy { $0.count == 1 }, "one backend per client address")
        let spread = Dictionary(grouping: owner.values.compactMap(\.first), by: { $0 }).mapValues(\.count)
        print("LoadBalancerPathTests: source hash, 64 client addresses over the backends: \(spread.sorted { $0.key < $1.key })")
        #expect(spread.count == 3 && spread.values.allSatisfy { $0 >= 8 }, "64 clients over three backends: \(spread)")
        // Persistence over round robin: a client keeps the backend its first connection got.
        try lab.apply(LoadBalancerRules(listeners: [Self.listener(.roundRobin, persistence: 60, net: net)]))
        var kept: [String: Set<String>] = [:]
        for i in 0..<(16 * 6) {
            let src = sources[i % 16]
            kept[src, default: []].insert(try lab.ask(from: src) ?? "none")
        }
        #expect(kept.values.allSatisfy { $0.count == 1 && !$0.contains("none") }, "persistence: \(kept)")
        #expect(Set(kept.values.compactMap(\.first)).count == 3, "the first connections still went round: \(kept)")
        // An established connection outlives a rule change that takes its backend out of rotation (it
        // drains: conntrack keeps it on its backend), while new connections no longer go there.
        try lab.apply(LoadBalancerRules(listeners: [Self.listener(.roundRobin, net: net)]))
        let s = try #require(try NamespaceSockets.connect(from: lab.client, to: "\(net).100.1", 80))
        defer { Glibc.close(s) }
        var buf = [UInt8](repeating: 0, count: 64)
        let n = read(s, &buf, buf.count)
        let first = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : ""
        let index = try #require(Int(first.dropFirst("backend".count)), "the first connection's backend: \(first)")
        var without = Self.listener(.roundRobin, net: net)
        without.backends.remove(at: index - 1)
        try lab.apply(LoadBalancerRules(listeners: [without]))
        #expect(NamespaceSockets.echoes(s, "still here"), "the established connection to \(first) goes on after the change")
        c = try shares(30)
        #expect(c[first] == nil && c.values.reduce(0, +) == 30 && c["none"] == nil, "new connections avoid \(first): \(c)")
        // The drain's end: its connections leave conntrack, and the one still open is cut.
        let gone = Self.listener(.roundRobin, net: net).backends[index - 1]
        let d = try hostTool("/usr/sbin/conntrack", LoadBalancerRules.drainEnd(without, backend: gone), mergingStderr: true)
        #expect(d.0 == 0 && d.1.contains("flow entries have been deleted"), "\(d.1.suffix(300))")
        #expect(!NamespaceSockets.echoes(s, "after the drain"), "the drained connection is over")
    }
}

/// Three backends, each its own namespace answering with its name; a client namespace with 64
/// addresses; the host routes between them and holds the rules (in a table of this test's own).
final class LoadBalancerLab {
    let id = String(UInt32.random(in: 0...UInt32.max), radix: 16)
    var table: String { "kumolb_\(id)" }
    var client: String { "lbc\(id)" }
    func backend(_ i: Int) -> String { "lbb\(i)\(id)" }
    var listeners: [Int32] = []
    final class Flag: Sendable { let raised = Atomic<Bool>(false) }
    let stop = Flag()
    var threads: [Thread] = []

    static func sh(_ args: [String]) throws {
        let r = try hostTool(args[0], Array(args.dropFirst()), mergingStderr: true)
        guard r.0 == 0 else { throw NamespaceSockets.Failure(description: "\(args.joined(separator: " ")): \(r.1)") }
    }

    /// "10.N": a block no route on this host uses yet (two runs side by side take two).
    let net: String

    init() throws {
        let routes = (try? hostTool("/usr/sbin/ip", ["-4", "route"]).output) ?? ""
        guard let n = (78...99).first(where: { !routes.contains("10.\($0).") }) else {
            throw NamespaceSockets.Failure(description: "no free 10.N (78-99) for the load balancer's lab")
        }
        net = "10.\(n)"
        do {
            try link(client, host: "\(net).0.1/24", inside: "\(net).0.2/24")
            for a in 10..<74 { try Self.sh(["/usr/sbin/ip", "-n", client, "addr", "add", "\(net).0.\(a)/24", "dev", "eth0"]) }
            for i in 1...3 {
                try link(backend(i), host: "\(net).\(i).1/24", inside: "\(net).\(i).2/24")
                let l = try NamespaceSockets.listener(in: backend(i), address: "\(net).\(i).2", port: 8080, backlog: 128)
                listeners.append(l)
                let name = "backend\(i)\n"
                // Each connection: the backend's name, then what the client sends echoed back.
                let t = Thread { [stop] in
                    while !stop.raised.load(ordering: .relaxed) {
                        let c = accept(l, nil, nil)
                        if c < 0 { continue }
                        Thread.detachNewThread {
                            _ = name.withCString { write(c, $0, strlen($0)) }
                            var buf = [UInt8](repeating: 0, count: 256)
                            while true {
                                let n = read(c, &buf, buf.count)
                                if n <= 0 || write(c, buf, n) != n { break }
                            }
                            Glibc.close(c)
                        }
                    }
                }
                t.start()
                threads.append(t)
            }
        } catch {
            close()
            throw error
        }
    }

    /// A namespace joined to the host by a veth pair: the host's end (`lb…h`) and eth0 inside, routed.
    func link(_ ns: String, host: String, inside: String) throws {
        try Self.sh(["/usr/sbin/ip", "netns", "add", ns])
        try Self.sh(["/usr/sbin/ip", "link", "add", "\(ns)h", "type", "veth", "peer", "name", "eth0", "netns", ns])
        try Self.sh(["/usr/sbin/ip", "addr", "add", host, "dev", "\(ns)h"])
        try Self.sh(["/usr/sbin/ip", "link", "set", "\(ns)h", "up"])
        try Self.sh(["/usr/sbin/ip", "-n", ns, "addr", "add", inside, "dev", "eth0"])
        try Self.sh(["/usr/sbin/ip", "-n", ns, "link", "set", "eth0", "up"])
        try Self.sh(["/usr/sbin/ip", "-n", ns, "link", "set", "lo", "up"])
        try Self.sh(["/usr/sbin/ip", "-n", ns, "route", "add", "default", "via", String(host.split(separator: "/")[0])])
    }

    func apply(_ rules: LoadBalancerRules) throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-lb-\(id).nft").path
        defer { unlink(file) }
        try LoadBalancerPathTests.script(table, rules).write(toFile: file, atomically: true, encoding: .utf8)
        try Self.sh(["/usr/sbin/nft", "-f", file])
    }

    /// One connection from the client namespace, from `source`, to the listener: the backend's name.
    func ask(from source: String) throws -> String? {
        let s = try NamespaceSockets.socket(in: client)
        defer { Glibc.close(s) }
        var from = NamespaceSockets.address(source, 0)
        _ = withUnsafePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var tv = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var to = NamespaceSockets.address("\(net).100.1", 80)
        let ok = withUnsafePointer(to: &to) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard ok == 0 else { return nil }
        var buf = [UInt8](repeating: 0, count: 64)
        let n = read(s, &buf, buf.count)
        return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : nil
    }

    func close() {
        stop.raised.store(true, ordering: .relaxed)
        for l in listeners { shutdown(l, Int32(SHUT_RDWR)); Glibc.close(l) }
        _ = try? hostTool("/usr/sbin/nft", ["delete", "table", "inet", table])
        for ns in [client] + (1...3).map(backend) {
            _ = try? hostTool("/usr/sbin/ip", ["link", "del", "\(ns)h"])
            _ = try? hostTool("/usr/sbin/ip", ["netns", "del", ns])
        }
    }
}

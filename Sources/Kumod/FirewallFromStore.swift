// The firewall kumod writes is a function of the store alone (docs/NETWORK.md): every change to
// networks, NICs, groups or forwards rebuilds it whole and applies it in one `nft -f`.
import Foundation
import KumoAPI

extension Service {
    /// Runs `body` holding the network host's lock (without networking: unlocked, nothing to apply).
    func withFirewall<T>(_ body: () throws(APIError) -> T) throws(APIError) -> T {
        guard let net = networks else { return try body() }
        return try net.changes.withLock { _ throws(APIError) in try body() }
    }

    /// Applies the store's firewall; when the host refuses it, `undo` puts the store back and the old
    /// firewall is applied again. The caller holds the network host's lock.
    func applyOrUndo(_ undo: () -> Void) throws(APIError) {
        guard let net = networks else { return }
        do { try net.host.apply(try firewall(net)) } catch {
            undo()
            try? net.host.apply(try firewall(net))
            throw APIError(code: "internal", message: "the host refused the firewall, so nothing was changed: \(error)")
        }
    }

    /// The whole firewall the store describes: networks, every NIC with its groups' rules, the members
    /// of every group a rule names, and the port forwards.
    func firewall(_ net: NetworkHost) throws -> Firewall {
        let networks = try store.allNetworks()
        let nics = try store.allNICs()
        let groups = Dictionary(uniqueKeysWithValues: try store.allSecurityGroups().map { ($0.id, $0) })
        var named = Set<String>()
        let filters = nics.map { nic in
            var ingress: [Firewall.Rule] = [], egress: [Firewall.Rule] = []
            for rule in nic.securityGroups.flatMap({ groups[$0]?.rules ?? [] }) {
                let peer: Firewall.Peer
                if let g = rule.remoteGroup { named.insert(g); peer = .group(g) } else { peer = .cidr(rule.cidr!) }
                let r = Firewall.Rule(proto: rule.proto, ports: rule.ports, peer: peer)
                if rule.direction == "ingress" { ingress.append(r) } else { egress.append(r) }
            }
            return Firewall.NIC(tap: nic.tap, mac: nic.mac, address: nic.address, ingress: ingress, egress: egress)
        }
        var members = Dictionary(uniqueKeysWithValues: named.map { ($0, [IPv4Address]()) })
        for nic in nics { for g in nic.securityGroups where named.contains(g) { members[g]!.append(nic.address) } }
        let forwards = try store.allPortForwards().map {
            Firewall.Forward(proto: $0.proto, hostAddress: $0.hostAddress, hostPort: $0.hostPort, address: $0.address, port: $0.port)
        }
        return Firewall(
            table: net.table, bridges: networks.map { .init(name: $0.bridge, cidr: $0.cidr, gateway: $0.gateway) }, nics: filters, groups: members,
            forwards: forwards, balancers: try balancerRules())
    }

    /// The balancers' listeners as rules: each with its backends in rotation (as last recorded, so a
    /// restarted kumod writes the same at once), or its proxy for wlc (none running yet: it rejects).
    func balancerRules() throws -> LoadBalancerRules {
        var listeners: [LoadBalancerRules.Listener] = []
        var probed: [LoadBalancerRules.Backend] = []
        for b in try store.allLoadBalancers() {
            for l in b.listeners {
                let backends = inRotation(b, l).map { LoadBalancerRules.Backend(address: $0.address, port: $0.port, weight: $0.weight) }
                var proxy: LoadBalancerRules.Backend? = nil
                if l.scheduler == "wlc" {
                    guard let p = balancing.proxy(l.id) else {
                        listeners.append(
                            .init(id: Self.chainName(l.id), address: l.address, proto: l.proto, port: l.port, scheduler: .roundRobin, backends: []))
                        continue
                    }
                    proxy = .init(address: p.address, port: p.port)
                }
                if l.proto == "tcp" { probed += (b.group(l.groupID)?.backends ?? []).map { .init(address: $0.address, port: $0.port) } }
                listeners.append(
                    .init(
                        id: Self.chainName(l.id), address: l.address, proto: l.proto, port: l.port,
                        scheduler: LoadBalancerRules.Scheduler(rawValue: l.scheduler) ?? .roundRobin, persistence: l.persistence, backends: backends,
                        proxy: proxy))
            }
        }
        return LoadBalancerRules(listeners: listeners, probed: probed)
    }

    /// A listener id (lsn-<hex>) as a chain and map name's part.
    static func chainName(_ id: String) -> String { id.replacingOccurrences(of: "-", with: "_") }

    /// Rebuilds the firewall after NICs came or went (the caller holds the network host's lock).
    func applyFirewall(_ net: NetworkHost) throws {
        try net.host.apply(try firewall(net))
    }
}

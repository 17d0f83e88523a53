// Tenant networks (docs/NETWORK.md): the store says what exists, `NetworkHost` makes the host match
// it — a bridge with the gateway address per network, its dnsmasq (restarted when it dies), and the
// one nftables table. Host changes are serialised; a request that cannot be carried out on the host
// is undone in the store, so nothing is left half-made.
import Foundation
import KumoAPI
import Synchronization

/// The host side of networking for one kumod.
public final class NetworkHost: Sendable {
    public let host: HostNetworking
    /// kumod's nftables table (inet family).
    public let table: String
    /// DATA/networks: one directory per network (dnsmasq's files).
    public let dir: URL
    public let dnsmasqPath: String
    /// Running dnsmasq by network id.
    let dnsmasqs = Mutex<[String: VMMProcess]>([:])
    /// Held across every change to the host's links, dnsmasqs and table.
    let changes = Mutex(())

    public init(kumodID: String, table: String = "kumo", dir: URL, dnsmasqPath: String = "/usr/sbin/dnsmasq") {
        host = HostNetworking(kumodID: kumodID); self.table = table; self.dir = dir; self.dnsmasqPath = dnsmasqPath
    }

    /// Whether the host has what networks need (root, ip, nft, dnsmasq).
    public var available: Bool { getuid() == 0 && host.available && access(dnsmasqPath, X_OK) == 0 }

    func dnsmasq(_ n: Store.NetworkRecord) -> Dnsmasq {
        Dnsmasq(path: dnsmasqPath, dir: dir.appendingPathComponent(n.id), bridge: n.bridge, cidr: n.cidr, gateway: n.gateway)
    }

    /// The network's bridge and its dnsmasq, started afresh with `leases` (the caller holds `changes`).
    func realize(_ n: Store.NetworkRecord, leases: [Dnsmasq.Lease]) throws {
        if !host.linkExists(n.bridge) {
            try host.createBridge(n.bridge, tag: n.id, gateway: n.gateway, prefix: n.cidr.prefix)
        } else {
            try host.answerARPForTheNetwork(n.bridge)  // a bridge made before taps were isolated
        }
        try restartDnsmasq(n, leases: leases)
    }

    func restartDnsmasq(_ n: Store.NetworkRecord, leases: [Dnsmasq.Lease]) throws {
        endDnsmasq(n.id)
        let p = try dnsmasq(n).start(leases)
        dnsmasqs.withLock { $0[n.id] = p }
    }

    /// Ends the network's dnsmasq: the one this kumod watches, and one a previous kumod left.
    func endDnsmasq(_ id: String) {
        dnsmasqs.withLock { $0.removeValue(forKey: id) }?.end()
        Dnsmasq.recorded(in: dir.appendingPathComponent(id))?.end()
    }

    /// Ends the network's dnsmasq, deletes its bridge and files (the caller holds `changes`).
    func unrealize(id: String, bridge: String) {
        endDnsmasq(id)
        try? host.deleteLink(bridge)
        try? FileManager.default.removeItem(at: dir.appendingPathComponent(id))
    }

    /// Ends every dnsmasq and removes every link and the table (tests; kumod itself leaves networks up
    /// when it stops, as it leaves VMs).
    public func endAll(removingFrom store: Store) {
        changes.withLock { _ in
            for n in (try? store.allNetworks()) ?? [] { unrealize(id: n.id, bridge: n.bridge) }
            for link in (try? host.ownedLinks()) ?? [] { try? host.deleteLink(link.name) }  // the taps
            try? host.remove(Firewall(table: table, bridges: []))
        }
    }
}

extension Service {
    func networkHost() throws(APIError) -> NetworkHost {
        guard let n = networks else {
            throw APIError(
                code: "unavailable", message: "networking is off on this host (kumod runs without root, nft, ip or dnsmasq, or with --networking off)")
        }
        return n
    }

    func visible(_ n: Store.NetworkRecord, to who: Store.Principal) -> Network {
        redacted(n.resource, for: who) { $0.bridge = nil }
    }

    public func listNetworks(by who: Store.Principal) throws(APIError) -> [Network] {
        let records = try wrap { who.admin ? try store.allNetworks() : try store.networks(tenant: who.tenantID) }
        return records.map { visible($0, to: who) }
    }

    /// A network the caller may see (a tenant: its own, by id or name; an admin: any, by id).
    func networkRecord(_ ref: String, by who: Store.Principal) throws(APIError) -> Store.NetworkRecord {
        let found = try wrap { () throws -> Store.NetworkRecord? in
            if let own = try store.network(ref, tenant: who.tenantID) { return own }
            return who.admin ? try store.network(ref, tenant: nil) : nil
        }
        guard let n = found else { throw APIError(code: "not_found", message: "no network \(Validate.escaped(ref)) (`kumo network list`)") }
        return n
    }

    public func describeNetwork(_ ref: String, by who: Store.Principal) throws(APIError) -> Network {
        visible(try networkRecord(ref, by: who), to: who)
    }

    public func createNetwork(_ r: CreateNetworkRequest, by who: Store.Principal) throws(APIError) -> Network {
        try Validate.identifier(r.name, field: "network name", punctuation: "-_.")
        guard !r.name.hasPrefix("net-") else {
            throw APIError(code: "invalid_argument", message: "network name \(r.name): net- starts network ids, not names")
        }
        let cidr = try r.cidr.map { c throws(APIError) in try Network.validCIDR(c) }
        let net = try networkHost()
        return try net.changes.withLock { _ throws(APIError) in
            let mine = Set((try wrap { try store.allNetworks() }).map(\.bridge))
            let reserved: [IPv4Network]
            do { reserved = try net.host.hostNetworks(excluding: mine) } catch {
                throw APIError(code: "internal", message: "cannot read the host's networks: \(error)")
            }
            if let cidr, let clash = reserved.first(where: { $0.overlaps(cidr) }) {
                throw APIError(code: "invalid_argument", message: "cidr \(cidr) overlaps this host's own network \(clash): choose another range")
            }
            let id = Store.newID("net")
            let bridge = "kb" + id.dropFirst(4).prefix(12)
            let hasNetworks = try !wrap { try store.networks(tenant: who.tenantID) }.isEmpty
            let isDefault = r.isDefault ?? !hasNetworks
            let created = try wrap {
                try store.createNetwork(
                    id: id, tenantID: who.tenantID, name: r.name, cidr: cidr, reserved: reserved, bridge: bridge, isDefault: isDefault)
            }
            let record: Store.NetworkRecord
            switch created {
            case let .created(n): record = n
            case .nameTaken: throw APIError(code: "conflict", message: "you have a network named \(r.name)")
            case let .overlapsOwn(other): throw APIError(code: "conflict", message: "cidr \(cidr!) overlaps your network \(other)")
            case .overlapsOther: throw APIError(code: "conflict", message: "cidr \(cidr!) overlaps a network on this host: choose another range")
            case .exhausted: throw APIError(code: "insufficient_capacity", message: "no free /24 left in 10.0.0.0/8: give a cidr")
            }
            do {
                try net.host.enableForwarding()
                try net.realize(record, leases: [])
                try applyFirewall(net)
            } catch {
                net.unrealize(id: record.id, bridge: record.bridge)
                _ = try? store.deleteNetwork(record.id)
                try? applyFirewall(net)
                throw APIError(code: "internal", message: "cannot set up network \(r.name) on the host: \(error)")
            }
            return visible(record, to: who)
        }
    }

    public func deleteNetwork(_ ref: String, by who: Store.Principal) throws(APIError) {
        let n = try networkRecord(ref, by: who)
        let net = try networkHost()
        try net.changes.withLock { _ throws(APIError) in
            switch try wrap({ try store.deleteNetwork(n.id) }) {
            case .deleted: break
            case .missing: throw APIError(code: "not_found", message: "no network \(Validate.escaped(ref))")
            case let .inUse(count): throw APIError(code: "conflict", message: "network \(n.name) has \(count) NIC(s): terminate their instances first")
            case let .hasLoadBalancers(count):
                throw APIError(code: "conflict", message: "network \(n.name) has \(count) load balancer(s) on its addresses: delete them first")
            }
            net.unrealize(id: n.id, bridge: n.bridge)
            do { try applyFirewall(net) } catch {
                throw APIError(code: "internal", message: "network \(n.name) is deleted but the firewall table was not rewritten: \(error)")
            }
        }
    }

    /// At start: the host made to match the store. Links this kumod made that the store no longer
    /// names are deleted, missing bridges made, every network's dnsmasq (re)started, the table rebuilt.
    /// Returns what it changed, for kumod's log.
    public func recoverNetworks() throws(APIError) -> [String] {
        guard let net = networks else { return [] }
        return try net.changes.withLock { _ throws(APIError) in
            var notes: [String] = []
            let all = try wrap { try store.allNetworks() }
            let bridges = Set(all.map(\.bridge))
            let taps = Set(try wrap { try store.allNICs() }.map(\.tap))
            do {
                // Taps the store still names stay (missing ones are made again at their instance's launch).
                for link in try net.host.ownedLinks() where !bridges.contains(link.name) && !taps.contains(link.name) {
                    try? net.host.deleteLink(link.name)
                    notes.append("removed \(link.name) (\(link.tag): not in the store)")
                }
                if !all.isEmpty { try net.host.enableForwarding() }
                for n in all {
                    if !net.host.linkExists(n.bridge) { notes.append("rebuilt bridge \(n.bridge) of \(n.id)") }
                    try net.realize(n, leases: try leases(n.id))
                }
                for tap in taps where net.host.linkExists(tap) { try net.host.isolate(tap) }  // made before taps were isolated
                try applyFirewall(net)
            } catch {
                throw APIError(code: "internal", message: "cannot restore networks on the host: \(error)")
            }
            return notes
        }
    }

    /// One pass of dnsmasq supervision (from the monitor): a dnsmasq that died is started again.
    func superviseDnsmasq() {
        guard let net = networks else { return }
        let dead = net.dnsmasqs.withLock { $0 }.filter { ProcessLauncher.fate(of: $0.value) != nil }
        guard !dead.isEmpty else { return }
        net.changes.withLock { _ in
            for (id, p) in dead where net.dnsmasqs.withLock({ $0[id] }) == p {  // not restarted meanwhile
                guard let n = try? store.network(id, tenant: nil), let l = try? leases(id) else {
                    net.dnsmasqs.withLock { _ = $0.removeValue(forKey: id) }
                    continue
                }
                try? net.restartDnsmasq(n, leases: l)
            }
        }
    }
}

// MARK: NICs

extension Service {
    /// At most this many NICs per instance (each is a virtio-net device, an interrupt line of its own).
    static let maxNICs = 4

    /// The networks (ids) a RunInstances request's NICs go into: the caller's own, named; or, named
    /// none, its default network, made ("default", a free /24) when it has no network at all.
    func networksForLaunch(_ refs: [String]?, by who: Store.Principal) throws(APIError) -> [String] {
        guard networks != nil else {
            if let refs, !refs.isEmpty { _ = try networkHost() }
            return []
        }
        if let refs {
            guard refs.count <= Self.maxNICs else {
                throw APIError(code: "invalid_argument", message: "at most \(Self.maxNICs) networks per instance, not \(refs.count)")
            }
            var ids: [String] = []
            for ref in refs {
                try Validate.text(ref, field: "network", maxBytes: 255)
                guard let n = try wrap({ try store.network(ref, tenant: who.tenantID) }) else {
                    throw APIError(code: "not_found", message: "you have no network \(Validate.escaped(ref)) (`kumo network list`)")
                }
                guard !ids.contains(n.id) else { throw APIError(code: "invalid_argument", message: "network \(n.name) is named twice") }
                ids.append(n.id)
            }
            return ids
        }
        let mine = try wrap { try store.networks(tenant: who.tenantID) }
        if let d = mine.first(where: \.isDefault) { return [d.id] }
        guard mine.isEmpty else {
            throw APIError(code: "invalid_argument", message: "none of your networks is the default: name one (`--network NAME`) or make one the default")
        }
        do {
            return [try createNetwork(CreateNetworkRequest(name: "default", isDefault: true), by: who).id]
        } catch  where error.code == "conflict" {
            // Made by a request beside this one.
            guard let d = try wrap({ try store.network("default", tenant: who.tenantID) }) else { throw error }
            return [d.id]
        }
    }

    /// The static leases of a network's NICs.
    func leases(_ networkID: String) throws -> [Dnsmasq.Lease] {
        try store.nics(network: networkID).map { Dnsmasq.Lease(mac: $0.mac, address: $0.address, name: $0.instanceID) }
    }

    /// Each network's dnsmasq started again with its NICs' leases.
    func syncLeases(_ networkIDs: Set<String>) {
        guard let net = networks else { return }
        net.changes.withLock { _ in
            for id in networkIDs {
                guard let n = try? store.network(id, tenant: nil), let l = try? leases(id) else { continue }
                try? net.restartDnsmasq(n, leases: l)
            }
        }
    }

    /// The instance's taps, made where missing (a host reboot, a first launch), and the firewall that
    /// filters them applied, before its VMM can send a frame.
    func ensureTaps(_ nics: [Store.NICRecord]) throws {
        guard let net = networks, !nics.isEmpty else { return }
        try net.changes.withLock { _ in
            for nic in nics where !net.host.linkExists(nic.tap) {
                try net.host.createTap(nic.tap, tag: nic.id, bridge: nic.bridge)
            }
            try applyFirewall(net)
        }
    }

    /// A deleted instance's NICs go: their addresses are free again, their taps and leases gone.
    func releaseNICs(_ id: String) {
        guard let gone = try? store.releaseNICs(instance: id), !gone.isEmpty else { return }
        if let net = networks {
            net.changes.withLock { _ in
                for nic in gone { try? net.host.deleteLink(nic.tap) }
                try? applyFirewall(net)
            }
        }
        syncLeases(Set(gone.map(\.networkID)))
    }
}
